"""The one sending engine below ``ims-fhir push`` and the sync worker.

Modules: :mod:`.engine` (:class:`Sender`, :class:`Strategy`, :class:`TransactionStrategy`,
the results :class:`BundleResult`, :class:`RecordResult`, :class:`Refusal`), :mod:`.split`
(a refused transaction -> one part per record), :mod:`.outcomes` (what the server's
answers mean: entry outcomes, ambiguous matches, OperationOutcomes).

Typical use::

    sender = Sender(client, scheme=IdentifierScheme.of(source))
    result = sender.send(bundle)
    for record in result.record_results(keys):
        ...  # record.state: accepted | refused | not_sent
"""

from __future__ import annotations

from .engine import (
    DELIVERED_TYPES,
    BundleResult,
    IdentityMap,
    RecordResult,
    RecordState,
    Refusal,
    Sender,
    Strategy,
    TransactionStrategy,
    refusal,
)
from .outcomes import (
    HAPI_AMBIGUOUS_MATCH,
    EntryResult,
    entry_outcome,
    entry_results,
    is_ambiguous_match,
    issues_as_dicts,
    operation_outcome,
    status_of,
)
from .split import patient_keys, patient_parts, record_parts, references, shared_keys

__all__ = ["DELIVERED_TYPES", "HAPI_AMBIGUOUS_MATCH", "BundleResult", "EntryResult", "IdentityMap", "RecordResult", "RecordState",
           "Refusal", "Sender", "Strategy", "TransactionStrategy", "entry_outcome", "entry_results",
           "is_ambiguous_match", "issues_as_dicts", "operation_outcome", "record_parts", "patient_keys",
           "patient_parts", "references", "refusal", "shared_keys", "status_of"]
