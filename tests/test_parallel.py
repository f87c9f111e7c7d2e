"""``convert --jobs N``: the output is byte-identical to ``--jobs 1`` for every form and format."""

from __future__ import annotations

import filecmp
import gzip
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ims_fhir.dev.synthetic import generate
from ims_fhir.parallel import _ndjson_shard, _Shard, _shards
from ims_fhir.records.readers import open_input
from ims_fhir.records.writers import write_ndjson
from tests.conftest import EXAMPLES, SOURCE

BAD = EXAMPLES.parent / "bad" / "records.ndjson"
SOURCE_ARGS = ["--clinic-id", SOURCE["clinic_id"], "--system-base", SOURCE["system_base"]]


class _Tree(dict[str, Path]):
    """The files of an output folder (hidden scratch folders would show up too), read on demand."""

    def bytes(self, name: str) -> bytes:
        return self[name].read_bytes()


def _run(run_cli: Any, inputs: list[Path], out: Path, *extra: str) -> tuple[int, _Tree]:
    needs_source = any(p.suffix in (".ndjson", ".gz") for p in inputs)
    result = run_cli("convert", *inputs, "--out", out, "--quiet", *extra, *(SOURCE_ARGS if needs_source else []))
    assert result.code in (0, 1), result.err
    return result.code, _Tree((p.name, p) for p in sorted(out.iterdir()))


def _same_as_one_job(run_cli: Any, tmp_path: Path, inputs: list[Path], *extra: str, jobs: tuple[int, ...] = (2,)) -> _Tree:
    code, one = _run(run_cli, inputs, tmp_path / "jobs-1", *extra)
    for n in jobs:
        code_n, many = _run(run_cli, inputs, tmp_path / f"jobs-{n}", *extra, "--jobs", str(n))
        assert code_n == code
        assert sorted(many) == sorted(one), f"--jobs {n} wrote other files"
        for name in one:
            assert filecmp.cmp(many[name], one[name], shallow=False), f"--jobs {n}: {name} differs from --jobs 1"
    return one


INPUTS = {
    "json": [EXAMPLES / "clinic.json"],
    "ndjson": [EXAMPLES / "records.ndjson"],
    "csv": [EXAMPLES / "csv"],
    "bad": [BAD],
}


@pytest.mark.parametrize("fmt", ["ndjson", "bundle"])
@pytest.mark.parametrize("form", sorted(INPUTS))
def test_examples_identical_with_two_jobs(run_cli: Any, tmp_path: Path, form: str, fmt: str) -> None:
    one = _same_as_one_job(run_cli, tmp_path, INPUTS[form], "--format", fmt, "--bundle-size", "40")
    summary = orjson.loads(one.bytes("summary.json"))
    assert summary["read"] >= 10
    if form == "bad":
        assert summary["rejected"] > 3 and one.bytes("rejects.ndjson").count(b"\n") == summary["rejected"]
    if fmt == "bundle" and form != "bad":
        assert summary["bundles"] > 1
    if fmt == "ndjson" and form != "bad":  # the first pass ran in the workers: sessions name the diagnoses
        assert one.bytes("Procedure.ndjson").count(b'"reference":"Condition/') == 4


def _reversed_and_repeated(tmp_path: Path) -> list[Path]:
    """Treatments before their patients (held back in bundle mode), ids repeated across
    shards and inputs (duplicates), a gzip input, and blank lines."""
    lines = (EXAMPLES / "records.ndjson").read_bytes().splitlines(keepends=True)
    rev = tmp_path / "reversed.ndjson"
    rev.write_bytes(b"".join(reversed(lines[:40])) + b"\n\n" + b"".join(reversed(lines[40:])))
    gz = tmp_path / "again.ndjson.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(b"".join(lines[::3]) + BAD.read_bytes())
    return [rev, gz, BAD]


@pytest.mark.parametrize("fmt", ["ndjson", "bundle"])
def test_later_patients_duplicates_and_several_inputs(run_cli: Any, tmp_path: Path, fmt: str) -> None:
    inputs = _reversed_and_repeated(tmp_path)
    one = _same_as_one_job(run_cli, tmp_path, inputs, "--format", fmt, "--bundle-size", "30", jobs=(2, 3))
    rejects = [orjson.loads(line) for line in one.bytes("rejects.ndjson").splitlines()]
    duplicates = [r for r in rejects if any(p["rule"] == "duplicate_id" for p in r["problems"])]
    assert len(duplicates) >= 10
    # the duplicate of a record in another input names the first occurrence
    assert any("reversed.ndjson:" in p["message"] for r in duplicates if r["origin"].startswith("again") for p in r["problems"])
    # the sessions come before their assessment (reversed), in another shard: they name its diagnoses all the same
    if fmt == "ndjson":
        assert one.bytes("Procedure.ndjson").count(b'"reference":"Condition/') == 4


def test_strict_refs_identical(run_cli: Any, tmp_path: Path) -> None:
    records = [orjson.loads(line) for line in (EXAMPLES / "records.ndjson").read_bytes().splitlines()]
    orphan = next(r for r in records if r["record_type"] == "treatment") | {"id": "T-ORPHAN", "patient_id": "P-NOBODY"}
    extra = tmp_path / "extra.ndjson"
    extra.write_bytes(orjson.dumps(orphan) + b"\n")
    # the orphan comes first: its reference is checked against ids the other shards find
    one = _same_as_one_job(run_cli, tmp_path, [extra, EXAMPLES / "records.ndjson"], "--strict-refs", jobs=(2,))
    summary = orjson.loads(one.bytes("summary.json"))
    assert summary["rejected_by_rule"] == {"unresolved_reference": 1}
    assert summary["converted"] == len(records)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("jobs", [2, 3, 7])
def test_ndjson_shards_read_every_record_once(tmp_path: Path, gz: bool, jobs: int) -> None:
    lines = (EXAMPLES / "records.ndjson").read_bytes().splitlines(keepends=True)
    body = b"\n" + b"".join(lines[:9]) + b"   \n" + b"".join(lines[9:]) + b"{not json\n" + lines[0].rstrip(b"\n")
    path = tmp_path / ("in.ndjson.gz" if gz else "in.ndjson")
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(body)
    else:
        path.write_bytes(body)
    whole = [(r.record_type, r.data, r.origin, r.problems) for r in open_input(path).records]
    shards = _shards(path, "ndjson", jobs, None)
    assert shards[-1].stop is None and shards[0].start == 0
    parts = [[(r.record_type, r.data, r.origin, r.problems) for r in _ndjson_shard(path, s)] for s in shards]
    assert sum(parts, []) == whole
    assert sum(1 for p in parts if p) >= 2  # the work really is shared
    # a wrong size estimate (here: none at all) can unbalance the shards, never lose a record
    assert [r.origin for r in _ndjson_shard(path, _Shard("bytes", 0, None))] == [w[2] for w in whole]


def test_bad_jobs_value_is_a_usage_error(run_cli: Any, tmp_path: Path) -> None:
    result = run_cli("convert", EXAMPLES / "clinic.json", "--out", tmp_path / "o", "--jobs", "0")
    assert result.code == 2
    assert "--jobs" in result.err


def test_unreadable_input_in_a_worker_is_one_clear_error(run_cli: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.ndjson.gz"
    with gzip.open(broken, "wb") as fh:
        fh.write((EXAMPLES / "records.ndjson").read_bytes() * 20)
    broken.write_bytes(broken.read_bytes()[:-400])  # truncated: the worker reading the end fails
    result = run_cli("convert", broken, "--out", tmp_path / "o", "--jobs", "2", *SOURCE_ARGS)
    assert result.code == 2
    assert "broken.ndjson.gz: cannot read" in result.err
    assert "Traceback" not in result.err
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.startswith(".ims-fhir-jobs-")]


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 200,000 generated records, a few broken lines among them."""
    path = tmp_path_factory.mktemp("big") / "export.ndjson"

    def records() -> Iterator[tuple[str, dict[str, Any]]]:  # streamed: the test stays small in memory
        for i, record in enumerate(generate(25_000, seed=12, practitioners=5)):
            if i == 1000:
                yield "treatment", {"id": "T-BROKEN", "patient_id": "nobody", "status": "sideways"}
            if i == 150_000:
                yield "assessment", {"id": "A-BROKEN", "pain": {"nrs": 12}}
            yield record

    write_ndjson(path, records())
    with path.open("ab") as fh:
        fh.write(b'{"record_type": "patient", "id": \n')
    return path


def test_generated_200k_identical_with_two_jobs(run_cli: Any, tmp_path: Path, big_input: Path) -> None:
    started = time.monotonic()
    one = _same_as_one_job(run_cli, tmp_path, [big_input])
    summary = orjson.loads(one.bytes("summary.json"))
    assert summary["read"] >= 200_000
    assert summary["rejected"] == 3
    print(f"200k --jobs 1 and --jobs 2 compared in {time.monotonic() - started:.1f} s")
