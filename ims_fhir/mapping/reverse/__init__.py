"""FHIR R4 resources -> ``ims-record/1`` records: the import direction of the mapping.

Pure, like the forward mapping: resources (plain dicts, written by this project or by
anyone else) in, records being built, rejects and report items out; codes are decoded
through the same :class:`~ims_fhir.terminology.Terminology` tables the forward mapping
encodes with. No I/O and no validation here: the resource set is reached through
:class:`~.resources.ResourceLookup`, and the run that indexes resources (SQLite),
validates them and the rebuilt records is :mod:`ims_fhir.importing`.

Modules: ``resources`` (entries, reference keys, the lookup interface), ``context``
(element bookkeeping, identities), ``codes`` (the tables read backwards), ``people``,
``assessment``, ``treatment`` (one mapper per record type), ``outcomes`` (what comes out).
"""

from __future__ import annotations

from .outcomes import Built, ImportedRecord, ImportResult, Outcome, ReportItem
from .resources import Entry, ResourceLookup

__all__ = ["Built", "Entry", "ImportResult", "ImportedRecord", "Outcome", "ReportItem", "ResourceLookup"]
