"""Every kind of bad input is a rejected record with a clear reason; the rest converts."""

from __future__ import annotations

import copy
import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from ims_fhir.records.validation import validate_record
from tests.conftest import read_ndjson, write_ndjson

SB = "https://clinic.example.org/ims"
PATIENT = {"record_type": "patient", "id": "P1", "family_name": "Testperson", "given_names": ["Alex"], "sex": "female"}
PRACTITIONER = {"record_type": "practitioner", "id": "PR1", "family_name": "Example"}
ASSESSMENT = {
    "record_type": "assessment", "id": "A1", "patient_id": "P1", "practitioner_id": "PR1",
    "performed_at": "2025-03-04T09:30:00-08:00", "pain": {"nrs": 6, "locations": [{"region": "lower_back", "side": "left"}]},
    "neuropathic_signs": [{"sign": "trophedema", "present": True, "segment": "L5", "side": "left"}],
}
TREATMENT = {
    "record_type": "treatment", "id": "T1", "patient_id": "P1", "practitioner_id": "PR1", "assessment_id": "A1",
    "started_at": "2025-03-11T09:30:00-08:00", "ended_at": "2025-03-11T10:00:00-08:00", "consent_obtained": True,
    "sites": [{"muscle": "lumbar_multifidus", "side": "left", "segment": "L5", "insertions": 4}],
}


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    rec = copy.deepcopy(base)
    for key, value in changes.items():
        path = key.split("__")
        target = rec
        for part in path[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return rec


_DELETE = object()

# (case, record, expected (path, rule) among the problems)
CASES = [
    ("nrs above 10", _with(ASSESSMENT, pain__nrs=11), ("pain.nrs", "range")),
    ("nrs below 0", _with(TREATMENT, pain_before_nrs=-1), ("pain_before_nrs", "range")),
    ("date-time without offset", _with(ASSESSMENT, performed_at="2025-03-04T09:30:00"), ("performed_at", "offset_required")),
    ("date instead of date-time", _with(TREATMENT, started_at="2025-03-04"), ("started_at", "datetime_format")),
    ("unknown muscle", _with(TREATMENT, sites__0__muscle="bicepz"), ("sites[0].muscle", "enum")),
    ("unknown sign", _with(ASSESSMENT, neuropathic_signs__0__sign="goosebumps"), ("neuropathic_signs[0].sign", "enum")),
    ("unknown region", _with(ASSESSMENT, pain__locations__0__region="toe"), ("pain.locations[0].region", "enum")),
    ("unknown side", _with(TREATMENT, sites__0__side="both"), ("sites[0].side", "enum")),
    ("unknown segment", _with(TREATMENT, sites__0__segment="L6"), ("sites[0].segment", "enum")),
    ("unknown field", _with(PATIENT, birth_dat="1980-01-01"), ("birth_dat", "unknown_field")),
    ("unknown nested field", _with(TREATMENT, sites__0__depth_mm=30), ("sites[0].depth_mm", "unknown_field")),
    ("completed without consent", _with(TREATMENT, consent_obtained=False), ("consent_obtained", "consent_required")),
    ("completed without sites", _with(TREATMENT, sites=[]), ("sites", "required")),
    ("completed without sites key", _with(TREATMENT, sites=_DELETE), ("sites", "required")),
    ("ended before started", _with(TREATMENT, ended_at="2025-03-11T09:00:00-08:00"), ("ended_at", "end_before_start")),
    ("not-done without reason", _with(TREATMENT, status="not-done", sites=_DELETE), ("status_reason", "required")),
    ("stopped without reason", _with(TREATMENT, status="stopped"), ("status_reason", "required")),
    ("missing required field", _with(PATIENT, family_name=_DELETE), ("family_name", "required")),
    ("missing consent", _with(TREATMENT, consent_obtained=_DELETE), ("consent_obtained", "required")),
    ("string for integer", _with(TREATMENT, sites__0__insertions="4"), ("sites[0].insertions", "type")),
    ("float for integer nrs", _with(ASSESSMENT, pain__nrs=6.5), ("pain.nrs", "type")),
    ("string for boolean", _with(TREATMENT, consent_obtained="yes"), ("consent_obtained", "type")),
    ("object for list", _with(PATIENT, given_names="Alex"), ("given_names", "type")),
    ("empty id", _with(PATIENT, id=""), ("id", "required")),
    ("series total below session", _with(TREATMENT, session_number=3, series_total=2), ("series_total", "range")),
    ("needle too thick", _with(TREATMENT, sites__0__needle_diameter_mm=0.6), ("sites[0].needle_diameter_mm", "range")),
    ("score outside instrument range", _with(ASSESSMENT, outcome_measures=[{"instrument": "ndi", "score": 51}]),
     ("outcome_measures[0].score", "range")),
    ("pain without nrs", _with(ASSESSMENT, pain={"duration_weeks": 3}), ("pain.nrs", "required")),
    ("bad birth date", _with(PATIENT, birth_date="1980-02-30"), ("birth_date", "date_format")),
    ("bad identifier system", _with(PATIENT, identifiers=[{"system": "PHN", "value": "1"}]),
     ("identifiers[0].system", "absolute_uri")),
]


@pytest.mark.parametrize("case,record,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_record_is_rejected_with_path_and_rule(case: str, record: dict[str, Any], expected: tuple[str, str]) -> None:
    data = dict(record)
    record_type = data.pop("record_type")
    model, problems = validate_record(record_type, data)
    assert model is None, case
    assert expected in [(p.path, p.rule) for p in problems], problems
    assert all(p.message for p in problems)


def test_valid_records_are_valid() -> None:
    for rec in (PATIENT, PRACTITIONER, ASSESSMENT, TREATMENT):
        data = dict(rec)
        model, problems = validate_record(data.pop("record_type"), data)
        assert problems == [] and model is not None


def test_every_problem_of_a_record_is_reported_at_once() -> None:
    data = _with(TREATMENT, pain_before_nrs=12, sites__0__muscle="bicepz", consent_obtained=False, extra=1)
    data.pop("record_type")
    _, problems = validate_record("treatment", data)
    assert {(p.path, p.rule) for p in problems} >= {
        ("pain_before_nrs", "range"), ("sites[0].muscle", "enum"), ("consent_obtained", "consent_required"),
        ("extra", "unknown_field"),
    }


def test_default_time_zone_makes_naive_date_times_valid() -> None:
    data = _with(ASSESSMENT, performed_at="2025-03-04T09:30:00")
    data.pop("record_type")
    model, problems = validate_record("assessment", data, context={"default_tz": "America/Vancouver"})
    assert problems == []
    assert model.performed_at == "2025-03-04T09:30:00-08:00"  # type: ignore[union-attr]


def test_lenient_ignores_unknown_fields_only() -> None:
    data = _with(PATIENT, favourite_colour="blue")
    data.pop("record_type")
    assert validate_record("patient", data, lenient=True)[1] == []
    bad = _with(PATIENT, favourite_colour="blue", sex="f")
    bad.pop("record_type")
    assert [(p.path, p.rule) for p in validate_record("patient", bad, lenient=True)[1]] == [("sex", "enum")]


def _convert(run_cli: Any, tmp_path: Path, lines: list[bytes], *extra: str) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    inp = tmp_path / "in.ndjson"
    inp.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    result = run_cli("convert", inp, "--out", out, "--clinic-id", "c1", "--system-base", SB, *extra)
    return result, read_ndjson(out / "rejects.ndjson"), orjson.loads((out / "summary.json").read_bytes())


def test_batch_goes_on_past_bad_records_and_lists_each_with_origin(run_cli: Any, tmp_path: Path) -> None:
    lines = [
        orjson.dumps(PATIENT),
        b'{"record_type": "patient", "id": "P2", "family_name": ',  # malformed JSON line
        orjson.dumps(PRACTITIONER),
        orjson.dumps(_with(ASSESSMENT, pain__nrs=11)),
        orjson.dumps(TREATMENT),
        orjson.dumps(_with(PATIENT, id="P1", family_name="Duplicate")),  # duplicate id
        orjson.dumps({"record_type": "appointment", "id": "X1"}),  # unknown record type
        orjson.dumps(["not", "an", "object"]),
        orjson.dumps({"id": "Q"}),  # no record_type
    ]
    result, rejects, summary = _convert(run_cli, tmp_path, lines)
    assert result.code == 1
    assert summary["read"] == 9 and summary["converted"] == 3 and summary["rejected"] == 6
    by_origin = {r["origin"]: r for r in rejects}
    assert set(by_origin) == {"in.ndjson:2", "in.ndjson:4", "in.ndjson:6", "in.ndjson:7", "in.ndjson:8", "in.ndjson:9"}
    assert by_origin["in.ndjson:2"]["problems"][0]["rule"] == "malformed_json"
    assert by_origin["in.ndjson:4"]["id"] == "A1"
    assert by_origin["in.ndjson:4"]["problems"] == [
        {"path": "pain.nrs", "rule": "range", "message": "11 is above the maximum 10"}]
    assert by_origin["in.ndjson:6"]["problems"][0]["rule"] == "duplicate_id"
    assert "in.ndjson:1" in by_origin["in.ndjson:6"]["problems"][0]["message"]
    assert by_origin["in.ndjson:7"]["problems"][0]["rule"] == "unknown_record_type"
    assert by_origin["in.ndjson:9"]["problems"][0] == {
        "path": "record_type", "rule": "required", "message": "is required on every NDJSON line"}
    assert "rejected 6 records" in result.err


def test_everything_valid_exits_zero(run_cli: Any, tmp_path: Path) -> None:
    result, rejects, summary = _convert(
        run_cli, tmp_path, [orjson.dumps(r) for r in (PATIENT, PRACTITIONER, ASSESSMENT, TREATMENT)])
    assert result.code == 0 and rejects == [] and summary["converted"] == 4


def test_strict_refs_rejects_dangling_references_only_when_asked(run_cli: Any, tmp_path: Path) -> None:
    lines = [orjson.dumps(_with(TREATMENT, patient_id="NOPE")), orjson.dumps(PATIENT), orjson.dumps(PRACTITIONER)]
    result, rejects, _ = _convert(run_cli, tmp_path, lines)
    assert result.code == 0 and rejects == []
    result, rejects, _ = _convert(run_cli, tmp_path, lines, "--strict-refs")
    assert result.code == 1
    assert [(p["path"], p["rule"]) for p in rejects[0]["problems"]] == [
        ("patient_id", "unresolved_reference"), ("assessment_id", "unresolved_reference")]


@pytest.mark.parametrize("name,content,expect", [
    ("missing.ndjson", None, "no such file"),
    ("notgzip.ndjson.gz", b"plain text", "not a gzip file"),
    ("doc.json", b"{not json", "not valid JSON"),
    ("doc2.json", b'{"format": "ims-record/9", "source": {}}', "ims-record/1"),
    ("data.txt", b"whatever", "cannot tell the form"),
])
def test_unreadable_input_is_exit_2_with_one_line(
        run_cli: Any, tmp_path: Path, name: str, content: bytes | None, expect: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = run_cli("convert", path, "--out", tmp_path / "out", "--clinic-id", "c1", "--system-base", SB)
    assert result.code == 2
    assert expect in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,expect", [
    (["--system-base", "not a uri"], "absolute URI"),
    ([], "no source"),
    (["--system-base", SB, "--clinic-id", "c1", "--default-tz", "Mars/Olympus"], "unknown time zone"),
])
def test_bad_source_or_options_are_exit_2(run_cli: Any, tmp_path: Path, args: list[str], expect: str) -> None:
    inp = write_ndjson(tmp_path / "in.ndjson", [PATIENT])
    result = run_cli("convert", inp, "--out", tmp_path / "out", *args)
    assert result.code == 2 and expect in result.err and "Traceback" not in result.err


def test_gzip_ndjson_reads_like_plain(run_cli: Any, tmp_path: Path) -> None:
    body = b"".join(orjson.dumps(r) + b"\n" for r in (PATIENT, PRACTITIONER, ASSESSMENT, TREATMENT))
    (tmp_path / "a.ndjson.gz").write_bytes(gzip.compress(body))
    result = run_cli("convert", tmp_path / "a.ndjson.gz", "--out", tmp_path / "out", "--clinic-id", "c1", "--system-base", SB)
    assert result.code == 0
    assert orjson.loads((tmp_path / "out" / "summary.json").read_bytes())["converted"] == 4


def test_whitespace_at_the_ends_of_texts_is_dropped_but_blank_texts_are_rejected(run_cli: Any, tmp_path: Path) -> None:
    """FHIR strings should not start or end with whitespace (HAPI warns): texts are trimmed on
    reading, so the FHIR output and the import agree; the clinic id keeps every character."""
    patient = _with(PATIENT, family_name=" Testperson\t", given_names=["Alex ", "\u3000Sam"],
                    identifiers=[{"system": "https://health.example.org/phn", "value": " 9876 "}])
    model, problems = validate_record("patient", {k: v for k, v in patient.items() if k != "record_type"})
    assert problems == [] and model is not None
    assert (model.family_name, model.given_names) == ("Testperson", ["Alex", "Sam"])
    assert model.identifiers is not None and model.identifiers[0].value == "9876"
    _, problems = validate_record("patient", {**{k: v for k, v in PATIENT.items() if k != "record_type"},
                                              "family_name": " \t "})
    assert [(p.path, p.rule) for p in problems] == [("family_name", "non_empty")]

    inp = write_ndjson(tmp_path / "in.ndjson", [patient])
    assert run_cli("convert", inp, "--out", tmp_path / "out", "--clinic-id", " c1 ", "--system-base", SB).code == 0
    [fhir_patient] = read_ndjson(tmp_path / "out" / "Patient.ndjson")
    assert fhir_patient["name"][0]["family"] == "Testperson" and fhir_patient["name"][0]["given"] == ["Alex", "Sam"]
    [org] = read_ndjson(tmp_path / "out" / "Organization.ndjson")
    assert org["identifier"][0]["value"] == " c1 "
