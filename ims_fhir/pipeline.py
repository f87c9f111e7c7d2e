"""The core of the records -> FHIR direction: raw records in, ``Converted | Rejected`` out.

One path for every caller: ``ims-fhir convert`` (writers as sinks), ``ims-fhir push``
(Bundles streamed to the server) and ``POST /records`` (:mod:`ims_fhir.sync.intake`).
A record is validated against the record models (``lenient``: unknown fields ignored),
checked for a duplicate id among the records of its source (through a :class:`FirstSeen`
store: in memory, or on disk for millions of records) and, when asked, for references
to records that are not in the input; then mapped to FHIR (and, when asked, the
resources validated with the R4 models). Every problem of a record is listed; a bad
record, even a bug in a mapper, never stops the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from .errors import Problem
from .fhir.validation import validate_resource
from .mapping import MappedRecord, MappingContext, map_record
from .records.readers import RawRecord
from .records.validation import record_id_of, validate_record
from .rejects import Rejected


@dataclass(frozen=True, slots=True)
class Converted:
    """A valid record and its FHIR resources."""

    record_type: str
    record_id: str
    origin: str
    group: MappedRecord
    #: the validated record (e.g. a treatment's ``assessment_id``)
    model: BaseModel


Outcome = Converted | Rejected


class FirstSeen(Protocol):
    """Remembers which record ids a scope (a system base) has seen, and where first."""

    def first_seen(self, scope: str, record_type: str, record_id: str, origin: str) -> str | None: ...


class MemorySeen:
    """A :class:`FirstSeen` in memory (a request body; small inputs)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], str] = {}

    def first_seen(self, scope: str, record_type: str, record_id: str, origin: str) -> str | None:
        key = (scope, record_type, record_id)
        first = self._seen.get(key)
        if first is None:
            self._seen[key] = origin
        return first


#: (record type, model, scope) -> problems of references to records not in the input (``--strict-refs``)
RefCheck = Callable[[str, Any, str], list[Problem]]


class RecordPipeline:
    """Validate, de-duplicate and map records (see the module docstring)."""

    def __init__(self, *, lenient: bool = False, default_tz: str | None = None, seen: FirstSeen | None = None,
                 check_refs: RefCheck | None = None, validate_fhir: bool = False) -> None:
        self.lenient = lenient
        self.context = {"default_tz": default_tz} if default_tz else None
        self.seen: FirstSeen = seen if seen is not None else MemorySeen()
        self.check_refs = check_refs
        self.validate_fhir = validate_fhir

    def validate(self, raw: RawRecord) -> tuple[Any, list[Problem]]:
        """The record's model (None when invalid) and its validation problems."""
        if raw.record_type is None or raw.data is None or any(p.rule == "unknown_record_type" for p in raw.problems):
            return None, []
        return validate_record(raw.record_type, raw.data, context=self.context, lenient=self.lenient)

    def one(self, raw: RawRecord, ctx: MappingContext) -> Outcome:
        scope = ctx.source.system_base
        record_id = record_id_of(raw.data)
        problems = list(raw.problems)
        model, found = self.validate(raw)
        problems.extend(found)
        if raw.record_type is not None and raw.data is not None and record_id is not None and not any(
                p.rule == "unknown_record_type" for p in raw.problems):
            first = self.seen.first_seen(scope, raw.record_type, record_id, raw.origin)
            if first is not None:
                problems.append(Problem("id", "duplicate_id",
                                        f"{raw.record_type} id {record_id!r} was already used at {first}"))
        if model is not None and not problems and self.check_refs is not None:
            problems.extend(self.check_refs(raw.record_type or "", model, scope))
        group = None
        if model is not None and not problems:
            try:
                group = map_record(raw.record_type or "", model, ctx)
            except Exception as exc:  # a mapping bug must not stop the stream; the record is listed
                problems.append(Problem("(record)", "conversion_error",
                                        f"internal error while mapping: {type(exc).__name__}: {exc}"))
            if group is not None and self.validate_fhir:
                for res in group.resources:
                    problems.extend(validate_resource(res))
        if problems or group is None:
            return Rejected(raw.record_type, record_id, raw.origin,
                            tuple(_with_child_origin(p, raw.child_origins) for p in problems))
        return Converted(group.record_type, group.record_id, raw.origin, group, model)

    def run(self, raws: Iterable[RawRecord], ctx: MappingContext) -> Iterator[Outcome]:
        for raw in raws:
            yield self.one(raw, ctx)


def _with_child_origin(problem: Problem, origins: dict[str, str]) -> Problem:
    """Name the CSV child row a problem comes from (``sites[1].side`` -> treatment_sites.csv:7)."""
    if not origins:
        return problem
    for prefix, origin in origins.items():
        if problem.path == prefix or problem.path.startswith(prefix + "."):
            return Problem(problem.path, problem.rule, f"{problem.message} ({origin})")
    return problem


__all__ = ["Converted", "FirstSeen", "MemorySeen", "Outcome", "RecordPipeline", "RefCheck"]
