"""The import run behind ``ims-fhir import``: FHIR files -> ``ims-record/1`` records.

Inputs (any mix, several allowed):

- a folder: every ``*.ndjson``, ``*.ndjson.gz`` and ``*.json`` file in it (not in
  subfolders), in name order -- the NDJSON folder ``ims-fhir convert`` writes, a Bulk Data
  ``$export`` download (``Patient.ndjson``, ``1.Observation.ndjson``...), the Bundles of
  ``convert --format bundle``. The files the converter and this command write beside
  their output (``rejects.ndjson``, ``summary.json``, ``*.rejects.ndjson``,
  ``*.report.ndjson``, ``*.summary.json``) are not FHIR and are skipped;
- an NDJSON file (``.ndjson``, ``.ndjson.gz``, ``.jsonl``): one resource per line, a line
  may be a Bundle; a line that is not JSON is a reject, the rest goes on;
- a JSON file: one resource, a Bundle of any type (transaction, batch, collection,
  searchset, history...), or a JSON list of them. A JSON file that cannot be parsed, or
  an ``ims-record/1`` document, is an input error (exit 2).

Outputs, beside ``--out FILE`` (``records.ndjson`` -> ``records.rejects.ndjson``...):

- ``FILE``: the records, NDJSON with ``record_type`` first, or a JSON document (``--format
  json``, or a ``.json`` FILE) whose ``source`` is the clinic's Organization (or the
  ``--clinic-id`` / ``--system-base`` given); every record has passed the record models;
- ``FILE.rejects.ndjson``: one line per resource that could not be mapped and per
  rebuilt record that failed the models (with the partial record), every reason listed;
- ``FILE.report.ndjson``: one line per element not mapped or value assumed;
- ``FILE.summary.json``: resources read, mapped, rejected and duplicate (read = the
  other three), records per type, rejects per rule, report items per rule, sources.

Exit codes as for ``convert``: 0 nothing rejected, 1 something rejected (the report
alone does not count), 2 usage error or unreadable input. The resource set is indexed in
a temporary SQLite file, so memory stays bounded whatever the input size.
"""

from __future__ import annotations

import gzip
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from .errors import InputError, Problem, UsageError
from .importing import ReverseRun
from .mapping.reverse import ImportedRecord, ReportItem
from .mapping.reverse.resources import dumps
from .records.writers import write_json_document, write_ndjson
from .rejects import Rejected
from .terminology import Terminology, default_terminology

OUTPUT_FORMATS = ("ndjson", "json")
_SKIPPED = re.compile(r"^(rejects\.ndjson|summary\.json|.*\.rejects\.ndjson|.*\.report\.ndjson|.*\.summary\.json)$")
_NDJSON = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")


@dataclass(frozen=True)
class ImportOptions:
    out_file: Path
    #: "ndjson" or "json"; None: json when FILE ends in .json, else ndjson
    output_format: str | None = None
    #: clinic_id / system_base / clinic_name from the command line
    source: dict[str, Any] | None = None
    temp_dir: str | None = None
    #: keep only the records this accepts (``pull --since``: the records that changed)
    record_filter: Callable[[str, str], bool] | None = None


@dataclass
class ImportSummary:
    inputs: list[str] = field(default_factory=list)
    output_format: str = "ndjson"
    read: int = 0
    mapped: int = 0
    rejected: int = 0
    duplicate: int = 0
    records: dict[str, int] = field(default_factory=dict)
    records_rejected: int = 0
    duplicate_records: int = 0
    rejected_by_rule: dict[str, int] = field(default_factory=dict)
    report_by_rule: dict[str, int] = field(default_factory=dict)
    sources: list[dict[str, str]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.rejected else 0

    @property
    def imported(self) -> int:
        return sum(self.records.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "output_format": self.output_format,
            "read": self.read,
            "mapped": self.mapped,
            "rejected": self.rejected,
            "duplicate": self.duplicate,
            "records_imported": dict(sorted(self.records.items())),
            "records_rejected": self.records_rejected,
            "duplicate_records": self.duplicate_records,
            "rejected_by_rule": dict(sorted(self.rejected_by_rule.items())),
            "report_by_rule": dict(sorted(self.report_by_rule.items())),
            "sources": self.sources,
            "files": sorted(self.files),
        }


def output_paths(out_file: Path) -> dict[str, Path]:
    """Where the records, rejects, report and summary of ``--out FILE`` go."""
    name = out_file.name
    for suffix in (*_NDJSON, ".json"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    parent = out_file.parent
    return {"records": out_file, "rejects": parent / f"{name}.rejects.ndjson",
            "report": parent / f"{name}.report.ndjson", "summary": parent / f"{name}.summary.json"}


# ---------------------------------------------------------------------------------------
# reading


@dataclass(slots=True)
class FhirItem:
    """One thing read from an input: a resource (or Bundle), or why a line is unreadable."""

    resource: Any
    origin: str
    problem: Problem | None = None


def fhir_files(path: Path, *, exclude: set[Path] | None = None) -> list[Path]:
    """The files of one input (a folder expands to its FHIR files, in name order)."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder", source=str(path))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _is_fhir_name(p.name)
                       and p.resolve() not in (exclude or set()))
        if not files:
            raise InputError(f"{path}: no FHIR files (.ndjson, .ndjson.gz or .json) in this folder", source=str(path))
        return files
    if not _is_fhir_name(path.name) and not path.name.lower().endswith(".json"):
        raise InputError(f"{path}: cannot tell the form of this input (expected .ndjson, .ndjson.gz or .json, or a "
                         "folder of them)", source=str(path))
    return [path]


def _is_fhir_name(name: str) -> bool:
    lower = name.lower()
    return lower.endswith((*_NDJSON, ".json")) and not _SKIPPED.match(name)


def read_fhir_file(path: Path) -> Iterator[FhirItem]:
    """Resources (and Bundles) of one file, each with its origin (``file:line`` or ``file``)."""
    lower = path.name.lower()
    if lower.endswith(_NDJSON):
        yield from _read_ndjson(path)
        return
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})", source=str(path)) from exc
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})", source=str(path)) from exc
    if isinstance(data, dict) and data.get("format") == "ims-record/1":
        raise InputError(f"{path}: an ims-record/1 document, not FHIR (use `ims-fhir convert` for it)", source=str(path))
    if isinstance(data, list):
        for i, item in enumerate(data):
            yield FhirItem(item, f"{path.name}[{i}]")
    else:
        yield FhirItem(data, path.name)


def _read_ndjson(path: Path) -> Iterator[FhirItem]:
    opener: Callable[..., IO[bytes]] = gzip.open if path.name.lower().endswith(".gz") else open  # type: ignore[assignment]
    try:
        with opener(path, "rb") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                origin = f"{path.name}:{number}"
                try:
                    yield FhirItem(orjson.loads(line), origin)
                except orjson.JSONDecodeError as exc:
                    yield FhirItem(None, origin, Problem("(line)", "invalid_json", f"not valid JSON: {exc}"))
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})", source=str(path)) from exc


# ---------------------------------------------------------------------------------------
# the run


def choose_source(found: dict[str, dict[str, str]], given: dict[str, Any] | None) -> dict[str, str]:
    """The source of a JSON document: the one given, completed from the clinic's Organization."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if given.get("system_base"):
        base = str(given["system_base"]).rstrip("/")
        source = {**found.get(base, {}), **given, "system_base": given["system_base"]}
        if "clinic_id" not in source:
            raise UsageError(f"no clinic Organization for {base} in the input: give --clinic-id as well")
        return {k: source[k] for k in ("clinic_id", "clinic_name", "system_base", "country", "jurisdiction") if k in source}
    if len(found) == 1:
        source = {**next(iter(found.values())), **given}
        return {k: source[k] for k in ("clinic_id", "clinic_name", "system_base", "country", "jurisdiction") if k in source}
    if not found:
        raise UsageError("the input has no clinic Organization ({system_base}/organization) to take the document's "
                         "source from: give --clinic-id and --system-base, or use --format ndjson")
    raise UsageError("the input holds records of several clinics (" + ", ".join(sorted(found)) + "): give "
                     "--system-base to choose one, or use --format ndjson")


class _Sink:
    """rejects.ndjson and report.ndjson, written under temporary names and renamed when complete."""

    def __init__(self, paths: dict[str, Path], summary: ImportSummary) -> None:
        self.paths = paths
        self.summary = summary
        self.tmp = {k: paths[k].with_name(paths[k].name + ".tmp") for k in ("rejects", "report")}
        self.files = {k: open(p, "wb", buffering=1 << 20) for k, p in self.tmp.items()}

    def reject(self, reject: Rejected) -> None:
        s = self.summary
        if reject.record_type is not None:
            s.records_rejected += 1
        for rule in {p.rule for p in reject.problems}:
            s.rejected_by_rule[rule] = s.rejected_by_rule.get(rule, 0) + 1
        self.files["rejects"].write(dumps(reject.as_dict()) + b"\n")

    def report(self, item: ReportItem) -> None:
        self.summary.report_by_rule[item.rule] = self.summary.report_by_rule.get(item.rule, 0) + 1
        self.files["report"].write(dumps(item.as_dict()) + b"\n")

    def close(self, *, keep: bool) -> None:
        for key, fh in self.files.items():
            fh.close()
            if keep:
                os.replace(self.tmp[key], self.paths[key])
                self.summary.files.append(self.paths[key].name)
            else:
                self.tmp[key].unlink(missing_ok=True)


class Importer:
    """One import run. Use :func:`import_fhir` unless you need the pieces."""

    def __init__(self, options: ImportOptions, *, terminology: Terminology | None = None,
                 progress: Callable[[int, int], None] | None = None) -> None:
        fmt = options.output_format or ("json" if options.out_file.name.lower().endswith(".json") else "ndjson")
        if fmt not in OUTPUT_FORMATS:
            raise UsageError(f"unknown output format {fmt!r} (expected ndjson or json)")
        self.options = options
        self.format = fmt
        self.term = terminology or default_terminology()
        self.progress = progress
        self.summary = ImportSummary(output_format=fmt)
        #: resources of records rejected here (another clinic's, in a JSON document)
        self._moved = 0

    def run(self, paths: list[Path]) -> ImportSummary:
        if not paths:
            raise UsageError("no input given")
        out = output_paths(self.options.out_file)
        exclude = {p.resolve() for p in out.values()}
        files = [f for p in paths for f in fhir_files(p, exclude=exclude)]  # every input checked before any output
        return self.run_items((item for path in files for item in read_fhir_file(path)), [str(p) for p in paths])

    def run_items(self, items: Iterable[FhirItem], inputs: list[str]) -> ImportSummary:
        """Import a stream of resources (``pull`` feeds what it fetches straight in)."""
        opts, summary = self.options, self.summary
        summary.inputs = inputs
        out = output_paths(opts.out_file)
        try:
            opts.out_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{opts.out_file.parent}: cannot create the output folder ({exc.strerror or exc})") from exc
        fd, db_path = tempfile.mkstemp(prefix="ims-fhir-import-", suffix=".sqlite", dir=opts.temp_dir)
        os.close(fd)
        db = sqlite3.connect(db_path, isolation_level=None)
        run = ReverseRun(self.term, system_base=(opts.source or {}).get("system_base"), db=db)
        try:
            self._load(run, items)
            run.prepare()
            source = choose_source(run.sources, opts.source) if self.format == "json" else None
            sink = _Sink(out, summary)
            ok = False
            try:
                records = self._records(run, sink, source)
                if source is not None:
                    write_json_document(out["records"], source, records)
                else:
                    write_ndjson(out["records"], records)
                summary.files.append(out["records"].name)
                ok = True
            finally:
                sink.close(keep=ok)
            counts = run.counts()
        finally:
            run.close()
            try:
                os.unlink(db_path)
            except OSError:
                pass
        summary.read = counts["read"]
        summary.duplicate = counts["duplicate"]
        summary.rejected = counts["rejected"] + self._moved
        summary.mapped = counts["mapped"] - self._moved
        summary.duplicate_records = run.duplicate_records
        summary.sources = [run.sources[b] for b in sorted(run.sources)]
        summary.files.append(out["summary"].name)
        out["summary"].write_bytes(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        return summary

    def _load(self, run: ReverseRun, items: Iterable[FhirItem]) -> None:
        n = 0
        for item in items:
            if item.problem is not None:
                run.add_unreadable(item.origin, item.origin, item.problem)
            else:
                run.add(item.resource, item.origin)
            n += 1
            if self.progress is not None and n % 1000 == 0:
                self.progress(n, 0)

    def _records(self, run: ReverseRun, sink: _Sink, source: dict[str, str] | None) -> Iterator[tuple[str, dict[str, Any]]]:
        base = source["system_base"].rstrip("/") if source else None
        for outcome in run.outcomes():
            if isinstance(outcome, ReportItem):
                sink.report(outcome)
            elif isinstance(outcome, Rejected):
                sink.reject(outcome)
            elif isinstance(outcome, ImportedRecord):
                keep = self.options.record_filter
                if keep is not None and not keep(outcome.record_type, outcome.id):
                    continue  # fetched only to resolve references
                if base is not None and outcome.system_base not in (None, base):
                    self._moved += len(outcome.resources)
                    sink.reject(Rejected(outcome.record_type, outcome.id, outcome.origin, (Problem(
                        "(record)", "other_source", f"a record of the clinic {outcome.system_base}, not of the "
                        f"document's source {base} (use --format ndjson to import every clinic)"),),
                        resource=outcome.resources[0], record=outcome.data, resources=outcome.resources))
                    continue
                self.summary.records[outcome.record_type] = self.summary.records.get(outcome.record_type, 0) + 1
                yield outcome.record_type, outcome.data


def import_fhir(paths: list[Path], options: ImportOptions, *, terminology: Terminology | None = None,
                progress: Callable[[int, int], None] | None = None) -> ImportSummary:
    """Import FHIR files into ``options.out_file``; returns the run's summary."""
    return Importer(options, terminology=terminology, progress=progress).run(paths)


def import_items(items: Iterable[FhirItem], inputs: list[str], options: ImportOptions, *,
                 terminology: Terminology | None = None) -> ImportSummary:
    """Import a stream of resources (each with its origin) into ``options.out_file``."""
    return Importer(options, terminology=terminology).run_items(items, inputs)


__all__ = ["FhirItem", "ImportOptions", "ImportSummary", "Importer", "choose_source", "fhir_files", "import_fhir", "import_items",
           "output_paths", "read_fhir_file"]
