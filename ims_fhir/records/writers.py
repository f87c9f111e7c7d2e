"""Write IMS records (``ims-record/1``) to the format's three physical forms.

Terms used here:

record
    A pair ``(record_type, fields)``: ``record_type`` is one of :data:`RECORD_TYPES`
    and ``fields`` is the record in the JSON-document shape of the format (the fields of
    the spec tables, nested objects and lists as in JSON, an unrecorded optional value
    simply absent). A ``record_type`` key inside ``fields`` is tolerated when it agrees.
form
    One of the three physical forms of the same logical content: a JSON document
    (:func:`write_json_document`), NDJSON, optionally gzip-compressed
    (:func:`write_ndjson`), and a CSV folder (:func:`write_csv_folder`).

The writers serialize; they do not validate (that is the models' job). The one
exception is the CSV form, which cannot hold everything the JSON forms can: a field
without a CSV column, a ``|`` inside a multi-valued cell, or a value that is not a
scalar where a cell is expected raises :class:`UnwritableRecordError` (a ``ValueError``)
naming the record and the field, rather than dropping or garbling data. (A ``None``
value, which the JSON shape never has, would become ``null`` in the JSON forms and an
empty cell in CSV; the models reject it.)

Every writer streams: NDJSON and CSV keep one record in memory at a time whatever the
count. The JSON document must group records by type, so records are spooled to
temporary files per type (a little memory, then disk) and copied into place at the end.
Every output file is written under a temporary name beside it and renamed into place
only when complete, so a failed write never leaves a file that looks whole.
Each writer returns the number of records written per record type.

CSV conventions (the spec leaves these open, so they are fixed here):

- UTF-8 without a byte-order mark, a header row, ``,`` separator, RFC 4180 quoting by
  the ``csv`` module (fields quoted only when needed), ``\\r\\n`` line ends as RFC 4180
  says. Line breaks inside a quoted cell are kept as they are.
- Every table file is written, with its header, even when it has no rows, and
  ``source.json`` holds the source object.
- Booleans are ``true``/``false``; integers as integers; floats in their shortest
  round-tripping form (``repr``: ``0.3``, ``2.5``, ``1e-05``), never thousands
  separators; NaN and infinities are refused. An empty cell means "not recorded", so an
  empty text and an absent value read back the same (both are "not recorded").
- Multi-valued cells (``given_names``, ``contraindications`` and the paired
  ``identifier_system``/``identifier_value``) are joined with ``|``; an empty list is an
  empty cell. An element that contains ``|`` or is empty cannot round-trip and raises.
  Identifiers are paired by position, so in CSV each needs both ``system`` and ``value``.
- ``pain``, ``candidacy``, ``registration`` and a site's ``electrical_stimulation`` are
  flattened into their columns (and ``pain.locations`` into ``assessment_findings.csv``);
  a reader should treat such an object as present when any of its cells or child rows
  is non-empty. An empty object (``{}``) therefore reads back as absent.
- Child rows (findings, sites, adverse events) follow their record, in the record's
  list order; findings in the order pain locations, neuropathic signs, palpation,
  range of motion, outcome measures.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CSV_LINE_TERMINATOR",
    "CSV_TABLES",
    "DOCUMENT_LISTS",
    "FORMAT",
    "MULTI_VALUE_SEPARATOR",
    "RECORD_TYPES",
    "SOURCE_FILE",
    "UnwritableRecordError",
    "csv_rows",
    "iter_records_by_type",
    "write_csv_folder",
    "write_json_document",
    "write_ndjson",
]

# The format's constants, from the one place that holds them.
from .vocabulary import CSV_TABLES, FORMAT, RECORD_TYPES  # noqa: E402
from .vocabulary import LIST_KEYS as DOCUMENT_LISTS  # noqa: E402

MULTI_VALUE_SEPARATOR = "|"
CSV_LINE_TERMINATOR = "\r\n"
SOURCE_FILE = "source.json"

# Records are spooled in memory up to this size per type before going to disk.
_SPOOL_BYTES = 1 << 20

_COMPACT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class UnwritableRecordError(ValueError):
    """A record cannot be written to the requested form without losing or garbling data.

    Carries ``record_type``, ``record_id`` (``None`` when the record has no usable id),
    ``field`` (a dotted path such as ``given_names[1]``, or ``None``) and ``reason``.
    """

    def __init__(self, record_type: str, record_id: str | None, field: str | None, reason: str) -> None:
        self.record_type = record_type
        self.record_id = record_id
        self.field = field
        self.reason = reason
        who = f"{record_type} {record_id!r}" if record_id is not None else f"{record_type} (no id)"
        where = f" field {field!r}" if field else ""
        super().__init__(f"{who}{where}: {reason}")


# --------------------------------------------------------------------------- helpers


def _record_id(fields: Mapping[str, Any]) -> str | None:
    value = fields.get("id") if isinstance(fields, Mapping) else None
    return value if isinstance(value, str) else None


def _checked(record_type: str, fields: Any) -> Mapping[str, Any]:
    """Check the pair's shape; drop an agreeing ``record_type`` key from the fields."""
    if record_type not in DOCUMENT_LISTS:
        raise UnwritableRecordError(
            str(record_type), None, None, f"unknown record type; expected one of {', '.join(RECORD_TYPES)}"
        )
    if not isinstance(fields, Mapping):
        raise UnwritableRecordError(record_type, None, None, f"expected a dict, got {type(fields).__name__}")
    if "record_type" in fields:
        if fields["record_type"] != record_type:
            raise UnwritableRecordError(
                record_type,
                _record_id(fields),
                "record_type",
                f"says {fields['record_type']!r} but the record was given as {record_type!r}",
            )
        return {k: v for k, v in fields.items() if k != "record_type"}
    return fields


def _encode(record_type: str, value: Any, encoder: json.JSONEncoder = _COMPACT) -> str:
    try:
        return encoder.encode(value)
    except (TypeError, ValueError) as exc:  # a non-JSON value, NaN or infinity
        rid = _record_id(value) if isinstance(value, Mapping) else None
        raise UnwritableRecordError(record_type, rid, None, f"not JSON-serializable: {exc}") from exc


@contextmanager
def _atomic_binary(path: Path) -> Iterator[IO[bytes]]:
    """Open ``path`` for binary writing via a temporary sibling, renamed on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A random suffix (not part of any output) keeps concurrent writers apart; "x" mode
    # creates the file with the user's umask, as a plain open() would.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    stream = open(tmp, "xb")
    try:
        yield stream
        stream.close()
        os.replace(tmp, path)
    except BaseException:
        stream.close()
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def _atomic_text(path: Path, *, newline: str) -> Iterator[IO[str]]:
    with _atomic_binary(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline=newline, write_through=False)
        try:
            yield text
            text.flush()
        finally:
            text.detach()


# --------------------------------------------------------------------------- NDJSON


def write_ndjson(path: str | os.PathLike[str], records: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, int]:
    """Write one compact JSON object per line, ``"record_type"`` first, UTF-8, ``\\n`` ends.

    A path ending in ``.gz`` is gzip-compressed (level 6, no file name or time stamp in
    the header, so the same records give the same bytes). Records keep the given order.
    """
    path = Path(path)
    counts = dict.fromkeys(RECORD_TYPES, 0)
    with _atomic_binary(path) as raw, ExitStack() as stack:
        sink: IO[bytes] | gzip.GzipFile = raw
        if path.suffix.lower() == ".gz":
            sink = stack.enter_context(gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0))
        out = io.TextIOWrapper(sink, encoding="utf-8", newline="\n")
        try:
            for record_type, fields in records:
                fields = _checked(record_type, fields)
                line = _encode(record_type, {"record_type": record_type, **fields})
                out.write(line)
                out.write("\n")
                counts[record_type] += 1
            out.flush()
        finally:
            out.detach()
    return counts


# --------------------------------------------------------------------------- grouping


class _TypeSpool:
    """Per-type temporary files holding serialized records, in arrival order."""

    def __init__(self) -> None:
        self.files = {
            t: tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, mode="w+", encoding="utf-8", newline="\n")
            for t in RECORD_TYPES
        }
        self.counts = dict.fromkeys(RECORD_TYPES, 0)

    def add(self, record_type: str, text: str, separator: str) -> None:
        spool = self.files[record_type]
        if self.counts[record_type]:
            spool.write(separator)
        spool.write(text)
        self.counts[record_type] += 1

    def rewound(self, record_type: str) -> IO[str]:
        spool = self.files[record_type]
        spool.seek(0)
        return spool

    def close(self) -> None:
        for spool in self.files.values():
            spool.close()


def iter_records_by_type(
    records: Iterable[tuple[str, Mapping[str, Any]]],
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield the records grouped by type in :data:`RECORD_TYPES` order, each type in
    arrival order, in bounded memory (records are spooled to temporary files).

    Consumes ``records`` completely before yielding the first record.
    """
    spool = _TypeSpool()
    try:
        for record_type, fields in records:
            fields = _checked(record_type, fields)
            spool.add(record_type, _encode(record_type, fields), "\n")
        for record_type in RECORD_TYPES:
            if spool.counts[record_type]:
                for line in spool.rewound(record_type):
                    yield record_type, json.loads(line)
    finally:
        spool.close()


# --------------------------------------------------------------------------- JSON document


def write_json_document(
    path: str | os.PathLike[str],
    source: Mapping[str, Any],
    records: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    indent: int | None = 2,
) -> dict[str, int]:
    """Write ``{"format": "ims-record/1", "source": ..., "patients": [...], ...}``.

    Lists appear in :data:`RECORD_TYPES` order and only when non-empty; within a list,
    records keep their arrival order. ``indent=2`` (default) pretty-prints;
    ``indent=None`` writes each record compactly on its own line, for large files.
    """
    pad = " " * indent if indent else ""
    newline = "\n"
    colon = ": " if indent is not None else ":"
    encoder = (
        json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=indent, separators=(",", ": "))
        if indent is not None
        else _COMPACT
    )

    def nested(text: str, depth: int) -> str:
        # JSON text has no raw line breaks inside strings, so re-indenting by line is safe.
        prefix = pad * depth
        return prefix + text.replace("\n", "\n" + prefix) if prefix else text

    spool = _TypeSpool()
    try:
        for record_type, fields in records:
            fields = _checked(record_type, fields)
            spool.add(record_type, nested(_encode(record_type, fields, encoder), 2), "," + newline)
        source_text = _encode("source", dict(source), encoder)
        with _atomic_text(Path(path), newline="\n") as out:
            out.write("{" + newline)
            out.write(f'{pad}"format"{colon}{json.dumps(FORMAT)},{newline}')
            out.write(f'{pad}"source"{colon}{nested(source_text, 1)[len(pad):]}')
            for record_type in RECORD_TYPES:
                if spool.counts[record_type]:
                    out.write(f',{newline}{pad}"{DOCUMENT_LISTS[record_type]}"{colon}[{newline}')
                    shutil.copyfileobj(spool.rewound(record_type), out)
                    out.write(f"{newline}{pad}]")
            out.write(newline + "}" + newline)
    finally:
        spool.close()
    return dict(spool.counts)


# --------------------------------------------------------------------------- CSV folder


class _Flattener:
    """Turns one record into CSV rows; every error names the record and the field.

    Field paths are given as ``(key, where)`` and joined only when there is an error:
    this runs once per cell of every record.
    """

    __slots__ = ("record_type", "record_id")

    def __init__(self, record_type: str, fields: Mapping[str, Any]) -> None:
        self.record_type = record_type
        self.record_id = _record_id(fields)

    def error(self, key: str, where: str, reason: str) -> UnwritableRecordError:
        field = f"{where}.{key}" if where and key else (where or key or None)
        return UnwritableRecordError(self.record_type, self.record_id, field, reason)

    def object(self, value: Any, allowed: frozenset[str], key: str, where: str = "") -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(key, where, f"expected an object, got {type(value).__name__}")
        for name in value:
            if name not in allowed:
                path = f"{where}.{key}" if where and key else (where or key)
                raise self.error(str(name), path, "field has no column in the CSV form; it would be lost")
        return value

    def items(self, value: Any, key: str, where: str = "") -> Sequence[Any]:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            raise self.error(key, where, f"expected a list, got {type(value).__name__}")
        return value

    def cell(self, value: Any, key: str, where: str = "") -> str:
        kind = type(value)
        if kind is str:
            return value  # type: ignore[no-any-return]
        if value is None:
            return ""
        if kind is bool:
            return "true" if value else "false"
        if kind is int:
            return str(value)
        if kind is float:
            if not math.isfinite(value):
                raise self.error(key, where, f"{value!r} is not a finite number")
            return repr(value)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(int(value))
        if isinstance(value, float):
            return self.cell(float(value), key, where)
        raise self.error(key, where, f"expected a text, number or boolean, got {type(value).__name__}")

    def joined(self, values: Any, key: str, where: str = "") -> str:
        parts = self.items(values, key, where)
        for i, part in enumerate(parts):
            if not isinstance(part, str):
                raise self.error(f"{key}[{i}]", where, f"expected a text, got {type(part).__name__}")
            if MULTI_VALUE_SEPARATOR in part:
                raise self.error(
                    f"{key}[{i}]",
                    where,
                    f"contains {MULTI_VALUE_SEPARATOR!r}, the CSV multi-value separator, so it cannot be "
                    "written to the CSV form (use the JSON or NDJSON form)",
                )
            if not part:
                raise self.error(f"{key}[{i}]", where, "an empty text in a multi-valued CSV cell cannot be read back")
        return MULTI_VALUE_SEPARATOR.join(parts)


Rows = list[tuple[str, list[str]]]

_PATIENT_FIELDS = frozenset(
    {"id", "identifiers", "family_name", "given_names", "birth_date", "sex", "phone", "email"}
)
_PRACTITIONER_FIELDS = frozenset({"id", "family_name", "given_names", "registration", "ims_certified"})
_SYSTEM_VALUE = frozenset({"system", "value"})
_ASSESSMENT_FIELDS = frozenset(
    {
        "id", "patient_id", "practitioner_id", "performed_at", "status", "chief_complaint", "pain",
        "neuropathic_signs", "palpation", "range_of_motion", "outcome_measures", "candidacy", "notes",
        "diagnoses",
    }
)  # fmt: skip
_PAIN_FIELDS = frozenset({"nrs", "duration_weeks", "locations"})
_CANDIDACY_FIELDS = frozenset({"suitable", "contraindications", "note"})
_TREATMENT_COLUMNS = CSV_TABLES["treatments.csv"]  # each column is the field of the same name
_TREATMENT_FIELDS = frozenset({*_TREATMENT_COLUMNS, "sites", "adverse_events"})
_SITE_KEYS = (
    "muscle", "side", "segment", "insertions", "needle_diameter_mm", "needle_length_mm", "twitch_response",
)  # fmt: skip
_SITE_FIELDS = frozenset({*_SITE_KEYS, "electrical_stimulation"})
_ESTIM_FIELDS = frozenset({"frequency_hz", "duration_min"})
_ADVERSE_EVENT_KEYS = CSV_TABLES["treatment_adverse_events.csv"][1:]
_ADVERSE_EVENT_FIELDS = frozenset(_ADVERSE_EVENT_KEYS)
_FINDING_KEYS = CSV_TABLES["assessment_findings.csv"][3:]  # side ... note

# Assessment findings: kind, list field path, the item key written to `code`, the other
# item keys (each written to the column of the same name).
_FINDINGS: tuple[tuple[str, str, str, frozenset[str]], ...] = tuple(
    (kind, path, code_key, frozenset((code_key, *keys)))
    for kind, path, code_key, keys in (
        ("pain_location", "pain.locations", "region", ("side",)),
        ("neuropathic_sign", "neuropathic_signs", "sign", ("present", "segment", "side", "note")),
        ("palpation", "palpation", "muscle", ("side", "segment", "tender", "taut_band", "trigger_point", "note")),
        ("range_of_motion", "range_of_motion", "movement", ("side", "degrees", "painful")),
        ("outcome_measure", "outcome_measures", "instrument", ("score",)),
        ("diagnosis", "diagnoses", "code", ("system", "text")),
    )
)


def _patient_rows(f: _Flattener, r: Mapping[str, Any]) -> Rows:
    f.object(r, _PATIENT_FIELDS, "")
    systems: list[Any] = []
    values: list[Any] = []
    for i, identifier in enumerate(f.items(r.get("identifiers"), "identifiers")):
        where = f"identifiers[{i}]"
        identifier = f.object(identifier, _SYSTEM_VALUE, where)
        for key, bucket in (("system", systems), ("value", values)):
            if identifier.get(key) is None:
                raise f.error(key, where, "required in the CSV form, where systems and values are paired by position")
            bucket.append(identifier[key])
    row = [
        f.cell(r.get("id"), "id"),
        f.cell(r.get("family_name"), "family_name"),
        f.joined(r.get("given_names"), "given_names"),
        f.cell(r.get("birth_date"), "birth_date"),
        f.cell(r.get("sex"), "sex"),
        # Errors name the identifier element, e.g. identifiers.value[1].
        f.joined(systems, "system", "identifiers"),
        f.joined(values, "value", "identifiers"),
        f.cell(r.get("phone"), "phone"),
        f.cell(r.get("email"), "email"),
    ]
    return [("patients.csv", row)]


def _practitioner_rows(f: _Flattener, r: Mapping[str, Any]) -> Rows:
    f.object(r, _PRACTITIONER_FIELDS, "")
    registration = f.object(r.get("registration"), _SYSTEM_VALUE, "registration")
    row = [
        f.cell(r.get("id"), "id"),
        f.cell(r.get("family_name"), "family_name"),
        f.joined(r.get("given_names"), "given_names"),
        f.cell(registration.get("system"), "system", "registration"),
        f.cell(registration.get("value"), "value", "registration"),
        f.cell(r.get("ims_certified"), "ims_certified"),
    ]
    return [("practitioners.csv", row)]


def _assessment_rows(f: _Flattener, r: Mapping[str, Any]) -> Rows:
    f.object(r, _ASSESSMENT_FIELDS, "")
    pain = f.object(r.get("pain"), _PAIN_FIELDS, "pain")
    candidacy = f.object(r.get("candidacy"), _CANDIDACY_FIELDS, "candidacy")
    assessment_id = f.cell(r.get("id"), "id")
    row = [
        assessment_id,
        f.cell(r.get("patient_id"), "patient_id"),
        f.cell(r.get("practitioner_id"), "practitioner_id"),
        f.cell(r.get("performed_at"), "performed_at"),
        f.cell(r.get("status"), "status"),
        f.cell(r.get("chief_complaint"), "chief_complaint"),
        f.cell(pain.get("nrs"), "nrs", "pain"),
        f.cell(pain.get("duration_weeks"), "duration_weeks", "pain"),
        f.cell(candidacy.get("suitable"), "suitable", "candidacy"),
        f.joined(candidacy.get("contraindications"), "contraindications", "candidacy"),
        f.cell(candidacy.get("note"), "note", "candidacy"),
        f.cell(r.get("notes"), "notes"),
    ]
    rows: Rows = [("assessments.csv", row)]
    for kind, path, code_key, allowed in _FINDINGS:
        values = pain.get("locations") if path == "pain.locations" else r.get(path)
        for i, item in enumerate(f.items(values, path)):
            where = f"{path}[{i}]"
            item = f.object(item, allowed, where)
            if kind == "diagnosis":  # the CSV form keeps a diagnosis's text in `note`
                item = {**{k: v for k, v in item.items() if k != "text"}, "note": item.get("text")}
            finding = [assessment_id, kind, f.cell(item.get(code_key), code_key, where)]
            # Keys a kind does not have are absent from its items, so their cells are empty.
            finding.extend([f.cell(item.get(key), key, where) for key in _FINDING_KEYS])
            rows.append(("assessment_findings.csv", finding))
    return rows


def _treatment_rows(f: _Flattener, r: Mapping[str, Any]) -> Rows:
    f.object(r, _TREATMENT_FIELDS, "")
    row = [f.cell(r.get(column), column) for column in _TREATMENT_COLUMNS]
    treatment_id = row[0]
    rows: Rows = [("treatments.csv", row)]
    for i, site in enumerate(f.items(r.get("sites"), "sites")):
        where = f"sites[{i}]"
        site = f.object(site, _SITE_FIELDS, where)
        estim = f.object(site.get("electrical_stimulation"), _ESTIM_FIELDS, "electrical_stimulation", where)
        site_row = [treatment_id]
        site_row.extend([f.cell(site.get(key), key, where) for key in _SITE_KEYS])
        if estim:
            estim_where = f"{where}.electrical_stimulation"
            site_row.append(f.cell(estim.get("frequency_hz"), "frequency_hz", estim_where))
            site_row.append(f.cell(estim.get("duration_min"), "duration_min", estim_where))
        else:
            site_row += ("", "")
        rows.append(("treatment_sites.csv", site_row))
    for i, event in enumerate(f.items(r.get("adverse_events"), "adverse_events")):
        where = f"adverse_events[{i}]"
        event = f.object(event, _ADVERSE_EVENT_FIELDS, where)
        event_row = [treatment_id]
        event_row.extend([f.cell(event.get(key), key, where) for key in _ADVERSE_EVENT_KEYS])
        rows.append(("treatment_adverse_events.csv", event_row))
    return rows


_ROWS_BY_TYPE = {
    "patient": _patient_rows,
    "practitioner": _practitioner_rows,
    "assessment": _assessment_rows,
    "treatment": _treatment_rows,
}


def csv_rows(record_type: str, fields: Mapping[str, Any]) -> Rows:
    """The CSV rows of one record as ``(table file name, cells in column order)``.

    Raises :class:`UnwritableRecordError` when the record cannot be written to CSV.
    """
    fields = _checked(record_type, fields)
    return _ROWS_BY_TYPE[record_type](_Flattener(record_type, fields), fields)


def write_csv_folder(
    directory: str | os.PathLike[str],
    source: Mapping[str, Any],
    records: Iterable[tuple[str, Mapping[str, Any]]],
) -> dict[str, int]:
    """Write the spec's CSV tables and ``source.json`` into ``directory`` (created if needed).

    Each record's rows are built completely before any is written, so a record that
    cannot be written raises :class:`UnwritableRecordError` and no file is replaced.
    Other files already in the directory are left alone.
    """
    directory = Path(directory)
    counts = dict.fromkeys(RECORD_TYPES, 0)
    source_text = _encode("source", dict(source), json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=2))
    with ExitStack() as stack:
        writers = {}
        for table, columns in CSV_TABLES.items():
            out = stack.enter_context(_atomic_text(directory / table, newline=""))
            writer = csv.writer(out, lineterminator=CSV_LINE_TERMINATOR)
            writer.writerow(columns)
            writers[table] = writer.writerow
        for record_type, fields in records:
            for table, cells in csv_rows(record_type, fields):
                writers[table](cells)
            counts[record_type] += 1
        source_out = stack.enter_context(_atomic_text(directory / SOURCE_FILE, newline="\n"))
        source_out.write(source_text + "\n")
    return counts
