"""From a request body of IMS records to outbox work: parse, validate, convert.

Terms:

- *body*: any ``ims-record/1`` JSON form the service accepts: one record object with
  ``record_type``, a JSON array of such objects, a JSON document
  (``{"format": "ims-record/1", ...}``), or NDJSON (one record per line).
- *origin*: where a record sat in the body: ``line 3`` (NDJSON), ``[3]`` (array),
  ``treatments[3]`` (document), ``body`` (a single record).
- *accepted*: a valid record, converted to its FHIR resources (:class:`~.store.Incoming`);
  *rejected*: a record with every problem found (:class:`~ims_fhir.rejects.Rejected`),
  which is stored nowhere.

Parsing and conversion are the ones of the files (:func:`~ims_fhir.records.readers.read_body`,
:class:`~ims_fhir.pipeline.RecordPipeline`): the same rules, ``lenient`` included.

Pure: bytes in, data out (no I/O, no clock), like the rest of the core.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..fhir.bundles import SHARED_TYPES, entry_for, group_to_bytes
from ..mapping import MappedRecord, MappingContext
from ..pipeline import MemorySeen, RecordPipeline
from ..records.readers import RawRecord, read_body
from ..rejects import Rejected
from .store import Incoming


@dataclass
class Intake:
    accepted: list[Incoming] = field(default_factory=list)
    origins: dict[tuple[str, str], str] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    #: the source a JSON document declared, if any (the caller checks it against its own)
    declared_source: dict[str, Any] | None = None


def parse_body(body: bytes, *, lenient: bool = False) -> tuple[list[RawRecord], dict[str, Any] | None]:
    """The raw records of a body and the source it declares (a JSON document may); InputError if unreadable.

    The same reader rules as files (:func:`ims_fhir.records.readers.read_body`).
    """
    source, records = read_body(body, lenient=lenient)
    return list(records), source


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
    """Validate and convert (:class:`~ims_fhir.pipeline.RecordPipeline`, as ``convert`` does);
    every record ends accepted or rejected with every reason."""
    pipeline = RecordPipeline(lenient=lenient, default_tz=(context or {}).get("default_tz"), seen=MemorySeen())
    out = Intake()
    for outcome in pipeline.run(raw_records, ctx):
        if isinstance(outcome, Rejected):
            out.rejected.append(outcome)
            continue
        out.accepted.append(incoming(outcome.group, ctx, assessment_id=getattr(outcome.model, "assessment_id", None)))
        out.origins[(outcome.record_type, outcome.record_id)] = outcome.origin
    return out


__all__ = ["Intake", "Rejected", "content_hash", "incoming", "parse_body", "shared_entry", "take"]
