"""End-to-end conversion: golden outputs, the three forms agree, determinism, Bundles."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import orjson
import pytest

from ims_fhir.fhir.validation import validate_resource
from ims_fhir.identifiers import identifiers_of
from tests.conftest import EXAMPLES, output_resources, read_ndjson

GOLDEN = Path(__file__).parent / "golden" / "clinic-small"
FORMS = {"json": EXAMPLES / "clinic.json", "ndjson": EXAMPLES / "records.ndjson", "csv": EXAMPLES / "csv"}


def _convert(run_cli: Any, source_args: list[str], inp: Path, out: Path, *extra: str) -> Any:
    args = ["convert", inp, "--out", out, *extra]
    if inp.suffix == ".ndjson":
        args += source_args
    result = run_cli(*args)
    assert result.code == 0, result.err
    return result


def test_examples_match_golden_output(run_cli: Any, source_args: list[str], tmp_path: Path) -> None:
    """The committed golden files are the reviewed output; regenerate with IMS_FHIR_UPDATE_GOLDEN=1."""
    out = tmp_path / "out"
    _convert(run_cli, source_args, FORMS["json"], out)
    produced = sorted(p.name for p in out.iterdir() if p.name != "summary.json")
    if os.environ.get("IMS_FHIR_UPDATE_GOLDEN"):
        shutil.rmtree(GOLDEN, ignore_errors=True)
        GOLDEN.mkdir(parents=True)
        for name in produced:
            shutil.copy(out / name, GOLDEN / name)
    expected = sorted(p.name for p in GOLDEN.iterdir())
    assert produced == expected
    for name in expected:
        assert (out / name).read_bytes() == (GOLDEN / name).read_bytes(), f"{name} differs from the golden file"


def test_three_forms_give_the_same_resources(run_cli: Any, source_args: list[str], tmp_path: Path) -> None:
    outputs = {}
    for form, path in FORMS.items():
        _convert(run_cli, source_args, path, tmp_path / form)
        outputs[form] = {t: sorted(orjson.dumps(r) for r in rs) for t, rs in output_resources(tmp_path / form).items()}
    assert outputs["json"] == outputs["ndjson"] == outputs["csv"]
    assert sum(len(v) for v in outputs["json"].values()) > 100


def test_same_input_gives_byte_identical_output(run_cli: Any, source_args: list[str], tmp_path: Path) -> None:
    for fmt in ("ndjson", "bundle"):
        _convert(run_cli, source_args, FORMS["csv"], tmp_path / f"{fmt}-a", "--format", fmt, "--bundle-size", "40")
        _convert(run_cli, source_args, FORMS["csv"], tmp_path / f"{fmt}-b", "--format", fmt, "--bundle-size", "40")
        a, b = tmp_path / f"{fmt}-a", tmp_path / f"{fmt}-b"
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        for p in a.iterdir():
            assert p.read_bytes() == (b / p.name).read_bytes(), p.name


def test_every_emitted_resource_is_valid_r4(run_cli: Any, source_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _convert(run_cli, source_args, FORMS["json"], out)
    kinds = set()
    for rtype, resources in output_resources(out).items():
        for res in resources:
            assert validate_resource(res) == [], (rtype, res["id"])
            kinds.add(rtype)
    assert kinds == {"Organization", "Patient", "Practitioner", "Encounter", "Observation", "Procedure", "Condition",
                     "Consent", "BodyStructure", "AdverseEvent", "EpisodeOfCare", "ServiceRequest"}


def test_identifiers_and_ids_are_unique(run_cli: Any, source_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _convert(run_cli, source_args, FORMS["json"], out)
    ids, identifiers = set(), set()
    for rtype, resources in output_resources(out).items():
        for res in resources:
            assert (rtype, res["id"]) not in ids
            ids.add((rtype, res["id"]))
            first = identifiers_of(res)[0]
            business = (first["system"], first["value"])
            assert business not in identifiers
            identifiers.add(business)


def test_references_point_at_emitted_resources(run_cli: Any, source_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _convert(run_cli, source_args, FORMS["json"], out)
    resources = output_resources(out)
    known = {f"{r['resourceType']}/{r['id']}" for rs in resources.values() for r in rs}
    refs = [ref for rs in resources.values() for r in rs for ref in _references(r)]
    assert refs and all(ref in known for ref in refs)


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        for value in node.values():
            found += _references(value)
        return found
    if isinstance(node, list):
        return [r for item in node for r in _references(item)]
    return []


def test_summary_counts_and_json_flag(run_cli: Any, source_args: list[str], tmp_path: Path) -> None:
    result = run_cli("convert", FORMS["json"], "--out", tmp_path / "out", "--json")
    assert result.code == 0
    printed = orjson.loads(result.out)
    on_disk = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert printed["converted"] == on_disk["converted"] == on_disk["read"]
    assert sum(on_disk["records_converted"].values()) == on_disk["converted"]
    counted = {t: len(rs) for t, rs in output_resources(tmp_path / "out").items()}
    assert on_disk["resources"] == counted
    quiet = run_cli("convert", FORMS["json"], "--out", tmp_path / "q", "--quiet")
    assert quiet.code == 0 and quiet.out == "" and quiet.err == ""


# -- Bundles ------------------------------------------------------------------------------------


def _bundles(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(p.read_bytes()) for p in sorted(out.glob("bundle-*.json"))]


@pytest.mark.parametrize("size", [12, 40, 1000])
def test_bundles_are_self_contained_transactions(run_cli: Any, source_args: list[str], tmp_path: Path, size: int) -> None:
    out = tmp_path / "out"
    _convert(run_cli, source_args, FORMS["json"], out, "--format", "bundle", "--bundle-size", str(size))
    bundles = _bundles(out)
    assert bundles
    ndjson_out = tmp_path / "nd"
    _convert(run_cli, source_args, FORMS["json"], ndjson_out)
    expected = {(r["resourceType"], r["id"]) for rs in output_resources(ndjson_out).values() for r in rs}
    seen: set[tuple[str, str]] = set()
    for bundle in bundles:
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
        assert validate_resource(bundle) == []
        entries = bundle["entry"]
        full_urls = {e["fullUrl"] for e in entries}
        assert len(full_urls) == len(entries)
        for entry in entries:
            res, req = entry["resource"], entry["request"]
            assert "id" not in res
            seen.add((res["resourceType"], entry["fullUrl"].removeprefix("urn:uuid:")))
            if res["resourceType"] in ("Patient", "Practitioner", "Organization"):
                assert req["method"] == "POST" and req["ifNoneExist"].startswith("identifier=")
            elif res["resourceType"] == "AdverseEvent":  # R4 has no identifier search on it: written by id
                assert req == {"method": "PUT", "url": f"AdverseEvent/{entry['fullUrl'].removeprefix('urn:uuid:')}"}
            else:
                assert req["method"] == "PUT" and req["url"].startswith(f"{res['resourceType']}?identifier=")
            for ref in _references(res):
                # inside the Bundle, or a conditional reference the server resolves itself
                assert ref in full_urls or ("?identifier=" in ref), ref
        if size < 1000:
            record_groups_alone = len(entries) > size and len(bundles) > 1
            assert len(entries) <= size or record_groups_alone
    assert seen == expected


def test_bundle_defers_records_whose_patient_comes_later(run_cli: Any, tmp_path: Path) -> None:
    sb = "https://clinic.example.org/ims"
    lines = [
        {"record_type": "treatment", "id": "T1", "patient_id": "P1", "practitioner_id": "PR1", "status": "not-done",
         "status_reason": "patient unwell", "started_at": "2025-03-11T09:30:00-08:00", "consent_obtained": False},
        {"record_type": "patient", "id": "P1", "family_name": "Testperson"},
        {"record_type": "practitioner", "id": "PR1", "family_name": "Example"},
    ]
    inp = tmp_path / "in.ndjson"
    inp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    out = tmp_path / "out"
    assert run_cli("convert", inp, "--out", out, "--format", "bundle", "--clinic-id", "c1", "--system-base", sb).code == 0
    (bundle,) = _bundles(out)
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types.index("Patient") < types.index("Procedure")
    procedure = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Procedure")
    assert procedure["subject"]["reference"].startswith("urn:uuid:")


def _diagnosed_clinic(tmp_path: Path) -> Path:
    """Sessions before and after their assessment (two diagnoses), in an NDJSON input."""
    who = {"patient_id": "P1", "practitioner_id": "PR1"}
    treatment = {"record_type": "treatment", **who, "assessment_id": "A1", "started_at": "2025-03-11T09:30:00-08:00",
                 "consent_obtained": True, "sites": [{"muscle": "deltoid", "side": "left", "insertions": 2}]}
    lines = [
        treatment | {"id": "T-BEFORE"},
        {"record_type": "patient", "id": "P1", "family_name": "Testperson"},
        {"record_type": "practitioner", "id": "PR1", "family_name": "Example"},
        {"record_type": "assessment", "id": "A1", **who, "performed_at": "2025-03-04T09:30:00-08:00",
         "chief_complaint": "neck pain", "pain": {"nrs": 6},
         "diagnoses": [{"system": "icd-10-ca", "code": "M54.2"}, {"system": "icd-10-cm", "code": "M79.1"}]},
        {"record_type": "assessment", "id": "A2", **who, "performed_at": "2025-03-05T09:30:00-08:00", "diagnoses": []},
        treatment | {"id": "T-AFTER"},
        treatment | {"id": "T-OTHER", "assessment_id": "A2"},
    ]
    inp = tmp_path / "in.ndjson"
    inp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    return inp


def test_a_session_names_its_assessments_diagnoses_even_when_it_comes_first(run_cli: Any, tmp_path: Path) -> None:
    sb = "https://clinic.example.org/ims"
    out = tmp_path / "out"
    assert run_cli("convert", _diagnosed_clinic(tmp_path), "--out", out, "--clinic-id", "c1", "--system-base", sb).code == 0
    resources = output_resources(out)
    conditions = {c["identifier"][0]["value"]: f"Condition/{c['id']}" for c in resources["Condition"]}
    assert sorted(conditions) == ["A1/0", "A1/1"]
    panel = next(f"Observation/{o['id']}" for o in resources["Observation"] if o["identifier"][0]["value"] == "A1")
    reasons = {p["identifier"][0]["value"]: p["reasonReference"] for p in resources["Procedure"]}
    for session in ("T-BEFORE", "T-AFTER"):
        assert [r["reference"] for r in reasons[session]] == [panel, conditions["A1/0"], conditions["A1/1"]]
        assert [r["identifier"] for r in reasons[session][1:]] == [
            {"system": f"{sb}/diagnosis", "value": "A1/0"}, {"system": f"{sb}/diagnosis", "value": "A1/1"}]
    assert len(reasons["T-OTHER"]) == 1  # an assessment without diagnoses: the panel only


@pytest.mark.parametrize(("size", "expected"), [(8, {"conditional"}), (16, {"urn", "conditional"}), (200, {"urn"})])
def test_bundles_resolve_a_sessions_diagnoses(run_cli: Any, tmp_path: Path, size: int, expected: set[str]) -> None:
    """In the Bundle of the assessment: its urn:uuid; in a later Bundle: a conditional reference."""
    sb = "https://clinic.example.org/ims"
    out = tmp_path / "out"
    assert run_cli("convert", _diagnosed_clinic(tmp_path), "--out", out, "--format", "bundle", "--bundle-size", str(size),
                   "--clinic-id", "c1", "--system-base", sb).code == 0
    bundles = _bundles(out)
    conditional = {f"Condition?identifier={quote(sb + '/diagnosis', safe='')}|A1%2F{i}" for i in (0, 1)}
    kinds = set()
    sessions = [e["resource"]["identifier"][0]["value"] for b in bundles for e in b["entry"]
                if e["resource"]["resourceType"] == "Procedure"]
    # held back only for its patient: a session after its assessment is not held back for the diagnoses
    assert sessions == ["T-AFTER", "T-OTHER", "T-BEFORE"]
    for bundle in bundles:
        conditions = [e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition"]
        for entry in bundle["entry"]:
            res = entry["resource"]
            if res["resourceType"] != "Procedure" or res["identifier"][0]["value"] == "T-OTHER":
                continue
            named = [r["reference"] for r in res["reasonReference"][1:]]
            if conditions:
                assert named == conditions
                kinds.add("urn")
            else:
                assert set(named) == conditional and len(named) == 2
                kinds.add("conditional")
    assert kinds == expected


def test_unknown_dependency_becomes_conditional_reference(run_cli: Any, tmp_path: Path) -> None:
    inp = tmp_path / "in.ndjson"
    inp.write_bytes(orjson.dumps({
        "record_type": "treatment", "id": "T|1", "patient_id": "P,9", "practitioner_id": "PR1", "assessment_id": "A1",
        "started_at": "2025-03-11T09:30:00-08:00", "consent_obtained": True,
        "sites": [{"muscle": "deltoid", "side": "left", "insertions": 1}]}) + b"\n")
    out = tmp_path / "out"
    assert run_cli("convert", inp, "--out", out, "--format", "bundle", "--clinic-id", "c1",
                   "--system-base", "https://clinic.example.org/ims").code == 0
    (bundle,) = _bundles(out)
    procedure = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Procedure")
    subject = procedure["resource"]["subject"]["reference"]
    assert subject.startswith("Patient?identifier=")
    # search escaping of ',' then URL encoding keeps the value intact
    assert unquote(subject.split("|", 1)[1]) == "P\\,9"
    assert unquote(procedure["request"]["url"]).endswith("treatment|T\\|1")
    assert procedure["resource"]["reasonReference"][0]["reference"].startswith("Observation?identifier=")


def test_output_folder_is_reused_without_stale_files(run_cli: Any, source_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out).mkdir()
    (out / "notes.txt").write_text("mine")
    _convert(run_cli, source_args, FORMS["json"], out, "--format", "bundle", "--bundle-size", "20")
    _convert(run_cli, source_args, FORMS["json"], out)
    assert not list(out.glob("bundle-*.json"))
    assert (out / "notes.txt").read_text() == "mine"
    assert read_ndjson(out / "rejects.ndjson") == []
