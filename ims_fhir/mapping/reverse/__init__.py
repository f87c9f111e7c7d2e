"""FHIR R4 resources -> ``ims-record/1`` records: the import direction of the mapping.

Pure, like the forward mapping: resources (plain dicts, written by this project or by
anyone else) in, records, rejects and a report out; codes are decoded through the same
:class:`~ims_fhir.terminology.Terminology` tables the forward mapping encodes with. The
only state is the resource index, an SQLite database on a connection the caller may
inject (in memory by default).

- :func:`reverse_resources` -- the whole set in memory, one :class:`ImportResult`;
- :class:`ReverseRun` -- ``add()`` resources, then iterate ``outcomes()``: for big inputs
  and for callers that stream (``ims-fhir import``, the ``pull`` of the sync engine);
- :func:`normalise` -- the normal form in which ``reverse(forward(r)) == normalise(r)``.

Modules: ``index`` (the resource set and reference resolution), ``context`` (element
bookkeeping, identities), ``codes`` (the tables read backwards), ``people``,
``assessment``, ``treatment`` (one mapper per record type), ``run`` (grouping, order,
validation of the rebuilt records), ``outcomes`` (what comes out), ``normalise``.
"""

from __future__ import annotations

from .index import ResourceIndex
from .normalise import normalise, normalise_source
from .outcomes import ImportedRecord, ImportResult, Outcome, ReportItem
from .run import ReverseRun, reverse_resources

__all__ = [
    "ImportResult",
    "ImportedRecord",
    "Outcome",
    "ReportItem",
    "ResourceIndex",
    "ReverseRun",
    "normalise",
    "normalise_source",
    "reverse_resources",
]
