"""The one rejection type: a record (or a FHIR resource) that could not be taken, with every reason.

Both directions use it:

- records -> FHIR (``convert``, ``push``, ``POST /records``): a record that failed the
  record models, a duplicate id, an unresolved reference (``--strict-refs``), a mapping
  error. ``resource`` is None.
- FHIR -> records (``import``, ``pull``): a resource that could not be mapped, or a record
  rebuilt from resources that failed the models. ``resource`` names the resource
  (``Type/id``, a ``fullUrl`` or ``Type@origin``); ``record`` is the record as far as it
  could be rebuilt, ``resources`` every resource it came from.

:meth:`Rejected.as_dict` is the line written to ``rejects.ndjson`` (convert) or
``FILE.rejects.ndjson`` (import); the two shapes are the documented ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import Problem


@dataclass(frozen=True, slots=True)
class Rejected:
    """See the module docstring."""

    record_type: str | None
    record_id: str | None
    #: where it was read: ``file:line``, ``file.csv:line``, ``file.json:patients[3]``, ``line 3`` (a request body)
    origin: str
    problems: tuple[Problem, ...]
    #: FHIR -> records only: the resource label
    resource: str | None = None
    #: FHIR -> records only: the record as far as it could be rebuilt
    record: dict[str, Any] | None = None
    #: FHIR -> records only: every resource the record was built from
    resources: tuple[str, ...] = ()

    @property
    def rules(self) -> set[str]:
        return {p.rule for p in self.problems}

    def as_dict(self) -> dict[str, Any]:
        if self.resource is None:
            return {"record_type": self.record_type, "id": self.record_id, "origin": self.origin,
                    "problems": [p.as_dict() for p in self.problems]}
        out: dict[str, Any] = {
            "resource": self.resource,
            "origin": self.origin,
            "record_type": self.record_type,
            "id": self.record_id,
            "problems": [p.as_dict() for p in self.problems],
        }
        if self.record is not None:
            out["record"] = self.record
        if len(self.resources) > 1:
            out["resources"] = list(self.resources)
        return out


__all__ = ["Rejected"]
