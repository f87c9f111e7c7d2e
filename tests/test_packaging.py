"""What the wheel carries, and the layers: the library runs without the service's dependencies.

The wheel installs two top-level packages, ``ims_fhir`` and ``ims_fhir_service`` (never a
generic ``service``), carries the code tables, and leaves the development tools
(``ims_fhir/dev``, ``hapi-server/``) in the checkout. The library (everything under
``ims_fhir``) never imports the service or Flask: ``ims-fhir worker`` runs in an environment
where Flask cannot be imported, and ``ims-fhir serve`` there says what to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Run before the probe code in a fresh interpreter: makes the service's dependencies unimportable.
BLOCK_SERVICE_DEPS = textwrap.dedent("""
    import sys
    from importlib.abc import MetaPathFinder

    BLOCKED = {"flask", "waitress", "werkzeug", "jinja2"}

    class Blocker(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
""")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out)],
                   check=True, capture_output=True, timeout=300)
    (built,) = out.glob("ims_fhir-*.whl")
    yield built


def _probe(code: str, *, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMS_FHIR_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-c", BLOCK_SERVICE_DEPS + textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_wheel_has_two_named_top_level_packages_and_no_dev_tools(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"ims_fhir", "ims_fhir_service"}
    assert {"ims_fhir/mappings/vocabularies.toml", "ims_fhir/mappings/concepts.toml", "ims_fhir/mappings/fhir.toml"} <= set(names)
    assert "ims_fhir/ig/ims-fhir-ig.tgz" in names and "ims_fhir/ig/__init__.py" in names
    assert {"ims_fhir_service/__init__.py", "ims_fhir_service/templates/dashboard.html",
            "ims_fhir_service/static/dashboard.js"} <= set(names)
    assert not [n for n in names if n.startswith("ims_fhir/dev/") or "hapi" in n or "/target/" in n]
    metadata = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info/METADATA")
    text = metadata.decode()
    assert "Provides-Extra: service" in text and "Provides-Extra: dev" in text
    assert not [line for line in text.splitlines() if line.startswith("Requires-Dist: flask") and "extra" not in line]


def test_installed_wheel_finds_its_tables_and_has_no_dev_server(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = _probe("""
        import ims_fhir.terminology as t
        d = t.mappings_dir(); t.load_terminology(d); print(d)
        from ims_fhir.cli import main
        raise SystemExit(main(["dev-server"]))
    """, cwd=tmp_path, pythonpath=site)
    assert probe.returncode == 2, probe.stderr
    assert Path(probe.stdout.strip()).is_relative_to(site)
    assert 'pip install -e ".[dev]"' in probe.stderr and "Traceback" not in probe.stderr


def test_library_never_imports_the_service_or_flask(tmp_path: Path) -> None:
    """Every module under ims_fhir (but the dev tools) imports with Flask blocked, and loads no service module."""
    probe = _probe("""
        import importlib, pkgutil, sys
        import ims_fhir
        names = [m.name for m in pkgutil.walk_packages(ims_fhir.__path__, "ims_fhir.")
                 if not m.name.startswith("ims_fhir.dev") and m.name != "ims_fhir.__main__"]
        for name in names:
            importlib.import_module(name)
        loaded = sorted(n for n in sys.modules if n.partition(".")[0] in {"ims_fhir_service", "service", "flask"})
        print(len(names), loaded)
    """, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    count, loaded = probe.stdout.split(" ", 1)
    assert int(count) > 40 and loaded.strip() == "[]"


def test_worker_runs_without_flask_and_serve_says_what_to_install(tmp_path: Path) -> None:
    config = tmp_path / "sync.toml"
    config.write_text(textwrap.dedent(f"""
        [source]
        clinic_id = "synthetic-7"
        system_base = "https://clinic.example.org/ims"
        [storage]
        url = "sqlite:///{tmp_path / 'outbox.sqlite'}"
        [server]
        port = 8123
        [[targets]]
        name = "hospital"
        base_url = "http://127.0.0.1:9/fhir"
        [[tokens]]
        name = "ci"
        sha256 = "{'0' * 64}"
    """))
    probe = _probe(f"""
        from ims_fhir.cli import main
        assert main(["worker", "--help"]) == 0
        assert main(["worker", "--once", "--config", {str(config)!r}]) == 0
        code = main(["serve", "--config", {str(config)!r}])
        print("serve", code)
    """, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert "--once" in probe.stdout and "serve 2" in probe.stdout
    assert 'pip install "ims-fhir[service]"' in probe.stderr and "Traceback" not in probe.stderr
    assert (tmp_path / "outbox.sqlite").is_file()
