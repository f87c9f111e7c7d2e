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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..diagnoses import count_of
from ..fhir.bundles import SHARED_TYPES, entry_for, group_from_bytes, group_to_bytes
from ..mapping import MappedRecord, MappingContext
from ..mapping.context import DiagnosisCount
from ..pipeline import MemorySeen, RecordPipeline
from ..records.readers import RawRecord, read_body
from ..records.validation import record_id_of
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


def incoming(group: MappedRecord, ctx: MappingContext, *, assessment_id: str | None = None,
             patient_id: str | None = None) -> Incoming:
    body = group_to_bytes(group)
    shared = {r["id"]: shared_entry(r, ctx.organization_id) for r in group.resources
              if r["resourceType"] in SHARED_TYPES}
    waits = ("assessment", assessment_id) if group.record_type == "treatment" and assessment_id else None
    patient = group.record_id if group.record_type == "patient" else patient_id
    return Incoming(group.record_type, group.record_id, content_hash(body), body, waits, shared, patient)


def body_diagnoses(raw_records: list[RawRecord], earlier: DiagnosisCount | None = None) -> DiagnosisCount:
    """The diagnosis count of an assessment (:mod:`ims_fhir.diagnoses`): of the body's own record
    (the first of an id; 0 without diagnoses), else what ``earlier`` knows (the stored one)."""
    in_body: dict[str, int] = {}
    for raw in raw_records:
        record_id = record_id_of(raw.data)
        if raw.record_type == "assessment" and record_id is not None and record_id not in in_body:
            found = count_of(raw.record_type, raw.data)
            in_body[record_id] = found[1] if found is not None else 0

    def count(assessment_id: str) -> int | None:
        if assessment_id in in_body:
            return in_body[assessment_id]
        return earlier(assessment_id) if earlier is not None else None

    return count


def stored_diagnoses(group_of: Callable[[str, str], bytes | None]) -> DiagnosisCount:
    """The diagnosis count of an assessment the outbox holds (its Conditions; ``group_of`` is
    :meth:`~ims_fhir.sync.store.Outbox.record_group`)."""
    known: dict[str, int | None] = {}  # one request: each assessment read once, however many sessions name it

    def count(assessment_id: str) -> int | None:
        if assessment_id not in known:
            body = group_of("assessment", assessment_id)
            known[assessment_id] = None if body is None else sum(
                1 for r in group_from_bytes(body).resources if r["resourceType"] == "Condition")
        return known[assessment_id]

    return count


#: accepted records handed to ``take``'s sink at a time
PART = 50


def take(raw_records: list[RawRecord], ctx: MappingContext, *, lenient: bool = False,
         context: dict[str, Any] | None = None, earlier_diagnoses: DiagnosisCount | None = None,
         sink: Callable[[list[Incoming]], None] | None = None) -> Intake:
    """Validate and convert (:class:`~ims_fhir.pipeline.RecordPipeline`, as ``convert`` does);
    every record ends accepted or rejected with every reason.

    ``sink`` (:meth:`~ims_fhir.sync.store.Storing.add`) gets the accepted records :data:`PART`
    at a time as they are converted, so that a storage may write them meanwhile.

    A treatment names the diagnoses of its assessment when the body holds the assessment, or
    else ``earlier_diagnoses`` knows it (:func:`stored_diagnoses`: an assessment posted before);
    posted before its assessment, it names the panel only (it is not converted again when the
    assessment comes)."""
    pipeline = RecordPipeline(lenient=lenient, default_tz=(context or {}).get("default_tz"), seen=MemorySeen())
    ctx = ctx.with_diagnoses(body_diagnoses(raw_records, earlier_diagnoses))
    out = Intake()
    handed = 0
    for outcome in pipeline.run(raw_records, ctx):
        if isinstance(outcome, Rejected):
            out.rejected.append(outcome)
            continue
        out.accepted.append(incoming(outcome.group, ctx, assessment_id=getattr(outcome.model, "assessment_id", None),
                                     patient_id=getattr(outcome.model, "patient_id", None)))
        out.origins[(outcome.record_type, outcome.record_id)] = outcome.origin
        if sink is not None and len(out.accepted) - handed >= PART:
            sink(out.accepted[handed:])
            handed = len(out.accepted)
    if sink is not None and handed < len(out.accepted):
        sink(out.accepted[handed:])
    return out


__all__ = ["Intake", "Rejected", "body_diagnoses", "content_hash", "incoming", "parse_body", "shared_entry",
           "stored_diagnoses", "take"]
