"""The IG package: reproducible, standard layout, committed build up to date, and it defines
every profile, extension and CodeSystem the converter's output names."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import orjson

from ims_fhir.fhir.validation import validate_resource
from ims_fhir.ig import BUILT_PACKAGE, build_package, resources
from ims_fhir.ig.pages import write_pages
from ims_fhir.terminology import default_terminology
from tests.conftest import EXAMPLES

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "clinic-small"
TERM = default_terminology()


def _members(tgz: bytes) -> dict[str, Any]:
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        return {m.name: orjson.loads(tar.extractfile(m).read()) for m in tar.getmembers()}  # type: ignore[union-attr]


def _walk(value: Any, key: str = "") -> list[tuple[str, Any]]:
    out = [(key, value)]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _walk(v, k)
    elif isinstance(value, list):
        for v in value:
            out += _walk(v, key)
    return out


def test_the_package_is_reproducible_and_the_committed_build_is_current() -> None:
    first = build_package()
    assert first == build_package()
    assert BUILT_PACKAGE.read_bytes() == first, (
        "regenerate with: ims-fhir ig --out DIR and copy the .tgz to ims_fhir/ig/ims-fhir-ig.tgz")
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1767225600}
        assert all(m.name.startswith("package/") for m in tar.getmembers())


def test_standard_npm_layout() -> None:
    files = _members(build_package())
    manifest = files["package/package.json"]
    assert manifest["fhirVersions"] == ["4.0.1"] and manifest["canonical"] == TERM.base
    assert manifest["dependencies"] == {"hl7.fhir.r4.core": "4.0.1"}
    urls = [r["url"] for r in resources()]
    assert len(urls) == len(set(urls)), "two resources of the IG share a canonical URL"
    index = files["package/.index.json"]["files"]
    assert sorted(f"package/{f['filename']}" for f in index) == sorted(n for n in files if not n.endswith("package.json")
                                                                       and not n.endswith(".index.json"))
    for name, res in files.items():
        if name.endswith(("package.json", ".index.json")):
            continue
        assert res["url"].startswith(TERM.base + "/"), name
        assert res["text"]["status"] == "generated"
        assert validate_resource(res) == [], name


def test_the_package_defines_everything_the_output_names() -> None:
    defined = {r["url"] for r in resources()}
    named: set[str] = set()
    for path in GOLDEN.glob("*.ndjson"):
        for line in path.read_bytes().splitlines():
            for key, value in _walk(orjson.loads(line)):
                if key in ("profile", "url", "system") and isinstance(value, str) and value.startswith(TERM.base):
                    named.add(value)
                elif key == "profile" and isinstance(value, list):
                    named.update(value)
    assert named and named <= defined, named - defined
    kinds = {r["type"] for r in resources() if r["resourceType"] == "StructureDefinition" and r["derivation"] == "constraint"
             and r["type"] != "Extension"}
    # Provenance is written by delivery (per transaction), not by convert
    assert kinds == {p.stem for p in GOLDEN.glob("*.ndjson") if p.stem != "rejects"} | {"Provenance"}


def test_concept_maps_state_honest_relations() -> None:
    maps = {r["id"]: r for r in resources() if r["resourceType"] == "ConceptMap"}
    targets = {(el["code"], t["code"]): t["equivalence"] for cm in maps.values() for g in cm["group"]
               for el in g["element"] for t in el["target"]}
    assert targets[("ims-procedure", "231082000")] == "relatedto"  # acupuncture is not IMS
    assert targets[("pain-before-treatment", "72514-3")] == "wider"
    assert targets[("pain-nrs", "72514-3")] == "equivalent"
    assert targets[("deltoid", "35259002")] == "equivalent"


def test_committed_pages_are_current(tmp_path: Path) -> None:
    written = write_pages(tmp_path, EXAMPLES / "clinic.json")
    committed = ROOT / "docs" / "ig"
    assert sorted(p.name for p in committed.glob("*.md")) == sorted(p.name for p in written)
    for p in written:
        assert (committed / p.name).read_text(encoding="utf-8") == p.read_text(encoding="utf-8"), \
            f"docs/ig/{p.name} is stale: python -m ims_fhir.ig.pages"
    page = (committed / "ims-procedure.md").read_text(encoding="utf-8")
    assert "treatment.consent_obtained" in page and '"resourceType": "Procedure"' in page


def test_cli_writes_the_package(run_cli: Any, tmp_path: Path) -> None:
    result = run_cli("ig", "--out", tmp_path, "--expand")
    assert result.code == 0, result.err
    (tgz,) = tmp_path.glob("*.tgz")
    assert tgz.read_bytes() == build_package()
    assert (tmp_path / "StructureDefinition-ims-procedure.json").is_file()
