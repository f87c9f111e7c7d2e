"""The import direction's run: FHIR resources -> ``ims-record/1`` records, with state.

:mod:`ims_fhir.mapping.reverse` maps (pure: no I/O, no validation); this package holds
what a run needs around it: the resource index in SQLite (:mod:`.index`), the run that
validates resources and rebuilt records and orders the outcomes (:mod:`.run`), and the
normal form of a record (:mod:`.normalise`). ``ims-fhir import`` and ``pull`` use it
through :mod:`ims_fhir.importer`.

- :func:`reverse_resources` -- the whole set in memory, one :class:`ImportResult`;
- :class:`ReverseRun` -- ``add()`` resources, then iterate ``outcomes()``: for big inputs
  and for callers that stream;
- :func:`normalise` -- the normal form in which ``reverse(forward(r)) == normalise(r)``.
"""

from __future__ import annotations

from ..mapping.reverse.outcomes import ImportedRecord, ImportResult, Outcome, ReportItem
from .index import ResourceIndex
from .normalise import normalise, normalise_source
from .run import ReverseRun, reverse_resources

__all__ = ["ImportResult", "ImportedRecord", "Outcome", "ReportItem", "ResourceIndex", "ReverseRun", "normalise",
           "normalise_source", "reverse_resources"]
