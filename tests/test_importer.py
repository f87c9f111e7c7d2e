"""``ims-fhir import``: FHIR files back to ims-record/1 files, with rejects, report, summary, exit codes."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from ims_fhir.importer import output_paths
from ims_fhir.importing import normalise, normalise_source
from ims_fhir.records.vocabulary import LIST_KEYS
from tests.conftest import EXAMPLES, SOURCE, read_ndjson

FOREIGN = Path(__file__).parent / "fixtures" / "foreign"
GOLDEN = Path(__file__).parent / "golden" / "clinic-small"


def _examples() -> list[dict[str, Any]]:
    doc = orjson.loads((EXAMPLES / "clinic.json").read_bytes())
    return [{"record_type": t, **normalise(t, r)} for t, key in LIST_KEYS.items() for r in doc.get(key, [])]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example export converted once to each FHIR layout."""
    from ims_fhir.cli import main

    root = tmp_path_factory.mktemp("converted")
    out = {}
    for layout in ("ndjson", "bundle"):
        out[layout] = root / layout
        assert main(["convert", str(EXAMPLES / "clinic.json"), "--out", str(out[layout]), "--format", layout,
                     "--bundle-size", "30", "--quiet"]) == 0
    return out


def test_convert_then_import_gives_the_examples_back(run_cli: Any, converted: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "records.ndjson"
    result = run_cli("import", converted["ndjson"], "--out", out)
    assert result.code == 0, result.err
    assert read_ndjson(out) == _examples()
    assert list(read_ndjson(out)[0])[0] == "record_type"
    paths = output_paths(out)
    assert paths["rejects"].read_bytes() == b"" and paths["report"].read_bytes() == b""
    summary = orjson.loads(paths["summary"].read_bytes())
    assert summary["read"] == summary["mapped"] == 376 and summary["rejected"] == summary["duplicate"] == 0
    assert summary["records_imported"] == {"assessment": 5, "patient": 5, "practitioner": 2, "treatment": 14}
    assert summary["sources"] == [normalise_source(SOURCE)]
    assert summary["files"] == ["records.ndjson", "records.rejects.ndjson", "records.report.ndjson", "records.summary.json"]
    assert "imported 26 records" in result.err


def test_transaction_bundles_to_a_document_that_converts_to_the_same_fhir(run_cli: Any, converted: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    doc_path = tmp_path / "clinic.json"
    bundles = sorted(converted["bundle"].glob("bundle-*.json"))
    assert len(bundles) > 3
    result = run_cli("import", *bundles, "--out", doc_path)  # a .json FILE means --format json
    assert result.code == 0, result.err
    doc = orjson.loads(doc_path.read_bytes())
    assert doc["source"] == normalise_source(SOURCE)
    assert [{"record_type": t, **r} for t, key in LIST_KEYS.items() for r in doc.get(key, [])] == _examples()
    summary = orjson.loads(output_paths(doc_path)["summary"].read_bytes())
    assert summary["duplicate"] > 0 and summary["mapped"] == 376  # Patients repeated in every Bundle count once
    # the strongest check: the imported document converts to the reviewed golden output, byte for byte
    assert run_cli("convert", doc_path, "--out", tmp_path / "again", "--quiet").code == 0
    for golden in GOLDEN.glob("*.ndjson"):
        assert (tmp_path / "again" / golden.name).read_bytes() == golden.read_bytes(), golden.name


def test_bulk_export_files_gzip_and_single_resources(run_cli: Any, converted: dict[str, Path], tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    for path in converted["ndjson"].glob("*.ndjson"):
        if path.name == "Observation.ndjson":
            (export / "1.Observation.ndjson.gz").write_bytes(gzip.compress(path.read_bytes()))
        elif path.name != "Patient.ndjson":
            shutil.copy(path, export / path.name)
    shutil.copy(converted["ndjson"] / "summary.json", export)  # written by convert, not FHIR: skipped
    patients = tmp_path / "patients"
    patients.mkdir()
    for i, line in enumerate((converted["ndjson"] / "Patient.ndjson").read_bytes().splitlines()):
        (patients / f"Patient-{i}.json").write_bytes(line)
    out = tmp_path / "out" / "records.ndjson.gz"
    result = run_cli("import", export, *sorted(patients.iterdir()), "--out", out, "--quiet")
    assert result.code == 0, result.err
    assert result.err == ""
    records = [orjson.loads(line) for line in gzip.decompress(out.read_bytes()).splitlines()]
    assert records == _examples()
    assert (tmp_path / "out" / "records.summary.json").exists()


def test_the_same_data_twice_is_imported_once(run_cli: Any, converted: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "records.ndjson"
    result = run_cli("import", converted["ndjson"], converted["bundle"], "--out", out, "--json")
    assert result.code == 0, result.err
    summary = orjson.loads(result.out)
    assert read_ndjson(out) == _examples()
    assert summary["duplicate_records"] == 26
    assert summary["read"] == summary["mapped"] + summary["duplicate"]


def test_foreign_fhir_is_imported_as_far_as_it_maps_and_the_rest_is_listed(run_cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "foreign.ndjson"
    result = run_cli("import", FOREIGN, "--out", out)
    assert result.code == 1
    assert [(r["record_type"], r["id"]) for r in read_ndjson(out)] == [
        ("patient", "MRN-000123"), ("practitioner", "1234567893"), ("assessment", "OBS-1"), ("treatment", "S-77")]
    paths = output_paths(out)
    rejects = read_ndjson(paths["rejects"])
    assert len(rejects) == 10
    assert all(r["problems"] and all({"path", "rule", "message"} <= set(p) for p in r["problems"]) for r in rejects)
    proc = next(r for r in rejects if r["resource"] == "Procedure/hosp-proc-1")
    assert proc["record_type"] == "treatment" and proc["record"]["sites"] == [{"muscle": "supraspinatus"}]
    assert proc["origin"] == "bundle-searchset.json#entry[0]"
    report = read_ndjson(paths["report"])
    assert len(report) == 27 and {"resource", "origin", "path", "rule", "message", "record_type", "record_id"} == set(report[0])
    summary = orjson.loads(paths["summary"].read_bytes())
    assert (summary["read"], summary["mapped"], summary["rejected"], summary["duplicate"]) == (20, 9, 10, 1)
    assert summary["records_rejected"] == 3
    assert summary["rejected_by_rule"]["not_ims"] == 3
    assert summary["report_by_rule"] == {"assumed": 15, "not_mapped": 12}
    assert "rejected 10 resources" in result.err and "27 elements not mapped or assumed" in result.err


def test_a_document_of_foreign_records_needs_a_source(run_cli: Any, tmp_path: Path) -> None:
    result = run_cli("import", FOREIGN, "--out", tmp_path / "doc.json")
    assert result.code == 2
    assert "--clinic-id and --system-base" in result.err
    assert not (tmp_path / "doc.json").exists() and not (tmp_path / "doc.rejects.ndjson").exists()
    result = run_cli("import", FOREIGN, "--out", tmp_path / "doc.json", "--clinic-id", "hosp",
                     "--system-base", "https://hospital.example.org/ims", "--quiet")
    assert result.code == 1
    doc = orjson.loads((tmp_path / "doc.json").read_bytes())
    assert doc["source"] == {"clinic_id": "hosp", "system_base": "https://hospital.example.org/ims"}
    assert [p["id"] for p in doc["patients"]] == ["MRN-000123"]


def test_a_document_holds_one_clinic(run_cli: Any, converted: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert run_cli("convert", EXAMPLES / "records.ndjson", "--out", other, "--clinic-id", "c2",
                   "--system-base", "https://other.example.org/ims", "--quiet").code == 0
    result = run_cli("import", converted["ndjson"], other, "--out", tmp_path / "doc.json")
    assert result.code == 2 and "several clinics" in result.err
    result = run_cli("import", converted["ndjson"], other, "--out", tmp_path / "doc.json",
                     "--system-base", SOURCE["system_base"], "--quiet")
    assert result.code == 1  # the other clinic's 26 records are rejected (other_source), not silently dropped
    summary = orjson.loads((tmp_path / "doc.summary.json").read_bytes())
    assert summary["rejected_by_rule"] == {"other_source": 26}
    assert summary["records_imported"]["patient"] == 5
    assert len(summary["sources"]) == 2
    both = run_cli("import", converted["ndjson"], other, "--out", tmp_path / "both.ndjson", "--quiet")
    assert both.code == 0 and len(read_ndjson(tmp_path / "both.ndjson")) == 52


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "no such file"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no FHIR files"),
    (lambda d: (d / "x.json").write_text("{not json") and d / "x.json", "not valid JSON"),
    (lambda d: (d / "x.csv").write_text("a,b\n") and d / "x.csv", "cannot tell the form"),
    (lambda d: shutil.copy(EXAMPLES / "clinic.json", d / "c.json") and d / "c.json", "ims-record/1 document"),
])
def test_unreadable_inputs_exit_2_without_a_traceback(run_cli: Any, tmp_path: Path, make: Any, message: str) -> None:
    result = run_cli("import", make(tmp_path), "--out", tmp_path / "out.ndjson")
    assert result.code == 2
    assert message in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out.ndjson").exists()


def test_output_beside_the_input_is_not_read_back(run_cli: Any, converted: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "fhir"
    shutil.copytree(converted["ndjson"], folder)
    for _ in range(2):
        result = run_cli("import", folder, "--out", folder / "records.ndjson", "--quiet")
        assert result.code == 0, result.err
    assert read_ndjson(folder / "records.ndjson") == _examples()


def test_a_bad_line_is_a_reject_and_the_rest_goes_on(run_cli: Any, converted: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "Patient.ndjson"
    bad.write_bytes((converted["ndjson"] / "Patient.ndjson").read_bytes() + b'{"resourceType": "Patient", \n\n')
    result = run_cli("import", bad, "--out", tmp_path / "p.ndjson", "--quiet")
    assert result.code == 1
    assert len(read_ndjson(tmp_path / "p.ndjson")) == 5
    [reject] = read_ndjson(tmp_path / "p.rejects.ndjson")
    assert reject["origin"] == "Patient.ndjson:6" and reject["problems"][0]["rule"] == "invalid_json"
