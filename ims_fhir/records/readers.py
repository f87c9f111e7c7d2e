"""Readers for the three physical forms of ``ims-record/1``.

Each reader turns one input (a JSON document, an NDJSON file, plain or gzip, or a CSV
folder) into a stream of :class:`RawRecord`: the record type, the record as a plain
dict in the JSON-document shape, its *origin* (``file:line``, ``file.csv:line`` or
``file.json:patients[3]``) and any problem found while reading it (a malformed line, a
CSV cell that cannot be split). Validation happens later, the same way for every form,
so that the three forms of the same content give the same records.

NDJSON and CSV are read in constant memory: NDJSON line by line; a CSV folder streams
its parent tables while the child tables (findings, sites, adverse events) are indexed
by parent id in a temporary SQLite file on disk. A whole input that cannot be read is an
:class:`~ims_fhir.errors.InputError`; a bad record is never an exception.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError, Problem
from . import vocabulary as v
from .vocabulary import CSV_TABLES

#: kind of an assessment_findings.csv row -> (record list, field the code goes to, other columns that apply)
FINDING_KINDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pain_location": ("locations", "region", ("side",)),
    "neuropathic_sign": ("neuropathic_signs", "sign", ("present", "segment", "side", "note")),
    "palpation": ("palpation", "muscle", ("side", "segment", "tender", "taut_band", "trigger_point", "note")),
    "range_of_motion": ("range_of_motion", "movement", ("side", "degrees", "painful")),
    "outcome_measure": ("outcome_measures", "instrument", ("score",)),
    # the diagnosis text is in `note` (renamed to `text` below); `system` is the optional last column
    "diagnosis": ("diagnoses", "code", ("note", "system")),
}

_INT_COLUMNS = {"pain_nrs", "session_number", "series_total", "pain_before_nrs", "pain_after_nrs", "insertions"}
_FLOAT_COLUMNS = {"pain_duration_weeks", "degrees", "score", "needle_diameter_mm", "needle_length_mm",
                  "estim_frequency_hz", "estim_duration_min"}
_BOOL_COLUMNS = {"ims_certified", "candidacy_suitable", "consent_obtained", "present", "tender", "taut_band",
                 "trigger_point", "painful"}
_LIST_COLUMNS = {"given_names", "contraindications"}
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}
_INT_RE = re.compile(r"[+-]?\d+")


@dataclass(slots=True)
class RawRecord:
    """One record as read, before validation."""

    record_type: str | None
    data: Any
    origin: str
    problems: list[Problem] = field(default_factory=list)
    #: for CSV: "list[index]" path prefix -> origin of the child row it came from
    child_origins: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Input:
    """An opened input: its declared source (if the form carries one) and its records."""

    path: Path
    form: str  # "json", "ndjson" or "csv"
    source: dict[str, Any] | None
    records: Iterator[RawRecord]


def detect_form(path: Path) -> str:
    if path.is_dir():
        return "csv"
    name = path.name.lower()
    if name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")):
        return "ndjson"
    if name.endswith(".json"):
        return "json"
    raise InputError(f"{path}: cannot tell the form of this input (expected a .json document, "
                     f".ndjson / .ndjson.gz file, or a CSV folder)", source=str(path))


def open_input(path: Path | str, *, lenient: bool = False, temp_dir: str | None = None) -> Input:
    """Open one input of any form. Raises InputError if it cannot be read at all."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder", source=str(path))
    form = detect_form(path)
    if form == "json":
        source, records = _read_json_document(path, lenient=lenient)
        return Input(path, form, source, records)
    if form == "ndjson":
        _check_readable(path)
        return Input(path, form, None, _read_ndjson(path))
    source = _read_source_json(path / "source.json") if (path / "source.json").exists() else None
    return Input(path, form, source, _read_csv_folder(path, lenient=lenient, temp_dir=temp_dir))


def _check_readable(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
        if path.name.endswith(".gz") and head != b"\x1f\x8b":
            raise InputError(f"{path}: not a gzip file", source=str(path))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})", source=str(path)) from exc


# ---------------------------------------------------------------------------------------
# duplicate keys: JSON parsers keep the last of two equal keys silently; the format refuses them

_KEY_END = re.compile(rb'"\s*:')


#: the deepest nesting of arrays and objects a record (or document) may have; ims-record/1 needs 5
MAX_DEPTH = 32


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests arrays/objects deeper than ``limit`` (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _depth_and_keys(value: Any, limit: int) -> tuple[bool, int]:
    """(nests deeper than ``limit``, how many keys its objects hold): :func:`too_deep` and the key
    count of :func:`duplicate_key` in one walk; the count is partial when too deep."""
    deep = False
    n = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
            n += len(item)
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            deep = True
            break
        depth += 1
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth))
    return deep, n


def depth_problem() -> Problem:
    return Problem("(record)", "too_deep", f"arrays and objects nest deeper than {MAX_DEPTH} levels")


def _count_keys(value: Any) -> int:
    n = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            n += len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return n


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def duplicate_key(raw: bytes | str, parsed: Any) -> str | None:
    """The first key that an object of ``raw`` (already ``parsed``) repeats, or None.

    Fast path: every key ends with ``"`` then ``:``, and inside strings a quote is escaped, so
    when the text has no more such ends than ``parsed`` has keys, no key was lost.
    """
    return _duplicate_key(raw, _count_keys(parsed))


def _duplicate_key(raw: bytes | str, keys: int) -> str | None:
    """:func:`duplicate_key` for a text whose parsed value holds ``keys`` keys."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if len(_KEY_END.findall(data)) <= keys:
        return None
    try:
        json.loads(data, object_pairs_hook=_no_duplicates)
    except _Duplicate as dup:
        return str(dup.args[0])
    except (ValueError, RecursionError):
        return None  # orjson read it (it nests deeper than json); a difference in corner cases is not a duplicate
    return None


def duplicate_problem(key: str) -> Problem:
    shown = key if len(key) <= 60 else key[:57] + "..."
    return Problem("(record)", "duplicate_key", f"the key {shown!r} appears twice in one object "
                                                "(which value was meant is unknown)")


# ---------------------------------------------------------------------------------------
# JSON document


def _read_json_document(path: Path, *, lenient: bool) -> tuple[dict[str, Any] | None, Iterator[RawRecord]]:
    try:
        raw = path.read_bytes()
        doc = orjson.loads(raw)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})", source=str(path)) from exc
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})", source=str(path)) from exc
    if too_deep(doc):
        raise InputError(f"{path}: {depth_problem().message}", source=str(path))
    if (dup := duplicate_key(raw, doc)) is not None:
        raise InputError(f"{path}: {duplicate_problem(dup).message}", source=str(path))
    return document_records(doc, lenient=lenient, where=str(path), prefix=f"{path.name}:")


def document_records(doc: Any, *, lenient: bool, where: str, prefix: str = "") -> tuple[dict[str, Any] | None,
                                                                                     Iterator[RawRecord]]:
    """A parsed JSON document -> (its declared source, its records); InputError if it is not one.

    ``where`` names the input in errors; ``prefix`` starts every origin (``clinic.json:``).
    The caller has checked nesting and duplicate keys on the text (:func:`too_deep`, :func:`duplicate_key`).
    """
    if not isinstance(doc, dict):
        raise InputError(f"{where}: a JSON document must be an object with \"format\": \"{v.FORMAT}\"", source=where)
    fmt = doc.get("format")
    if fmt != v.FORMAT:
        raise InputError(f"{where}: \"format\" is {fmt!r}; this reader understands {v.FORMAT!r}", source=where)
    source = doc.get("source")
    if source is not None and not isinstance(source, dict):
        raise InputError(f"{where}: \"source\" must be an object", source=where)
    known = {"format", "source", *v.LIST_KEYS.values()}
    unknown = [k for k in doc if k not in known]
    bad_scalars = [k for k in unknown if not isinstance(doc[k], list)]
    if bad_scalars and not lenient:
        raise InputError(f"{where}: unknown top-level field(s) {', '.join(map(repr, bad_scalars))} "
                         f"(not in {v.FORMAT}; use --lenient to ignore)", source=where)
    for key in v.LIST_KEYS.values():
        if key in doc and not isinstance(doc[key], list):
            raise InputError(f"{where}: \"{key}\" must be a list", source=where)

    def records() -> Iterator[RawRecord]:
        for record_type, key in v.LIST_KEYS.items():
            for i, item in enumerate(doc.get(key) or ()):
                yield RawRecord(record_type, item, f"{prefix}{key}[{i}]")
        # a list under a key we do not know is a record type we do not know: reject each item
        for key in unknown:
            if isinstance(doc[key], list):
                for i, item in enumerate(doc[key]):
                    yield RawRecord(key, item, f"{prefix}{key}[{i}]", [Problem(
                        "(record)", "unknown_record_type",
                        f"{key!r} is not a record list of {v.FORMAT} (expected {', '.join(v.LIST_KEYS.values())})")])

    return source, records()


def _read_source_json(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})", source=str(path)) from exc
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})", source=str(path)) from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: must be a JSON object with clinic_id and system_base", source=str(path))
    return data


# ---------------------------------------------------------------------------------------
# NDJSON


def parse_ndjson_line(line: bytes | str, origin: str) -> RawRecord:
    """One NDJSON line -> RawRecord (with a problem instead of an exception)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return RawRecord(None, None, origin, [Problem("(line)", "malformed_json",
                                                      f"not valid JSON: {exc.msg} (at character {exc.pos + 1})")])
    if not isinstance(obj, dict):
        return RawRecord(None, None, origin, [Problem("(line)", "type", "a line must hold one JSON object")])
    deep, keys = _depth_and_keys(obj, MAX_DEPTH)
    if deep:
        return RawRecord(None, None, origin, [depth_problem()])
    if (dup := _duplicate_key(line, keys)) is not None:
        rtype = obj.pop("record_type", None)
        return RawRecord(rtype if isinstance(rtype, str) and rtype in v.RECORD_TYPES else None, obj, origin,
                         [duplicate_problem(dup)])
    record_type = obj.pop("record_type", None)
    if record_type is None:
        return RawRecord(None, obj, origin, [Problem("record_type", "required", "is required on every NDJSON line")])
    if not isinstance(record_type, str) or record_type not in v.RECORD_TYPES:
        return RawRecord(str(record_type), obj, origin, [Problem(
            "record_type", "unknown_record_type",
            f"{record_type!r} is not a record type of {v.FORMAT} (expected one of: {', '.join(v.RECORD_TYPES)})")])
    return RawRecord(record_type, obj, origin)


def read_body(body: bytes, *, lenient: bool = False) -> tuple[dict[str, Any] | None, Iterator[RawRecord]]:
    """The records of a request body (``POST /records``), by the same rules as the files.

    Any JSON form: one record object with ``record_type`` (origin ``body``), a JSON array of
    them (``[3]``), a JSON document (``treatments[3]``) or NDJSON (``line 3``). Returns the
    source a document declares, if any. InputError if the body is none of these.
    """
    text = body.strip()
    if not text:
        raise InputError("the request body holds no records")
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        if b"\n" not in text:
            raise InputError("the request body is not JSON or NDJSON") from None
        lines = text.split(b"\n")
        return None, (parse_ndjson_line(line, f"line {n}") for n, line in enumerate(lines, start=1) if line.strip())
    if too_deep(data, MAX_DEPTH + 2):  # + the body's array or document around the records
        raise InputError(f"the request body: {depth_problem().message}")
    if (dup := duplicate_key(text, data)) is not None:
        raise InputError(f"the request body: {duplicate_problem(dup).message}")
    if isinstance(data, list):
        return None, (_record_object(item, f"[{i}]") for i, item in enumerate(data))
    if isinstance(data, dict) and "format" in data:
        return document_records(data, lenient=lenient, where="the request body")
    if isinstance(data, dict):
        return None, iter([_record_object(data, "body")])
    raise InputError("the request body must be a record object, an array of records, a document or NDJSON")


def _record_object(item: Any, origin: str) -> RawRecord:
    if not isinstance(item, dict):
        return RawRecord(None, None, origin, [Problem("(record)", "type", "a record must be a JSON object")])
    return parse_ndjson_line(orjson.dumps(item), origin)


def _read_ndjson(path: Path) -> Iterator[RawRecord]:
    name = path.name
    opener: Callable[..., Any] = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                yield parse_ndjson_line(line, f"{name}:{lineno}")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})", source=str(path)) from exc


# ---------------------------------------------------------------------------------------
# CSV folder


def _cell(column: str, raw: str) -> Any:
    """Convert one non-empty cell; a value that does not convert stays a string, and the
    model then names the rule it breaks (e.g. 'must be an integer, not string "abc"')."""
    if column in _INT_COLUMNS:
        s = raw.strip()
        return int(s) if _INT_RE.fullmatch(s) else raw
    if column in _FLOAT_COLUMNS:
        s = raw.strip()
        try:
            num = float(s)
        except ValueError:
            return raw
        if not math.isfinite(num):
            return raw
        return int(s) if _INT_RE.fullmatch(s) else num
    if column in _BOOL_COLUMNS:
        s = raw.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        return raw
    if column in _LIST_COLUMNS:
        return raw.split("|")
    return raw


class _CsvTable:
    """A CSV file read row by row, with the line each row starts on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        try:
            self._fh = open(path, newline="", encoding="utf-8-sig")
            self._reader = csv.reader(self._fh)
            self.header = next(self._reader, [])
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", source=str(path)) from exc
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})", source=str(path)) from exc
        except csv.Error as exc:
            raise InputError(f"{path}: not a CSV file ({exc})", source=str(path)) from exc
        self.header = [h.strip() for h in self.header]
        known = set(CSV_TABLES[self.name])
        self.unknown_columns = [h for h in self.header if h not in known]
        dupes = {h for h in self.header if self.header.count(h) > 1}
        if dupes:
            raise InputError(f"{path}: duplicate column(s) {', '.join(sorted(dupes))}", source=str(path))

    def rows(self) -> Iterator[tuple[int, dict[str, str]]]:
        start = self._reader.line_num + 1
        try:
            for row in self._reader:
                cells = {h: (row[i] if i < len(row) else "") for i, h in enumerate(self.header)}
                extra = row[len(self.header):]
                if any(c.strip() for c in extra):
                    cells["\x00extra"] = "|".join(extra)
                if any(c.strip() for c in row):
                    yield start, cells
                start = self._reader.line_num + 1
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.path}: not UTF-8 text ({exc.reason})", source=str(self.path)) from exc
        except csv.Error as exc:
            raise InputError(f"{self.path}:{self._reader.line_num}: {exc}", source=str(self.path)) from exc
        finally:
            self._fh.close()


def _row_problems(table: _CsvTable, line: int, cells: dict[str, str], lenient: bool) -> list[Problem]:
    problems = []
    if "\x00extra" in cells:
        problems.append(Problem(f"{table.name}:{line}", "extra_cells", "the row has more cells than the header"))
    if not lenient:
        for col in table.unknown_columns:
            if cells.get(col, "").strip():
                problems.append(Problem(f"{table.name}:{line}.{col}", "unknown_field",
                                        f"column {col!r} is not part of {table.name} in {v.FORMAT} (use --lenient to ignore)"))
    return problems


def _put(record: dict[str, Any], key: str, cells: dict[str, str], column: str | None = None) -> None:
    raw = cells.get(column or key, "")
    if raw.strip() != "":
        record[key] = _cell(column or key, raw)


class _ChildIndex:
    """Child rows of the CSV folder indexed by parent id in a temporary SQLite file."""

    def __init__(self, temp_dir: str | None) -> None:
        fd, self._path = tempfile.mkstemp(prefix="ims-fhir-csv-", suffix=".sqlite", dir=temp_dir)
        os.close(fd)
        self.db = sqlite3.connect(self._path)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE child (tbl TEXT, parent TEXT, line INTEGER, cells BLOB)")
        self.db.execute("CREATE TABLE parent (tbl TEXT, id TEXT)")

    def load(self, table: _CsvTable, parent_column: str) -> None:
        batch = []
        for line, cells in table.rows():
            batch.append((table.name, cells.get(parent_column, "").strip(), line, orjson.dumps(cells)))
            if len(batch) >= 5000:
                self.db.executemany("INSERT INTO child VALUES (?,?,?,?)", batch)
                batch.clear()
        self.db.executemany("INSERT INTO child VALUES (?,?,?,?)", batch)
        self.db.execute("CREATE INDEX IF NOT EXISTS child_parent ON child (tbl, parent, line)")

    def children(self, tbl: str, parent: str) -> list[tuple[int, dict[str, str]]]:
        self.db.execute("INSERT INTO parent VALUES (?,?)", (tbl, parent))
        rows = self.db.execute("SELECT line, cells FROM child WHERE tbl=? AND parent=? ORDER BY line", (tbl, parent))
        return [(line, orjson.loads(cells)) for line, cells in rows]

    def orphans(self) -> Iterator[tuple[str, int, dict[str, str]]]:
        self.db.execute("CREATE INDEX IF NOT EXISTS parent_id ON parent (tbl, id)")
        rows = self.db.execute(
            "SELECT c.tbl, c.line, c.cells FROM child c WHERE NOT EXISTS "
            "(SELECT 1 FROM parent p WHERE p.tbl = c.tbl AND p.id = c.parent) ORDER BY c.tbl, c.line")
        for tbl, line, cells in rows:
            yield tbl, line, orjson.loads(cells)

    def close(self) -> None:
        self.db.close()
        try:
            os.unlink(self._path)
        except OSError:
            pass


_CHILD_TABLES = {
    "assessment_findings.csv": ("assessment_id", "assessment_finding"),
    "treatment_sites.csv": ("treatment_id", "treatment_site"),
    "treatment_adverse_events.csv": ("treatment_id", "treatment_adverse_event"),
}


def _open_table(folder: Path, name: str) -> _CsvTable | None:
    path = folder / name
    return _CsvTable(path) if path.exists() else None


def _read_csv_folder(folder: Path, *, lenient: bool, temp_dir: str | None) -> Iterator[RawRecord]:
    known = set(CSV_TABLES) | {"source.json"}
    strays = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".csv" and p.name not in known)
    if strays and not lenient:
        raise InputError(f"{folder}: unknown CSV table(s) {', '.join(strays)} (not in {v.FORMAT}; use --lenient to ignore)",
                         source=str(folder))
    index = _ChildIndex(temp_dir)
    try:
        child_unknown: dict[str, list[str]] = {}
        for name, (parent_col, _) in _CHILD_TABLES.items():
            table = _open_table(folder, name)
            child_unknown[name] = table.unknown_columns if table is not None else []
            if table is not None:
                index.load(table, parent_col)

        for name, record_type in (("patients.csv", "patient"), ("practitioners.csv", "practitioner"),
                                  ("assessments.csv", "assessment"), ("treatments.csv", "treatment")):
            table = _open_table(folder, name)
            if table is None:
                continue
            builder = _BUILDERS[record_type]
            for line, cells in table.rows():
                origin = f"{name}:{line}"
                problems = _row_problems(table, line, cells, lenient)
                rec = builder(cells, problems, name, line)
                child_origins: dict[str, str] = {}
                rid = cells.get("id", "").strip()
                if record_type == "assessment":
                    _attach_findings(rec, index.children("assessment_findings.csv", rid) if rid else [],
                                     problems, child_origins, lenient, child_unknown["assessment_findings.csv"])
                elif record_type == "treatment":
                    _attach_sites(rec, index.children("treatment_sites.csv", rid) if rid else [],
                                  problems, child_origins, lenient, child_unknown["treatment_sites.csv"])
                    _attach_adverse_events(rec, index.children("treatment_adverse_events.csv", rid) if rid else [],
                                           problems, child_origins, lenient, child_unknown["treatment_adverse_events.csv"])
                yield RawRecord(record_type, rec, origin, problems, child_origins)

        for tbl, line, cells in index.orphans():
            parent_col, child_type = _CHILD_TABLES[tbl]
            parent = cells.get(parent_col, "").strip()
            what = (f"{parent_col} {parent!r} matches no row of {parent_col.split('_')[0]}s.csv" if parent
                    else f"{parent_col} is empty")
            yield RawRecord(child_type, None, f"{tbl}:{line}", [Problem(f"{tbl}:{line}.{parent_col}", "parent_missing",
                                                                        f"{what}; the row belongs to no record")])
    finally:
        index.close()


def _split_pairs(cells: dict[str, str], a: str, b: str, problems: list[Problem], where: str) -> list[tuple[str, str]]:
    ra, rb = cells.get(a, ""), cells.get(b, "")
    if not ra.strip() and not rb.strip():
        return []
    la, lb = ra.split("|"), rb.split("|")
    if len(la) != len(lb):
        problems.append(Problem(f"{where}.{a}", "pair_count",
                                f"{a} has {len(la)} value(s) but {b} has {len(lb)}; pair them with '|'"))
        return []
    return list(zip(la, lb, strict=True))  # the lengths were checked equal above


def _build_patient(cells: dict[str, str], problems: list[Problem], name: str, line: int) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for key in ("id", "family_name", "given_names", "birth_date", "sex"):
        _put(rec, key, cells)
    pairs = _split_pairs(cells, "identifier_system", "identifier_value", problems, f"{name}:{line}")
    if pairs:
        rec["identifiers"] = [{"system": s, "value": val} for s, val in pairs]
    _put(rec, "phone", cells)
    _put(rec, "email", cells)
    return rec


def _build_practitioner(cells: dict[str, str], problems: list[Problem], name: str, line: int) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for key in ("id", "family_name", "given_names"):
        _put(rec, key, cells)
    system, value = cells.get("registration_system", ""), cells.get("registration_value", "")
    if system.strip() or value.strip():
        reg: dict[str, Any] = {}
        _put(reg, "system", cells, "registration_system")
        _put(reg, "value", cells, "registration_value")
        rec["registration"] = reg
    _put(rec, "ims_certified", cells)
    return rec


def _build_assessment(cells: dict[str, str], problems: list[Problem], name: str, line: int) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for key in ("id", "patient_id", "practitioner_id", "performed_at", "status", "chief_complaint"):
        _put(rec, key, cells)
    pain: dict[str, Any] = {}
    _put(pain, "nrs", cells, "pain_nrs")
    _put(pain, "duration_weeks", cells, "pain_duration_weeks")
    if pain:
        rec["pain"] = pain
    cand: dict[str, Any] = {}
    _put(cand, "suitable", cells, "candidacy_suitable")
    _put(cand, "contraindications", cells)
    _put(cand, "note", cells, "candidacy_note")
    if cand:
        rec["candidacy"] = cand
    _put(rec, "notes", cells)
    return rec


def _build_treatment(cells: dict[str, str], problems: list[Problem], name: str, line: int) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for key in ("id", "patient_id", "practitioner_id", "assessment_id", "started_at", "ended_at", "status",
                "status_reason", "session_number", "series_total", "consent_obtained"):
        _put(rec, key, cells)
    for key in ("pain_before_nrs", "pain_after_nrs", "notes"):
        _put(rec, key, cells)
    return rec


_BUILDERS: dict[str, Callable[[dict[str, str], list[Problem], str, int], dict[str, Any]]] = {
    "patient": _build_patient,
    "practitioner": _build_practitioner,
    "assessment": _build_assessment,
    "treatment": _build_treatment,
}


def _child_cell_problems(tbl: str, line: int, cells: dict[str, str], unknown: list[str], lenient: bool,
                         allowed: tuple[str, ...] | None = None) -> list[Problem]:
    problems = []
    if "\x00extra" in cells:
        problems.append(Problem(f"{tbl}:{line}", "extra_cells", "the row has more cells than the header"))
    if not lenient:
        for col in unknown:
            if cells.get(col, "").strip():
                problems.append(Problem(f"{tbl}:{line}.{col}", "unknown_field",
                                        f"column {col!r} is not part of {tbl} in {v.FORMAT} (use --lenient to ignore)"))
    if allowed is not None:
        for col in CSV_TABLES[tbl]:
            if col not in allowed and cells.get(col, "").strip():
                problems.append(Problem(f"{tbl}:{line}.{col}", "not_applicable",
                                        f"column {col!r} does not apply to a {cells.get('kind', '').strip()} row; "
                                        "its value would be lost"))
    return problems


def _attach_findings(rec: dict[str, Any], rows: list[tuple[int, dict[str, str]]], problems: list[Problem],
                     origins: dict[str, str], lenient: bool, unknown: list[str]) -> None:
    tbl = "assessment_findings.csv"
    lists: dict[str, list[dict[str, Any]]] = {}
    for line, cells in rows:
        kind = cells.get("kind", "").strip()
        spec = FINDING_KINDS.get(kind)
        if spec is None:
            problems.append(Problem(f"{tbl}:{line}.kind", "enum",
                                    f"{kind!r} is not a finding kind (expected one of: {', '.join(FINDING_KINDS)})"))
            continue
        list_name, code_field, columns = spec
        problems.extend(_child_cell_problems(tbl, line, cells, unknown, lenient,
                                             ("assessment_id", "kind", "code", *columns)))
        item: dict[str, Any] = {}
        _put(item, code_field, cells, "code")
        for col in columns:
            _put(item, col, cells)
        if kind == "diagnosis" and "note" in item:
            item["text"] = item.pop("note")
        items = lists.setdefault(list_name, [])
        prefix = f"pain.locations[{len(items)}]" if list_name == "locations" else f"{list_name}[{len(items)}]"
        origins[prefix] = f"{tbl}:{line}"
        items.append(item)
    if "locations" in lists:
        rec.setdefault("pain", {})["locations"] = lists.pop("locations")
    for list_name, items in lists.items():
        rec[list_name] = items


def _attach_sites(rec: dict[str, Any], rows: list[tuple[int, dict[str, str]]], problems: list[Problem],
                  origins: dict[str, str], lenient: bool, unknown: list[str]) -> None:
    tbl = "treatment_sites.csv"
    sites: list[dict[str, Any]] = []
    for line, cells in rows:
        problems.extend(_child_cell_problems(tbl, line, cells, unknown, lenient))
        site: dict[str, Any] = {}
        for key in ("muscle", "side", "segment", "insertions", "needle_diameter_mm", "needle_length_mm", "twitch_response"):
            _put(site, key, cells)
        es: dict[str, Any] = {}
        _put(es, "frequency_hz", cells, "estim_frequency_hz")
        _put(es, "duration_min", cells, "estim_duration_min")
        if es:
            site["electrical_stimulation"] = es
        origins[f"sites[{len(sites)}]"] = f"{tbl}:{line}"
        sites.append(site)
    if sites:
        rec["sites"] = sites


def _attach_adverse_events(rec: dict[str, Any], rows: list[tuple[int, dict[str, str]]], problems: list[Problem],
                           origins: dict[str, str], lenient: bool, unknown: list[str]) -> None:
    tbl = "treatment_adverse_events.csv"
    events: list[dict[str, Any]] = []
    for line, cells in rows:
        problems.extend(_child_cell_problems(tbl, line, cells, unknown, lenient))
        ae: dict[str, Any] = {}
        for key in ("event", "severity", "muscle", "note"):
            _put(ae, key, cells)
        origins[f"adverse_events[{len(events)}]"] = f"{tbl}:{line}"
        events.append(ae)
    if events:
        rec["adverse_events"] = events
