"""From a request body of IMS records to outbox work: parse, validate, convert.

Terms:

- *body*: any ``ims-record/1`` JSON form the service accepts: one record object with
  ``record_type``, a JSON array of such objects, a JSON document
  (``{"format": "ims-record/1", ...}``), or NDJSON (one record per line).
- *origin*: where a record sat in the body: ``line 3`` (NDJSON), ``[3]`` (array),
  ``treatments[3]`` (document), ``body`` (a single record).
- *accepted*: a valid record, converted to its FHIR resources (:class:`~.store.Incoming`);
  *rejected*: a record with every problem found, which is stored nowhere.

Pure: bytes in, data out (no I/O, no clock), like the rest of the core.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InputError, Problem
from ..fhir.bundles import SHARED_TYPES, entry_for, group_to_bytes
from ..mapping import MappedRecord, MappingContext, map_record
from ..records import vocabulary as v
from ..records.readers import MAX_DEPTH, RawRecord, depth_problem, duplicate_key, duplicate_problem, parse_ndjson_line, too_deep
from ..records.validation import record_id_of, validate_record
from .store import Incoming


@dataclass(frozen=True, slots=True)
class Rejected:
    record_type: str | None
    record_id: str | None
    origin: str
    problems: list[Problem]

    def as_dict(self) -> dict[str, Any]:
        return {"record_type": self.record_type, "id": self.record_id, "origin": self.origin,
                "problems": [p.as_dict() for p in self.problems]}


@dataclass
class Intake:
    accepted: list[Incoming] = field(default_factory=list)
    origins: dict[tuple[str, str], str] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    #: the source a JSON document declared, if any (the caller checks it against its own)
    declared_source: dict[str, Any] | None = None


def parse_body(body: bytes) -> tuple[list[RawRecord], dict[str, Any] | None]:
    """The raw records of a body and the source it declares (a JSON document may); InputError if unreadable."""
    text = body.strip()
    if not text:
        raise InputError("the request body holds no records")
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        data = None
        if b"\n" not in text:
            raise InputError("the request body is not JSON or NDJSON") from None
    if data is not None and too_deep(data, MAX_DEPTH + 2):  # + the body's array or document around records
        raise InputError(f"the request body: {depth_problem().message}")
    if data is not None and (dup := duplicate_key(text, data)) is not None:
        raise InputError(f"the request body: {duplicate_problem(dup).message}")
    if data is None:  # NDJSON: several lines
        records = []
        for n, line in enumerate(text.split(b"\n"), start=1):
            if line.strip():
                records.append(parse_ndjson_line(line, f"line {n}"))
        return records, None
    if isinstance(data, list):
        return [_one(item, f"[{i}]") for i, item in enumerate(data)], None
    if isinstance(data, dict) and "format" in data:
        return _document(data)
    if isinstance(data, dict):
        return [_one(data, "body")], None
    raise InputError("the request body must be a record object, an array of records, a document or NDJSON")


def _one(item: Any, origin: str) -> RawRecord:
    if not isinstance(item, dict):
        return RawRecord(None, None, origin, [Problem("(record)", "type", "a record must be a JSON object")])
    return parse_ndjson_line(orjson.dumps(item), origin)


def _document(doc: dict[str, Any]) -> tuple[list[RawRecord], dict[str, Any] | None]:
    if doc.get("format") != v.FORMAT:
        raise InputError(f"\"format\" is {doc.get('format')!r}; this service understands {v.FORMAT!r}")
    source = doc.get("source")
    if source is not None and not isinstance(source, dict):
        raise InputError("\"source\" must be an object")
    known = {"format", "source", *v.LIST_KEYS.values()}
    records: list[RawRecord] = []
    for record_type, key in v.LIST_KEYS.items():
        items = doc.get(key) or []
        if not isinstance(items, list):
            raise InputError(f"\"{key}\" must be a list")
        records.extend(RawRecord(record_type, item, f"{key}[{i}]") for i, item in enumerate(items))
    for key in (k for k in doc if k not in known):
        records.append(RawRecord(key, None, key, [Problem(key, "unknown_field",
                                                          f"{key!r} is not a field of an {v.FORMAT} document")]))
    return records, source


def content_hash(group_bytes: bytes) -> str:
    return hashlib.sha256(group_bytes).hexdigest()


def shared_entry(resource: dict[str, Any], organization_id: str) -> bytes:
    """The conditional-create entry of a Patient/Practitioner, ready for any Bundle of its source
    (each Bundle carries the Organization under ``urn:uuid:<its id>``)."""
    entry = orjson.dumps(entry_for(resource))
    return entry.replace(orjson.dumps(f"Organization/{organization_id}"), orjson.dumps(f"urn:uuid:{organization_id}"))


def incoming(group: MappedRecord, ctx: MappingContext, *, assessment_id: str | None = None) -> Incoming:
    body = group_to_bytes(group)
    shared = {r["id"]: shared_entry(r, ctx.organization_id) for r in group.resources
              if r["resourceType"] in SHARED_TYPES}
    waits = ("assessment", assessment_id) if group.record_type == "treatment" and assessment_id else None
    return Incoming(group.record_type, group.record_id, content_hash(body), body, waits, shared)


def take(raw_records: list[RawRecord], ctx: MappingContext, *, lenient: bool = False,
         context: dict[str, Any] | None = None) -> Intake:
    """Validate and convert; every record ends accepted or rejected with every reason."""
    out = Intake()
    first_at: dict[tuple[str, str], str] = {}
    for raw in raw_records:
        record_id = record_id_of(raw.data)
        problems = list(raw.problems)
        model = None
        if raw.record_type is not None and raw.data is not None and not problems:
            model, found = validate_record(raw.record_type, raw.data, context=context, lenient=lenient)
            problems.extend(found)
        if record_id is not None and raw.record_type is not None:
            key = (raw.record_type, record_id)
            if key in first_at:
                problems.append(Problem("id", "duplicate_id",
                                        f"{raw.record_type} id {record_id!r} was already used at {first_at[key]}"))
            else:
                first_at[key] = raw.origin
        group = None
        if model is not None and not problems:
            try:
                group = map_record(raw.record_type or "", model, ctx)
            except Exception as exc:  # a mapping bug rejects its record, never the batch
                problems.append(Problem("(record)", "conversion_error",
                                        f"internal error while mapping: {type(exc).__name__}"))
        if problems or group is None:
            out.rejected.append(Rejected(raw.record_type, record_id, raw.origin, problems))
            continue
        out.accepted.append(incoming(group, ctx, assessment_id=getattr(model, "assessment_id", None)))
        out.origins[(group.record_type, group.record_id)] = raw.origin
    return out


__all__ = ["Intake", "Rejected", "content_hash", "incoming", "parse_body", "shared_entry", "take"]
