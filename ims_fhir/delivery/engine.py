"""The sending engine: transaction Bundles to one FHIR server, results per record.

Terms:

- :class:`Sender`: sends Bundles to one target through a :class:`Strategy`, with the
  target's :class:`~ims_fhir.identifiers.IdentifierScheme` (given, or read from each
  Bundle's clinic Organization) telling which record every entry belongs to.
- :class:`Strategy`: how one Bundle reaches the server. :class:`TransactionStrategy`
  (the only one today) posts it as one transaction and, when the server refuses it
  (4xx), posts each record's part alone (:func:`~.split.record_parts`), so only the
  records the server really refuses fail. A batch or per-resource strategy for servers
  without transactions fits the same interface (chosen from the CapabilityStatement).
- :class:`BundleResult`: what came back: an :class:`~.outcomes.EntryResult` per entry that
  went through and a :class:`Refusal` per part the server refused;
  :meth:`BundleResult.record_results` folds them into one :class:`RecordResult` per record
  (``accepted`` / ``refused`` / ``not_sent``).
- :class:`IdentityMap`: where a sender reports the server id and version of every entry
  that went through (keyed by business identifier), for If-Match updates and for
  referencing resources the hospital owns. Optional. A strategy that updates with
  ``If-Match`` sets ``request.ifMatch`` from it; a 412 to such an entry is then a version
  conflict, not an ambiguous match (:func:`~.outcomes.is_ambiguous_match` tells them apart).

Errors that concern the whole target rather than a record (connection, 5xx/429 after the
client's retries, 401/403, capability) are raised, never turned into refusals.
Concurrency is bounded per target: a Sender holds one client (one connection pool) and
sends one Bundle at a time; parallel sending means several Senders of a target, one per
thread, up to the target's limit (the sync worker keeps one Sender per target).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..client import FhirClient
from ..errors import FhirAmbiguousMatchError, FhirAuthError, FhirClientSideError, FhirError
from ..fhir.bundles import SHARED_TYPES
from ..identifiers import IdentifierScheme, RecordKey
from .outcomes import (
    EntryResult,
    ambiguous_entries,
    entry_results,
    is_ambiguous_match,
    issues_as_dicts,
    operation_outcome,
    status_of,
)
from .split import record_parts

Bundle = dict[str, Any]
#: The resource types ims-fhir delivers (what a target must accept).
#: every resource type the mapping emits and delivery writes (what a server, or a SMART token, must allow)
DELIVERED_TYPES = ("Organization", "Patient", "Practitioner", "Encounter", "Observation", "Procedure", "BodyStructure",
                   "Condition", "Consent", "AdverseEvent", "EpisodeOfCare", "ServiceRequest")
RecordState = Literal["accepted", "refused", "not_sent"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A part of a transaction the server refused (4xx), and the records it fails.

    ``records``: the record the part is about and, for an ambiguous match, first the
    shared record (patient, practitioner) whose identifier matched several resources.
    """

    records: tuple[RecordKey, ...]
    part: Bundle
    error: FhirError

    @property
    def status(self) -> int | None:
        return status_of(self.error)

    def issues(self) -> list[dict[str, Any]]:
        return issues_as_dicts(self.error)

    def operation_outcome(self) -> dict[str, Any]:
        return operation_outcome(self.error)


@dataclass(frozen=True, slots=True)
class RecordResult:
    """What happened to one record of a Bundle."""

    record: RecordKey
    state: RecordState
    entries: tuple[EntryResult, ...] = ()
    refusal: Refusal | None = None


@dataclass
class BundleResult:
    """The result of sending one Bundle: entries that went through, parts refused."""

    entries: list[EntryResult] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)

    def record_results(self, records: Iterable[RecordKey]) -> list[RecordResult]:
        """One result per record asked about: ``accepted`` when its entries went through,
        ``refused`` when a refusal names it, else ``not_sent`` (its entries only travelled
        in a part refused for another record: send it again)."""
        entries: dict[RecordKey, list[EntryResult]] = {}
        for entry in self.entries:
            if entry.record is not None:
                entries.setdefault(entry.record, []).append(entry)
        refused: dict[RecordKey, Refusal] = {}
        for refusal in self.refusals:
            for key in refusal.records:
                refused.setdefault(key, refusal)
        out = []
        for key in records:
            if key in entries:
                out.append(RecordResult(key, "accepted", tuple(entries[key])))
            elif key in refused:
                out.append(RecordResult(key, "refused", refusal=refused[key]))
            else:
                out.append(RecordResult(key, "not_sent"))
        return out


class Strategy(Protocol):
    """How one Bundle reaches a server (see the module docstring)."""

    def send(self, client: FhirClient, bundle: Bundle, scheme: IdentifierScheme | None) -> BundleResult: ...


class IdentityMap(Protocol):
    """Receives the server id and version of every entry that went through."""

    def remember(self, result: EntryResult) -> None: ...


_REFUSED = (FhirClientSideError, FhirAmbiguousMatchError)


class TransactionStrategy:
    """One transaction per Bundle; on a refusal, one transaction per record part.

    ``prepare`` turns each Bundle actually posted (the whole one, then each part) into its
    final form, e.g. with its Provenance (:func:`ims_fhir.mapping.provenance.with_provenance`):
    the parts are cut from the Bundle as given, so entries that refer to every other entry
    stay out of the split.
    """

    def __init__(self, prepare: Callable[[Bundle], Bundle] | None = None) -> None:
        self.prepare = prepare

    def send(self, client: FhirClient, bundle: Bundle, scheme: IdentifierScheme | None) -> BundleResult:
        result = BundleResult()
        final = self.prepare or (lambda b: b)
        original, bundle = bundle, final(bundle)
        try:
            response = client.send_bundle(bundle)
        except FhirAuthError:
            raise
        except _REFUSED as exc:
            parts = record_parts(original, scheme)
            if len(parts) <= 1:
                result.refusals.append(refusal(bundle, exc, [key for key, _ in parts], scheme))
                return result
            for key, part in parts:
                part = final(part)
                try:
                    result.entries.extend(entry_results(part, client.send_bundle(part), scheme))
                except FhirAuthError:
                    raise
                except _REFUSED as part_exc:
                    result.refusals.append(refusal(part, part_exc, [key], scheme))
            return result
        result.entries.extend(entry_results(bundle, response, scheme))
        return result


def refusal(part: Bundle, error: FhirError, records: list[RecordKey], scheme: IdentifierScheme | None) -> Refusal:
    """A refused part with the records it fails (see :class:`Refusal`)."""
    keys = [k for k in records if k[0] != "resource"]
    if scheme is not None and is_ambiguous_match(error, part):
        entries = part.get("entry", [])
        candidates = []
        for n, entry in enumerate(entries):
            resource = entry["resource"]
            key = scheme.record_of(resource) if resource["resourceType"] in SHARED_TYPES else None
            if key is not None and key[0] != "source" and key not in keys:
                candidates.append(n)
        at_fault = [scheme.record_of(entries[n]["resource"]) for n in ambiguous_entries(error, part, candidates)]
        keys = [k for k in at_fault if k is not None] + keys
    return Refusal(tuple(dict.fromkeys(keys)), part, error)


class Sender:
    """Sends transaction Bundles to one target (see the module docstring)."""

    def __init__(self, client: FhirClient, *, scheme: IdentifierScheme | None = None,
                 strategy: Strategy | None = None, identities: IdentityMap | None = None) -> None:
        self.client = client
        self.scheme = scheme
        self.strategy: Strategy = strategy or TransactionStrategy()
        self.identities = identities

    def send(self, bundle: Bundle) -> BundleResult:
        scheme = self.scheme or IdentifierScheme.from_bundle(bundle)
        result = self.strategy.send(self.client, bundle, scheme)
        if self.identities is not None:
            for entry in result.entries:
                self.identities.remember(entry)
        return result


__all__ = ["DELIVERED_TYPES", "BundleResult", "IdentityMap", "RecordResult", "RecordState", "Refusal", "Sender", "Strategy",
           "TransactionStrategy", "refusal"]
