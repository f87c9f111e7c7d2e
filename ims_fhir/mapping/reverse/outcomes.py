"""What the reverse mapping yields for a set of FHIR resources.

Every resource read ends in exactly one of these states (counted in
:class:`ImportResult.counts`):

- *mapped*: it went into an imported record (a Patient into a patient record, a member
  Observation into its assessment) or served as its context (the clinic's Organization,
  an Encounter a record refers to);
- *rejected*: it could not be mapped (invalid FHIR, no ``ims-record/1`` counterpart, a
  conflicting duplicate), or it went into a record that then failed the record models;
  it is listed in a :class:`~ims_fhir.rejects.Rejected` with every reason;
- *duplicate*: the same resource (same ``Type/id`` or ``fullUrl``, same content) was
  already read, e.g. a Patient repeated in every transaction Bundle.

A :class:`ReportItem` names one element of a mapped (or rejected) resource that the
record could not hold, a reference that could not be resolved, or a value the import
had to assume, with the reason: nothing is dropped without a word.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import Problem
from ...rejects import Rejected


@dataclass(frozen=True, slots=True)
class ReportItem:
    """One element not mapped (or one assumption made) in one resource."""

    #: ``Type/id``, else the Bundle entry's ``fullUrl``, else ``Type@origin``
    resource: str
    origin: str
    #: FHIR path of the element, e.g. ``Procedure.usedCode`` or ``Observation.component[2]``
    path: str
    #: ``not_mapped``, ``unknown_code``, ``unresolved_reference``, ``assumed``
    rule: str
    message: str
    record_type: str | None = None
    record_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"resource": self.resource, "origin": self.origin, "path": self.path, "rule": self.rule,
                "message": self.message, "record_type": self.record_type, "record_id": self.record_id}


@dataclass(frozen=True, slots=True)
class ImportedRecord:
    """One valid ``ims-record/1`` record rebuilt from FHIR, in the JSON-document shape."""

    record_type: str
    #: the record as the models normalise it (``record_dict`` of the validated model)
    data: dict[str, Any]
    #: base of the identifier systems it was found under; None for foreign resources
    system_base: str | None
    origin: str
    resources: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return str(self.data["id"])


Outcome = ImportedRecord | Rejected | ReportItem


@dataclass
class ImportResult:
    """Everything one reverse run produced, in a deterministic order."""

    records: list[ImportedRecord] = field(default_factory=list)
    rejects: list[Rejected] = field(default_factory=list)
    report: list[ReportItem] = field(default_factory=list)
    #: system_base -> source (``clinic_id``, ``clinic_name``, ``system_base``) found in the Organizations
    sources: dict[str, dict[str, str]] = field(default_factory=dict)
    #: resources ``read``, ``mapped``, ``rejected``, ``duplicate``
    counts: dict[str, int] = field(default_factory=dict)

    def by_type(self, record_type: str) -> list[dict[str, Any]]:
        return [r.data for r in self.records if r.record_type == record_type]


@dataclass
class Built:
    """A record being rebuilt: its data so far, what it came from, what went wrong."""

    record_type: str
    data: dict[str, Any] = field(default_factory=dict)
    system_base: str | None = None
    #: (sequence number, label, origin) of every resource used, the main one first
    sources: list[tuple[int, str, str]] = field(default_factory=list)
    #: problems found while rebuilding (record field paths), before the models have their say
    problems: list[Problem] = field(default_factory=list)
    report: list[ReportItem] = field(default_factory=list)
