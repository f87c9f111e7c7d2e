"""``ims_fhir.spark`` on a real local Spark (``local[2]``): the same resources and rejects as ``convert``."""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pyspark.sql import SparkSession

from ims_fhir.dev.synthetic import generate
from ims_fhir.records.writers import write_ndjson
from ims_fhir.spark import SparkOptions, convert_dataset, main
from tests.conftest import EXAMPLES, SOURCE

# one Spark per test session: under pytest-xdist every test of this file goes to the same worker
pytestmark = pytest.mark.xdist_group("spark-local")

BAD = EXAMPLES.parent / "bad" / "records.ndjson"
OPTIONS = SparkOptions(SOURCE["clinic_id"], SOURCE["system_base"], SOURCE.get("clinic_name"))
SOURCE_ARGS = ["--clinic-id", SOURCE["clinic_id"], "--system-base", SOURCE["system_base"]]
if SOURCE.get("clinic_name"):
    SOURCE_ARGS += ["--clinic-name", SOURCE["clinic_name"]]


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One local Spark for the test session, small enough for a shared machine."""
    os.environ["PYSPARK_PYTHON"] = sys.executable  # executors run this very environment
    session = (SparkSession.builder.master("local[2]").appName("ims-fhir tests")
               .config("spark.driver.memory", "1g").config("spark.sql.shuffle.partitions", "4")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _convert(run_cli: Any, inputs: list[Path], out: Path, *extra: str) -> dict[str, list[bytes]]:
    result = run_cli("convert", *inputs, "--out", out, "--quiet", *SOURCE_ARGS, *extra)
    assert result.code in (0, 1), result.err
    return {p.name.removesuffix(".ndjson"): sorted(p.read_bytes().splitlines())
            for p in out.glob("*.ndjson") if p.stat().st_size}


def _spark_output(out: Path) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for folder in out.glob("dataset=*"):
        lines = [line for part in sorted(folder.glob("part-*")) for line in part.read_bytes().splitlines()]
        found[folder.name.removeprefix("dataset=")] = sorted(lines)
    return found


def _assert_same(spark_out: dict[str, list[bytes]], convert_out: dict[str, list[bytes]]) -> None:
    assert sorted(spark_out) == sorted(convert_out)
    for name, lines in convert_out.items():
        assert spark_out[name] == lines, f"{name} differs from convert"


def _tricky_inputs(tmp_path: Path) -> list[Path]:
    """Treatments before their patients, ids repeated across files (duplicates), gzip, blank lines, the bad examples."""
    lines = (EXAMPLES / "records.ndjson").read_bytes().splitlines(keepends=True)
    rev = tmp_path / "reversed.ndjson"
    rev.write_bytes(b"".join(reversed(lines)) + b"\n  \n")
    gz = tmp_path / "again.ndjson.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(b"".join(lines[::3]) + BAD.read_bytes())
    return [rev, gz, BAD]


def test_examples_give_the_same_resources_and_rejects(spark: SparkSession, run_cli: Any, tmp_path: Path) -> None:
    inputs = _tricky_inputs(tmp_path)
    expected = _convert(run_cli, inputs, tmp_path / "convert")
    result = convert_dataset(spark, OPTIONS, paths=[str(p) for p in inputs], partitions=3)
    result.write(str(tmp_path / "spark"))
    found = _spark_output(tmp_path / "spark")
    _assert_same(found, expected)
    rules = {p["rule"] for line in found["rejects"] for p in orjson.loads(line)["problems"]}
    assert {"duplicate_id", "malformed_json", "unknown_field"} <= rules
    # sessions (before their assessment here) name its diagnoses, joined on across partitions
    assert sum(line.count(b'"reference":"Condition/') for line in found["Procedure"]) == 4
    # the DataFrames give the same
    assert result.rejects.count() == len(expected["rejects"])
    by_type: dict[str, int] = dict(result.resources.groupBy("resourceType").count().collect())
    assert by_type == {t: len(lines) for t, lines in expected.items() if t != "rejects"}


def test_generated_input_with_broken_records(spark: SparkSession, run_cli: Any, tmp_path: Path) -> None:
    records = list(generate(1000, seed=5, practitioners=4))
    records[700:700] = [("treatment", {"id": "T-BROKEN", "patient_id": "nobody", "status": "sideways"})]
    records.append(records[6000])  # a duplicate far from its first occurrence
    path = tmp_path / "export.ndjson"
    write_ndjson(path, records)
    expected = _convert(run_cli, [path], tmp_path / "convert")
    assert len(expected["rejects"]) == 2
    convert_dataset(spark, OPTIONS, paths=[str(path)], partitions=4).write(str(tmp_path / "spark"))
    _assert_same(_spark_output(tmp_path / "spark"), expected)


def test_a_dataframe_of_records(spark: SparkSession, run_cli: Any, tmp_path: Path) -> None:
    expected = _convert(run_cli, [EXAMPLES / "records.ndjson"], tmp_path / "convert")
    frame = spark.read.json(str(EXAMPLES / "records.ndjson"))
    result = convert_dataset(spark, OPTIONS, frame=frame)
    result.write(str(tmp_path / "spark"))
    _assert_same(_spark_output(tmp_path / "spark"), expected)


def test_a_dataframe_reject_names_its_row(spark: SparkSession, tmp_path: Path) -> None:
    frame = spark.createDataFrame([("patient", "P1", "Testperson"), ("patient", "P1", "Again"), ("visit", "V1", None)],
                                  "record_type string, id string, family_name string")
    result = convert_dataset(spark, OPTIONS, frame=frame, name="visits")
    rejects = sorted((orjson.loads(r.reject) for r in result.rejects.collect()), key=lambda r: r["origin"])
    assert [(r["origin"], r["problems"][0]["rule"]) for r in rejects] == [
        ("visits:2", "duplicate_id"), ("visits:3", "unknown_record_type")]
    assert "visits:1" in rejects[0]["problems"][0]["message"]


def test_command_line_with_a_folder(spark: SparkSession, run_cli: Any, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a-bad.ndjson").write_bytes(BAD.read_bytes())
    (folder / "b-records.ndjson").write_bytes((EXAMPLES / "records.ndjson").read_bytes())
    expected = _convert(run_cli, [folder / "a-bad.ndjson", folder / "b-records.ndjson"], tmp_path / "convert")
    out = tmp_path / "out"
    assert main([str(folder), "--out", str(out), *SOURCE_ARGS]) == 0
    assert (out / "_SUCCESS").exists()
    _assert_same(_spark_output(out), expected)  # line numbers per file, duplicates in file order
    assert main([str(EXAMPLES / "records.ndjson"), "--out", str(out), *SOURCE_ARGS]) != 0  # exists: not overwritten
    assert main([str(EXAMPLES / "records.ndjson"), "--out", str(tmp_path / "o2"), "--clinic-id", "c",
                 "--system-base", "not a uri"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_command_line_country_and_cpt_as_convert(spark: SparkSession, run_cli: Any, tmp_path: Path) -> None:
    """--country US adds CPT as in convert; --no-cpt leaves it out even then."""
    records = EXAMPLES / "records.ndjson"
    cpt = b"http://www.ama-assn.org/go/cpt"
    for name, extra in (("us", ["--country", "US"]), ("us-no-cpt", ["--country", "US", "--no-cpt"])):
        expected = _convert(run_cli, [records], tmp_path / f"convert-{name}", *extra)
        assert any(cpt in line for line in expected["Procedure"]) == (name == "us")
        assert main([str(records), "--out", str(tmp_path / name), *SOURCE_ARGS, *extra]) == 0
        _assert_same(_spark_output(tmp_path / name), expected)
