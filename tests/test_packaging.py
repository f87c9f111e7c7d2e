"""The wheel carries what an installed ims-fhir needs (the code tables, the HAPI module sources)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_mappings_and_finds_them_when_installed(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("ims_fhir-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"ims_fhir/mappings/vocabularies.toml", "ims_fhir/mappings/concepts.toml", "ims_fhir/mappings/fhir.toml"} <= set(names)
    assert "ims_fhir/hapi_server/pom.xml" in names
    assert "ims_fhir/ig/ims-fhir-ig.tgz" in names and "ims_fhir/ig/__init__.py" in names
    assert "service/templates/dashboard.html" in names and "service/__init__.py" in names
    assert not [n for n in names if "/target/" in n]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import ims_fhir.terminology as t; d = t.mappings_dir(); t.load_terminology(d); print(d)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True, timeout=60)
    assert Path(out.stdout.strip()).is_relative_to(site)
