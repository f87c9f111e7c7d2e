"""What a new user meets on the command line: help for every option, folders created, clear
one-line errors (exit 2, no traceback) and counts that agree with their nouns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson
import pytest

from ims_fhir.cli import _count, cli


@pytest.mark.parametrize("command", ["convert", "push", "pull", "import"])
def test_every_option_has_help(command: str) -> None:
    cmd = cli.commands[command]
    undocumented = [p.name for p in cmd.params if isinstance(p, click.Option) and not p.help]
    assert undocumented == []


def test_server_is_marked_required_in_push_and_pull_help(run_cli: Any) -> None:
    push_help = run_cli("push", "--help").out
    assert "[required unless --dry-run]" in " ".join(push_help.split())
    pull_help = run_cli("pull", "--help").out
    server_help = " ".join(pull_help.split("--server", 1)[1].split("--auth", 1)[0].split())
    assert "[required]" in server_help


def test_schema_creates_the_output_folder(run_cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "missing" / "dir" / "x.json"
    result = run_cli("schema", "--out", out)
    assert result.code == 0, result.err
    assert orjson.loads(out.read_bytes())["$schema"].startswith("https://json-schema.org/")


def test_schema_into_an_unwritable_place_is_one_line(run_cli: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("schema", "--out", blocker / "x.json")
    assert result.code == 2
    assert "cannot write" in result.err and "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1


def test_a_folder_without_a_table_is_an_error(run_cli: Any, source_args: list[str], tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "notes.txt").write_text("nothing here\n")
    result = run_cli("convert", folder, "--out", tmp_path / "out", *source_args)
    assert result.code == 2
    assert "no CSV table" in result.err and "patients.csv" in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1


def test_counts_agree_with_their_nouns(run_cli: Any, source_args: list[str], tmp_path: Path) -> None:
    assert [_count(0, "record"), _count(1, "record"), _count(1200, "record")] == ["0 records", "1 record", "1,200 records"]
    assert [_count(1, "entry", "entries"), _count(2, "entry", "entries")] == ["1 entry", "2 entries"]
    one = tmp_path / "one.ndjson"
    one.write_text('{"record_type": "practitioner", "id": "PR1", "family_name": "Example"}\n')
    result = run_cli("convert", one, "--out", tmp_path / "out", *source_args)
    assert result.code == 0, result.err
    assert "converted 1 of 1 record into " in result.err
    resources = sum(orjson.loads((tmp_path / "out" / "summary.json").read_bytes())["resources"].values())
    assert f"into {resources} resource{'s' if resources != 1 else ''} in" in result.err


def test_a_full_disk_is_a_one_line_error(run_cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine failing under convert (ENOSPC while writing) ends with exit 2 and one line
    naming the file, not a traceback (found at 1M records on a full /tmp)."""
    import errno

    from ims_fhir.convert import FileSink

    def full(self: Any, resource: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "Patient.ndjson"))

    monkeypatch.setattr(FileSink, "resource", full)
    result = run_cli("convert", Path(__file__).parent.parent / "examples" / "clinic-small" / "clinic.json",
                     "--out", tmp_path / "out")
    assert result.code == 2
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and "Patient.ndjson" in lines[0]
