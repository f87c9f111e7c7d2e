"""The CSV folder form: relational tables joined back into records, problems named by file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from ims_fhir.errors import InputError
from ims_fhir.records.readers import CSV_TABLES, open_input
from tests.conftest import read_ndjson

SOURCE = {"clinic_id": "c1", "system_base": "https://clinic.example.org/ims"}


def _folder(tmp_path: Path, tables: dict[str, list[dict[str, str]]], *, header_extra: dict[str, list[str]] | None = None) -> Path:
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "source.json").write_bytes(orjson.dumps(SOURCE))
    for name, rows in tables.items():
        columns = list(CSV_TABLES[name]) + (header_extra or {}).get(name, [])
        lines = [",".join(columns)]
        for row in rows:
            lines.append(",".join(_quote(row.get(c, "")) for c in columns))
        (folder / name).write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return folder


def _quote(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"' if any(ch in cell for ch in ',"\n') else cell


BASE = {
    "patients.csv": [{"id": "P1", "family_name": "Testperson", "given_names": "Alex|Jo", "sex": "female",
                      "identifier_system": "https://health.example.org/phn", "identifier_value": "9000001"}],
    "practitioners.csv": [{"id": "PR1", "family_name": "Example", "ims_certified": "Yes"}],
    "assessments.csv": [{"id": "A1", "patient_id": "P1", "practitioner_id": "PR1", "performed_at": "2025-03-04T09:30:00-08:00",
                         "pain_nrs": "6", "candidacy_suitable": "TRUE", "contraindications": "pregnancy|metal_allergy",
                         "notes": "multi\nline, with \"quotes\""}],
    "assessment_findings.csv": [
        {"assessment_id": "A1", "kind": "pain_location", "code": "lower_back", "side": "left"},
        {"assessment_id": "A1", "kind": "range_of_motion", "code": "lumbar_flexion", "degrees": "45.5", "painful": "1"},
        {"assessment_id": "A1", "kind": "palpation", "code": "piriformis", "side": "right", "tender": "true", "taut_band": "0"},
    ],
    "treatments.csv": [{"id": "T1", "patient_id": "P1", "practitioner_id": "PR1", "started_at": "2025-03-11T09:30:00-08:00",
                        "consent_obtained": "true", "pain_before_nrs": "5"}],
    "treatment_sites.csv": [{"treatment_id": "T1", "muscle": "piriformis", "side": "right", "insertions": "3",
                             "estim_frequency_hz": "2", "estim_duration_min": "10"}],
}


def _records(folder: Path) -> list[Any]:
    return list(open_input(folder).records)


def test_tables_join_into_records(tmp_path: Path) -> None:
    recs = {r.record_type: r for r in _records(_folder(tmp_path, BASE))}
    assert recs["patient"].data == {"id": "P1", "family_name": "Testperson", "given_names": ["Alex", "Jo"], "sex": "female",
                                    "identifiers": [{"system": "https://health.example.org/phn", "value": "9000001"}]}
    assert recs["practitioner"].data["ims_certified"] is True
    a = recs["assessment"].data
    assert a["pain"] == {"nrs": 6, "locations": [{"region": "lower_back", "side": "left"}]}
    assert a["range_of_motion"] == [{"movement": "lumbar_flexion", "degrees": 45.5, "painful": True}]
    assert a["palpation"] == [{"muscle": "piriformis", "side": "right", "tender": True, "taut_band": False}]
    assert a["candidacy"] == {"suitable": True, "contraindications": ["pregnancy", "metal_allergy"]}
    assert a["notes"] == 'multi\nline, with "quotes"'
    assert recs["treatment"].data["sites"] == [{"muscle": "piriformis", "side": "right", "insertions": 3,
                                                "electrical_stimulation": {"frequency_hz": 2, "duration_min": 10}}]
    assert recs["treatment"].origin == "treatments.csv:2"


def test_child_row_without_parent_is_its_own_reject(run_cli: Any, tmp_path: Path) -> None:
    tables = dict(BASE)
    tables["treatment_sites.csv"] = BASE["treatment_sites.csv"] + [
        {"treatment_id": "T404", "muscle": "deltoid", "side": "left", "insertions": "1"}]
    folder = _folder(tmp_path, tables)
    result = run_cli("convert", folder, "--out", tmp_path / "out")
    assert result.code == 1
    (reject,) = read_ndjson(tmp_path / "out" / "rejects.ndjson")
    assert reject["origin"] == "treatment_sites.csv:3" and reject["record_type"] == "treatment_site"
    assert reject["problems"][0]["rule"] == "parent_missing" and "T404" in reject["problems"][0]["message"]


def test_bad_child_cell_rejects_the_parent_naming_the_row(run_cli: Any, tmp_path: Path) -> None:
    tables = dict(BASE)
    tables["treatment_sites.csv"] = [dict(BASE["treatment_sites.csv"][0], insertions="three")]
    tables["assessment_findings.csv"] = BASE["assessment_findings.csv"] + [
        {"assessment_id": "A1", "kind": "palpation", "code": "piriformis", "degrees": "30"},
        {"assessment_id": "A1", "kind": "gossip", "code": "x"},
    ]
    folder = _folder(tmp_path, tables)
    result = run_cli("convert", folder, "--out", tmp_path / "out")
    assert result.code == 1
    rejects = {r["id"]: r for r in read_ndjson(tmp_path / "out" / "rejects.ndjson")}
    (site_problem,) = rejects["T1"]["problems"]
    assert site_problem["path"] == "sites[0].insertions" and site_problem["rule"] == "type"
    assert "(treatment_sites.csv:2)" in site_problem["message"]
    rules = {(p["path"], p["rule"]) for p in rejects["A1"]["problems"]}
    assert ("assessment_findings.csv:5.degrees", "not_applicable") in rules
    assert ("assessment_findings.csv:6.kind", "enum") in rules


def test_empty_cell_is_not_recorded_and_bad_boolean_is_named(tmp_path: Path) -> None:
    tables = dict(BASE)
    tables["treatments.csv"] = [dict(BASE["treatments.csv"][0], consent_obtained="", pain_before_nrs="")]
    tables["practitioners.csv"] = [dict(BASE["practitioners.csv"][0], ims_certified="maybe")]
    recs = {r.record_type: r for r in _records(_folder(tmp_path, tables))}
    assert "consent_obtained" not in recs["treatment"].data and "pain_before_nrs" not in recs["treatment"].data
    assert recs["practitioner"].data["ims_certified"] == "maybe"  # left as text: the model says it is not a boolean


def test_unknown_column_is_an_error_unless_lenient(run_cli: Any, tmp_path: Path) -> None:
    tables = {"patients.csv": [dict(BASE["patients.csv"][0], nickname="Al")]}
    folder = _folder(tmp_path, tables, header_extra={"patients.csv": ["nickname"]})
    result = run_cli("convert", folder, "--out", tmp_path / "out")
    assert result.code == 1
    (reject,) = read_ndjson(tmp_path / "out" / "rejects.ndjson")
    assert reject["problems"][0]["path"] == "patients.csv:2.nickname" and reject["problems"][0]["rule"] == "unknown_field"
    assert run_cli("convert", folder, "--out", tmp_path / "out2", "--lenient").code == 0


def test_identifier_pairs_must_match(run_cli: Any, tmp_path: Path) -> None:
    tables = {"patients.csv": [dict(BASE["patients.csv"][0], identifier_value="1|2")]}
    result = run_cli("convert", _folder(tmp_path, tables), "--out", tmp_path / "out")
    assert result.code == 1
    (reject,) = read_ndjson(tmp_path / "out" / "rejects.ndjson")
    assert reject["problems"][0]["rule"] == "pair_count"


def test_missing_tables_are_empty_and_unknown_table_is_refused(run_cli: Any, tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"patients.csv": BASE["patients.csv"]})
    assert run_cli("convert", folder, "--out", tmp_path / "out").code == 0
    (folder / "appointments.csv").write_text("id\n1\n")
    with pytest.raises(InputError, match="appointments.csv"):
        _records(folder)
    result = run_cli("convert", folder, "--out", tmp_path / "out")
    assert result.code == 2 and "appointments.csv" in result.err


def test_not_utf8_is_exit_2(run_cli: Any, tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"patients.csv": BASE["patients.csv"]})
    (folder / "patients.csv").write_bytes("id,family_name\r\nP1,Gr\xfcn\r\n".encode("latin-1"))
    result = run_cli("convert", folder, "--out", tmp_path / "out")
    assert result.code == 2 and "not UTF-8" in result.err
