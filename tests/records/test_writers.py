"""Tests for ims_fhir.records.writers: the three physical forms of ims-record/1."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ims_fhir.dev import synthetic
from ims_fhir.records.writers import (
    CSV_TABLES,
    UnwritableRecordError,
    csv_rows,
    iter_records_by_type,
    write_csv_folder,
    write_json_document,
    write_ndjson,
)

# Copied from the format's "CSV tables" table (README.md, "The record format"), on purpose not
# imported from the module under test.
SPEC_CSV_COLUMNS = {
    "patients.csv": "id, family_name, given_names, birth_date, sex, identifier_system, identifier_value, phone, email",
    "practitioners.csv": "id, family_name, given_names, registration_system, registration_value, ims_certified",
    "assessments.csv": (
        "id, patient_id, practitioner_id, performed_at, status, chief_complaint, pain_nrs, pain_duration_weeks, "
        "candidacy_suitable, contraindications, candidacy_note, notes"
    ),
    "assessment_findings.csv": (
        "assessment_id, kind, code, side, segment, present, tender, taut_band, trigger_point, degrees, painful, score, note, "
        "system"
    ),
    "treatments.csv": (
        "id, patient_id, practitioner_id, assessment_id, started_at, ended_at, status, status_reason, session_number, "
        "series_total, consent_obtained, pain_before_nrs, pain_after_nrs, notes"
    ),
    "treatment_sites.csv": (
        "treatment_id, muscle, side, segment, insertions, needle_diameter_mm, needle_length_mm, twitch_response, "
        "estim_frequency_hz, estim_duration_min"
    ),
    "treatment_adverse_events.csv": "treatment_id, event, severity, muscle, note",
}
SPEC_CSV_COLUMNS_LISTS = {name: [c.strip() for c in cols.split(",")] for name, cols in SPEC_CSV_COLUMNS.items()}

SOURCE = {"clinic_id": "synthetic-1", "clinic_name": "Synthetic IMS Clinic", "system_base": "https://clinic.example.org/ims"}


def patient(pid: str = "P000001", **extra: Any) -> dict[str, Any]:
    return {"id": pid, "family_name": "Testperson", **extra}


def practitioner(pid: str = "PR0001", **extra: Any) -> dict[str, Any]:
    return {"id": pid, "family_name": "Example", **extra}


def assessment(aid: str = "A0000001", **extra: Any) -> dict[str, Any]:
    return {
        "id": aid,
        "patient_id": "P000001",
        "practitioner_id": "PR0001",
        "performed_at": "2025-03-04T09:30:00-08:00",
        **extra,
    }


def treatment(tid: str = "T00000001", **extra: Any) -> dict[str, Any]:
    return {
        "id": tid,
        "patient_id": "P000001",
        "practitioner_id": "PR0001",
        "started_at": "2025-03-04T10:15:00-08:00",
        "consent_obtained": True,
        "sites": [{"muscle": "upper_trapezius", "side": "left", "insertions": 3}],
        **extra,
    }


def read_table(folder: Path, name: str) -> list[dict[str, str]]:
    with open(folder / name, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------ NDJSON


def test_ndjson_record_type_first_compact_utf8_lf(tmp_path: Path) -> None:
    path = tmp_path / "records.ndjson"
    counts = write_ndjson(
        path,
        [("patient", patient(given_names=["Zoë"])), ("treatment", treatment(notes="Ça va"))],
    )
    assert counts == {"patient": 1, "practitioner": 0, "assessment": 0, "treatment": 1}
    data = path.read_bytes()
    assert b"\r" not in data and data.endswith(b"\n")
    lines = data.decode("utf-8").splitlines()
    assert lines[0] == '{"record_type":"patient","id":"P000001","family_name":"Testperson","given_names":["Zoë"]}'
    for line in lines:
        assert next(iter(json.loads(line))) == "record_type"
    assert json.loads(lines[1])["notes"] == "Ça va"


def test_ndjson_keeps_given_order_and_tolerates_agreeing_record_type(tmp_path: Path) -> None:
    path = tmp_path / "r.ndjson"
    write_ndjson(path, [("treatment", treatment()), ("patient", {"record_type": "patient", **patient()})])
    first, second = (json.loads(line) for line in path.read_text("utf-8").splitlines())
    assert first["record_type"] == "treatment"
    assert list(second) == ["record_type", "id", "family_name"]


def test_ndjson_gzip_round_trip_and_deterministic_bytes(tmp_path: Path) -> None:
    records = list(synthetic.generate(3, seed=5))
    a, b = tmp_path / "a.ndjson.gz", tmp_path / "b.ndjson.gz"
    write_ndjson(a, records)
    write_ndjson(b, records)
    assert a.read_bytes()[:2] == b"\x1f\x8b"
    assert a.read_bytes() == b.read_bytes()  # no time stamp or file name in the header
    with gzip.open(a, "rt", encoding="utf-8") as f:
        back = [json.loads(line) for line in f]
    assert [(r.pop("record_type"), r) for r in back] == records


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ([("encounter", {"id": "E1"})], "unknown record type"),
        ([("patient", {"record_type": "practitioner", **patient()})], "record_type"),
        ([("patient", patient(weight=float("nan")))], "not JSON-serializable"),
        ([("patient", ["not", "a", "dict"])], "expected a dict"),
    ],
)
def test_ndjson_refuses_bad_pairs_and_leaves_no_file(tmp_path: Path, records: list[Any], match: str) -> None:
    path = tmp_path / "out.ndjson"
    with pytest.raises(UnwritableRecordError, match=match):
        write_ndjson(path, [("patient", patient("P0")), *records])
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "out.ndjson"
    write_ndjson(path, [("patient", patient())])
    before = path.read_bytes()
    with pytest.raises(UnwritableRecordError):
        write_ndjson(path, [("patient", patient("P2")), ("nonsense", {})])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.ndjson"]


# ------------------------------------------------------------------------ JSON document


def test_json_document_groups_types_in_spec_order(tmp_path: Path) -> None:
    records = [
        ("treatment", treatment()),
        ("practitioner", practitioner()),
        ("patient", patient()),
        ("treatment", treatment("T2")),
        ("patient", patient("P2")),
    ]
    path = tmp_path / "clinic.json"
    counts = write_json_document(path, SOURCE, records)
    assert counts == {"patient": 2, "practitioner": 1, "assessment": 0, "treatment": 2}
    doc = json.loads(path.read_text("utf-8"))
    assert list(doc) == ["format", "source", "patients", "practitioners", "treatments"]  # no empty list
    assert doc["format"] == "ims-record/1"
    assert doc["source"] == SOURCE
    assert [r["id"] for r in doc["patients"]] == ["P000001", "P2"]
    assert [r["id"] for r in doc["treatments"]] == ["T00000001", "T2"]
    assert doc["treatments"][0] == treatment()


@pytest.mark.parametrize("indent", [2, None])
def test_json_document_content_matches_records(tmp_path: Path, indent: int | None) -> None:
    records = list(synthetic.generate(4, seed=11, full=True))
    path = tmp_path / "clinic.json"
    write_json_document(path, SOURCE, records, indent=indent)
    doc = json.loads(path.read_text("utf-8"))
    grouped = list(iter_records_by_type(records))
    keys = {"patient": "patients", "practitioner": "practitioners", "assessment": "assessments", "treatment": "treatments"}
    assert [(t, r) for t in keys for r in doc[keys[t]]] == grouped
    if indent is None:
        # a line per record, plus {, format, source, }, and an opening and closing line per list
        assert len(path.read_text("utf-8").splitlines()) == len(records) + 4 + 2 * 4


def test_json_document_with_no_records(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    write_json_document(path, SOURCE, [])
    assert json.loads(path.read_text("utf-8")) == {"format": "ims-record/1", "source": SOURCE}


def test_iter_records_by_type_is_stable_within_a_type() -> None:
    records = [("treatment", treatment("T1")), ("patient", patient("P1")), ("treatment", treatment("T2"))]
    assert [(t, r["id"]) for t, r in iter_records_by_type(records)] == [
        ("patient", "P1"),
        ("treatment", "T1"),
        ("treatment", "T2"),
    ]


# ------------------------------------------------------------------------ CSV folder


def test_csv_tables_match_the_spec() -> None:
    assert {name: list(cols) for name, cols in CSV_TABLES.items()} == SPEC_CSV_COLUMNS_LISTS


def test_csv_folder_headers_line_ends_and_source(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "csv"  # created, parents too
    write_csv_folder(folder, SOURCE, [("patient", patient())])
    assert sorted(p.name for p in folder.iterdir()) == sorted([*SPEC_CSV_COLUMNS, "source.json"])
    for name, columns in SPEC_CSV_COLUMNS_LISTS.items():
        data = (folder / name).read_bytes()
        assert not data.startswith(b"\xef\xbb\xbf")  # no BOM
        header, _, _ = data.partition(b"\r\n")
        assert header.decode("utf-8").split(",") == columns
        assert data.count(b"\n") == data.count(b"\r\n")  # \r\n throughout
    assert json.loads((folder / "source.json").read_text("utf-8")) == SOURCE


def test_csv_cells_booleans_numbers_pipes_and_empty(tmp_path: Path) -> None:
    records = [
        (
            "patient",
            patient(
                given_names=["Alex", "Robin"],
                identifiers=[
                    {"system": "https://health.example.org/phn", "value": "0000000001"},
                    {"system": "https://hospital.example.org/mrn", "value": "MRN1"},
                ],
                birth_date="1980-05-17",
            ),
        ),
        ("practitioner", practitioner(registration={"system": "https://college.example.org/pt", "value": "PT-1"},
                                      ims_certified=False)),
        (
            "assessment",
            assessment(
                pain={"nrs": 6, "duration_weeks": 0.1 + 0.2, "locations": [{"region": "neck", "side": "midline"}]},
                palpation=[{"muscle": "upper_trapezius", "tender": True, "taut_band": False}],
                range_of_motion=[{"movement": "cervical_rotation", "side": "left", "degrees": 60, "painful": True}],
                outcome_measures=[{"instrument": "psfs", "score": 4.3}, {"instrument": "ndi", "score": 12}],
                candidacy={"suitable": True, "contraindications": ["anticoagulant_therapy", "needle_phobia"]},
                notes='Said "better", then, worse\non a new line',
            ),
        ),
        (
            "treatment",
            treatment(
                sites=[
                    {
                        "muscle": "gluteus_medius",
                        "side": "right",
                        "insertions": 5,
                        "needle_diameter_mm": 0.3,
                        "needle_length_mm": 60,
                        "electrical_stimulation": {"frequency_hz": 2.5, "duration_min": 10},
                    },
                    {"muscle": "piriformis", "side": "right", "insertions": 2},
                ],
                adverse_events=[{"event": "bruising", "severity": "mild"}],
            ),
        ),
    ]
    folder = tmp_path / "csv"
    counts = write_csv_folder(folder, SOURCE, records)
    assert counts == {"patient": 1, "practitioner": 1, "assessment": 1, "treatment": 1}

    (p,) = read_table(folder, "patients.csv")
    assert p["given_names"] == "Alex|Robin"
    assert p["identifier_system"] == "https://health.example.org/phn|https://hospital.example.org/mrn"
    assert p["identifier_value"] == "0000000001|MRN1"
    assert p["sex"] == "" and p["phone"] == ""

    (pr,) = read_table(folder, "practitioners.csv")
    assert (pr["registration_system"], pr["registration_value"], pr["ims_certified"]) == (
        "https://college.example.org/pt",
        "PT-1",
        "false",
    )

    (a,) = read_table(folder, "assessments.csv")
    assert a["pain_nrs"] == "6"
    assert a["pain_duration_weeks"] == "0.30000000000000004"  # shortest form that round-trips
    assert float(a["pain_duration_weeks"]) == 0.1 + 0.2
    assert a["candidacy_suitable"] == "true"
    assert a["contraindications"] == "anticoagulant_therapy|needle_phobia"
    assert a["candidacy_note"] == "" and a["status"] == ""
    assert a["notes"] == 'Said "better", then, worse\non a new line'

    findings = read_table(folder, "assessment_findings.csv")
    assert [(f["kind"], f["code"]) for f in findings] == [
        ("pain_location", "neck"),
        ("palpation", "upper_trapezius"),
        ("range_of_motion", "cervical_rotation"),
        ("outcome_measure", "psfs"),
        ("outcome_measure", "ndi"),
    ]
    assert findings[0]["side"] == "midline"
    assert (findings[1]["tender"], findings[1]["taut_band"], findings[1]["trigger_point"]) == ("true", "false", "")
    assert (findings[2]["degrees"], findings[2]["painful"]) == ("60", "true")
    assert (findings[3]["score"], findings[4]["score"]) == ("4.3", "12")
    assert all(f["assessment_id"] == "A0000001" for f in findings)

    (t,) = read_table(folder, "treatments.csv")
    assert t["consent_obtained"] == "true" and t["status"] == "" and t["assessment_id"] == ""
    sites = read_table(folder, "treatment_sites.csv")
    assert [s["muscle"] for s in sites] == ["gluteus_medius", "piriformis"]
    assert (sites[0]["needle_diameter_mm"], sites[0]["estim_frequency_hz"], sites[0]["estim_duration_min"]) == (
        "0.3",
        "2.5",
        "10",
    )
    assert sites[1]["estim_frequency_hz"] == "" and sites[1]["needle_length_mm"] == ""
    (event,) = read_table(folder, "treatment_adverse_events.csv")
    assert event == {"treatment_id": "T00000001", "event": "bruising", "severity": "mild", "muscle": "", "note": ""}


def test_pipe_outside_a_multi_valued_cell_is_fine(tmp_path: Path) -> None:
    write_csv_folder(tmp_path, SOURCE, [("patient", patient(family_name="Test|person"))])
    assert read_table(tmp_path, "patients.csv")[0]["family_name"] == "Test|person"


@pytest.mark.parametrize(
    ("record_type", "record", "field"),
    [
        ("patient", patient(given_names=["Alex", "Ro|bin"]), "given_names[1]"),
        ("practitioner", practitioner(given_names=["A|B"]), "given_names[0]"),
        (
            "patient",
            patient(identifiers=[{"system": "https://health.example.org/phn", "value": "12|34"}]),
            "identifiers.value[0]",
        ),
        (
            "assessment",
            assessment(candidacy={"suitable": False, "contraindications": ["pregnancy", "other|thing"]}),
            "candidacy.contraindications[1]",
        ),
    ],
)
def test_pipe_inside_a_multi_valued_value_raises(
    tmp_path: Path, record_type: str, record: dict[str, Any], field: str
) -> None:
    with pytest.raises(UnwritableRecordError) as caught:
        write_csv_folder(tmp_path / "csv", SOURCE, [(record_type, record)])
    err = caught.value
    assert isinstance(err, ValueError)
    assert (err.record_type, err.record_id, err.field) == (record_type, record["id"], field)
    assert record["id"] in str(err) and field in str(err) and "'|'" in str(err)
    assert not (tmp_path / "csv").exists() or list((tmp_path / "csv").iterdir()) == []


@pytest.mark.parametrize(
    ("record_type", "record", "field"),
    [
        ("assessment", assessment(pian={"nrs": 4}), "pian"),
        ("assessment", assessment(pain={"nrs": 4, "where": "neck"}), "pain.where"),
        ("assessment", assessment(palpation=[{"muscle": "scalenes", "degrees": 3}]), "palpation[0].degrees"),
        ("treatment", treatment(sites=[{"muscle": "soleus", "side": "left", "insertions": 1, "depth": 3}]), "sites[0].depth"),
        (
            "treatment",
            treatment(sites=[{"muscle": "soleus", "side": "left", "insertions": 1, "electrical_stimulation": {"hz": 2}}]),
            "sites[0].electrical_stimulation.hz",
        ),
        ("patient", patient(identifiers=[{"value": "1"}]), "identifiers[0].system"),
        ("patient", patient(given_names=[""]), "given_names[0]"),
        ("patient", patient(phone=["1", "2"]), "phone"),
        ("treatment", treatment(pain_before_nrs=float("inf")), "pain_before_nrs"),
        ("assessment", assessment(palpation={"muscle": "scalenes"}), "palpation"),
    ],
)
def test_csv_refuses_what_it_cannot_hold(tmp_path: Path, record_type: str, record: dict[str, Any], field: str) -> None:
    with pytest.raises(UnwritableRecordError) as caught:
        csv_rows(record_type, record)
    assert caught.value.field == field


def test_failed_csv_write_replaces_nothing(tmp_path: Path) -> None:
    write_csv_folder(tmp_path, SOURCE, [("patient", patient())])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(UnwritableRecordError):
        write_csv_folder(tmp_path, {"clinic_id": "other"}, [("patient", patient("P2")), ("patient", patient(x=1))])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# A small inverse of the CSV split, only to prove that the writer loses nothing. The
# project's real CSV reader lives in ims_fhir.records.readers.
_BOOL = {"present", "tender", "taut_band", "trigger_point", "painful", "ims_certified", "consent_obtained", "candidacy_suitable"}
_NUMBER = {
    "pain_nrs", "pain_duration_weeks", "degrees", "score", "session_number", "series_total", "pain_before_nrs",
    "pain_after_nrs", "insertions", "needle_diameter_mm", "needle_length_mm", "estim_frequency_hz", "estim_duration_min",
}  # fmt: skip


def _value(column: str, cell: str) -> Any:
    if column in _BOOL:
        return cell == "true"
    if column in _NUMBER:
        return float(cell) if any(c in cell for c in ".e") else int(cell)
    return cell


def _present(row: dict[str, str], columns: list[str]) -> dict[str, Any]:
    return {c: _value(c, row[c]) for c in columns if row[c] != ""}


def _rebuild(folder: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    children: dict[str, dict[str, list[dict[str, str]]]] = {}
    for table, key in (
        ("assessment_findings.csv", "assessment_id"),
        ("treatment_sites.csv", "treatment_id"),
        ("treatment_adverse_events.csv", "treatment_id"),
    ):
        for row in read_table(folder, table):
            children.setdefault(table, {}).setdefault(row[key], []).append(row)
    for row in read_table(folder, "patients.csv"):
        r = _present(row, ["id", "family_name", "birth_date", "sex", "phone", "email"])
        if row["identifier_system"]:
            pairs = zip(row["identifier_system"].split("|"), row["identifier_value"].split("|"), strict=True)
            r["identifiers"] = [{"system": s, "value": v} for s, v in pairs]
        if row["given_names"]:
            r["given_names"] = row["given_names"].split("|")
        yield "patient", r
    for row in read_table(folder, "practitioners.csv"):
        r = _present(row, ["id", "family_name", "ims_certified"])
        if row["given_names"]:
            r["given_names"] = row["given_names"].split("|")
        reg = {k: row[f"registration_{k}"] for k in ("system", "value") if row[f"registration_{k}"]}
        if reg:
            r["registration"] = reg
        yield "practitioner", r
    for row in read_table(folder, "assessments.csv"):
        r = _present(row, ["id", "patient_id", "practitioner_id", "performed_at", "status", "chief_complaint", "notes"])
        findings = children.get("assessment_findings.csv", {}).get(row["id"], [])
        by_kind: dict[str, list[dict[str, Any]]] = {}
        codes = {"pain_location": "region", "neuropathic_sign": "sign", "palpation": "muscle", "range_of_motion": "movement",
                 "outcome_measure": "instrument", "diagnosis": "code"}
        for f in findings:
            item = {codes[f["kind"]]: f["code"], **_present(f, SPEC_CSV_COLUMNS_LISTS["assessment_findings.csv"][3:])}
            if f["kind"] == "diagnosis" and "note" in item:  # the spec keeps a diagnosis's text in `note`
                item["text"] = item.pop("note")
            by_kind.setdefault(f["kind"], []).append(item)
        pain = {k: _value(c, row[c]) for k, c in (("nrs", "pain_nrs"), ("duration_weeks", "pain_duration_weeks")) if row[c]}
        if "pain_location" in by_kind:
            pain["locations"] = by_kind["pain_location"]
        if pain:
            r["pain"] = pain
        for kind, name in (("neuropathic_sign", "neuropathic_signs"), ("palpation", "palpation"),
                           ("range_of_motion", "range_of_motion"), ("outcome_measure", "outcome_measures"),
                           ("diagnosis", "diagnoses")):
            if kind in by_kind:
                r[name] = by_kind[kind]
        candidacy: dict[str, Any] = {}
        if row["candidacy_suitable"]:
            candidacy["suitable"] = row["candidacy_suitable"] == "true"
        if row["contraindications"]:
            candidacy["contraindications"] = row["contraindications"].split("|")
        if row["candidacy_note"]:
            candidacy["note"] = row["candidacy_note"]
        if candidacy:
            r["candidacy"] = candidacy
        yield "assessment", r
    for row in read_table(folder, "treatments.csv"):
        r = _present(row, SPEC_CSV_COLUMNS_LISTS["treatments.csv"])
        sites = []
        for s in children.get("treatment_sites.csv", {}).get(row["id"], []):
            site = _present(s, SPEC_CSV_COLUMNS_LISTS["treatment_sites.csv"][1:8])
            estim = {k: _value(c, s[c])
                     for k, c in (("frequency_hz", "estim_frequency_hz"), ("duration_min", "estim_duration_min")) if s[c]}
            if estim:
                site["electrical_stimulation"] = estim
            sites.append(site)
        if sites:
            r["sites"] = sites
        events = [_present(e, ["event", "severity", "muscle", "note"])
                  for e in children.get("treatment_adverse_events.csv", {}).get(row["id"], [])]
        if events:
            r["adverse_events"] = events
        yield "treatment", r


def _canonical(record: Any) -> Any:
    """Key order does not matter to the content; list order does."""
    if isinstance(record, dict):
        return {k: _canonical(record[k]) for k in sorted(record)}
    if isinstance(record, list):
        return [_canonical(v) for v in record]
    return record


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_csv_split_loses_nothing(tmp_path: Path, seed: int) -> None:
    records = list(synthetic.generate(6, seed=seed, full=True, assessments_per_patient=2))
    write_csv_folder(tmp_path, SOURCE, records)
    expected = [(t, _canonical(r)) for t, r in iter_records_by_type(records)]
    assert [(t, _canonical(r)) for t, r in _rebuild(tmp_path)] == expected


# ------------------------------------------------------------------------ streaming

# Run in a fresh interpreter: tracemalloc would make 200k records take half a minute,
# while the peak resident size of a child process costs nothing to watch. The records
# are made on the fly, with child rows, and never held together; as a list they alone
# would take well over 100 MB.
_STREAMING_SCRIPT = """
import resource, sys
from pathlib import Path
from ims_fhir.records.writers import write_csv_folder, write_json_document, write_ndjson

def records(n):
    for i in range(n):
        if i % 2:
            yield "patient", {"id": f"P{i:07d}", "family_name": "Sample", "given_names": ["Alex", "Sam"], "sex": "other"}
        else:
            yield "treatment", {
                "id": f"T{i:08d}", "patient_id": f"P{i + 1:07d}", "practitioner_id": "PR0001",
                "started_at": "2025-03-04T10:15:00-08:00", "consent_obtained": True,
                "sites": [{"muscle": "soleus", "side": "left", "insertions": 2, "needle_diameter_mm": 0.25}],
                "pain_before_nrs": 5,
            }

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

out, n, form = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
source = {"clinic_id": "synthetic-1", "system_base": "https://clinic.example.org/ims"}
write = {
    "ndjson": lambda path, recs: write_ndjson(path.with_suffix(".ndjson"), recs),
    "csv": lambda path, recs: write_csv_folder(path, source, recs),
    "json": lambda path, recs: write_json_document(path.with_suffix(".json"), source, recs, indent=None),
}[form]
write(out / "warm", records(1000))  # imports and buffers settle first
base = peak_mib()
write(out / "big", records(n))
print(peak_mib() - base)
"""


def test_writers_stream_in_constant_memory(tmp_path: Path) -> None:
    n = 200_000
    root = Path(__file__).resolve().parents[2]
    children = {}
    for form in ("ndjson", "csv"):  # one child per writer, side by side
        (tmp_path / form).mkdir()
        children[form] = subprocess.Popen(
            [sys.executable, "-c", _STREAMING_SCRIPT, str(tmp_path / form), str(n), form],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=root,
        )
    for form, child in children.items():
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        growth = float(out)
        assert growth < 20, f"{form} writer grew the process by {growth:.1f} MiB for {n} records"
    with open(tmp_path / "ndjson" / "big.ndjson", "rb") as f:
        assert sum(1 for _ in f) == n
    with open(tmp_path / "csv" / "big" / "treatment_sites.csv", "rb") as f:
        assert sum(1 for _ in f) == n // 2 + 1


def test_streaming_memory_does_not_grow_with_the_count(tmp_path: Path) -> None:
    """The same bound, measured by tracemalloc on counts small enough to be quick;
    this one also covers the JSON document writer."""

    def records(n: int) -> Iterator[tuple[str, dict[str, Any]]]:
        for i in range(n):
            yield "assessment", assessment(f"A{i}", palpation=[{"muscle": "scalenes", "tender": True}], notes="x" * 200)

    peaks: dict[str, list[int]] = {"ndjson": [], "csv": [], "json": []}
    for n in (500, 4_000):
        tracemalloc.start()
        try:
            for form, write in (
                ("ndjson", lambda n=n: write_ndjson(tmp_path / f"{n}.ndjson", records(n))),
                ("csv", lambda n=n: write_csv_folder(tmp_path / f"csv{n}", SOURCE, records(n))),
                ("json", lambda n=n: write_json_document(tmp_path / f"{n}.json", SOURCE, records(n), indent=None)),
            ):
                tracemalloc.reset_peak()
                write()
                peaks[form].append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    # 4k of these records take ~2 MB as a list and ~1.4 MB as JSON text.
    assert peaks["ndjson"][1] < 1.5 * 2**20 and peaks["ndjson"][1] < peaks["ndjson"][0] * 1.5 + 100_000, peaks
    assert peaks["csv"][1] < 1.5 * 2**20 and peaks["csv"][1] < peaks["csv"][0] * 1.5 + 100_000, peaks
    # The JSON document spools up to 1 MiB per record type in memory, then to disk.
    assert peaks["json"][1] < 2.5 * 2**20, peaks
