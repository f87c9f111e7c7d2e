"""Shared fixtures: the examples, a default source and a CLI runner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ims_fhir.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "clinic-small"
#: the source the examples were exported with (the NDJSON form needs it on the command line)
SOURCE = orjson.loads((EXAMPLES / "csv" / "source.json").read_bytes())

#: the PostgreSQL server and the storage fixtures (``storage_url`` runs a test on both storages)
pytest_plugins = ["tests.postgres"]


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


@pytest.fixture
def source_args() -> list[str]:
    return ["--clinic-id", SOURCE["clinic_id"], "--clinic-name", SOURCE["clinic_name"], "--system-base", SOURCE["system_base"],
            "--country", SOURCE["country"], "--jurisdiction", SOURCE["jurisdiction"]]


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own XDG state directory: ``ims-fhir push`` keeps its identity map there,
    and a map left by another test (against a server since emptied) would name resources that
    are gone."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    def run(*args: Any) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def write_ndjson(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def output_resources(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return {p.stem: read_ndjson(p) for p in sorted(out_dir.glob("*.ndjson")) if p.name != "rejects.ndjson"}
