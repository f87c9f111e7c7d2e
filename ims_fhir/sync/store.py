"""The outbox and ledger: what the sync service must send, and what became of it.

Terms:

- *record*: one IMS record, keyed ``(record_type, record_id)`` within the service's one
  source, stored converted (its :class:`~ims_fhir.mapping.MappedRecord`) with a content
  hash and a *revision* that goes up each time the content changes.
- *delivery*: one record for one target. Its *state*:

  ``queued``   waiting to be sent (also after a transient failure, until ``next_attempt_at``)
  ``sending``  claimed by a worker under a *lease* (owner + expiry); a lease that expires
               (the worker died) makes the delivery claimable again
  ``synced``   the server holds the record's revision ``synced_revision``; ``resources``
               lists the server's ids and versions of its resources
  ``kept``     the record's resource was on the server before (a hospital's Patient matched
               by health number): it is the server's, referenced and never written
               ("kept (server-owned)"); final like ``synced``
  ``conflict`` the server's version moved since the adapter wrote it (edited at the hospital):
               not overwritten; a conflict is recorded (:class:`TargetState`) until resolved
  ``failed``   the server refused the record (4xx); ``outcome`` holds its OperationOutcome.
               Not retried on its own: fix and re-post the record, or ask for a retry
  ``dead``     transient failures (connection, 5xx, 429) went on past the retry limit
               *and* past the maximum age, or conflicts (409/412) past the retry limit
               (see *attempt*)

- *patient*: the patient a record belongs to (a patient record: itself; an assessment or
  treatment: its ``patient_id``; a practitioner: none). The records of one patient are
  sent to a target in order (kind first, as below, then arrival): a delivery is not
  claimable while an earlier delivery of the same patient for the same target is queued
  or sending, so several workers never reorder one patient's records.
- *attempt*: one answer that counts against a delivery: a refusal by the server or a
  transport/server failure (connection, timeout, 5xx, 429). A send cut short by a crash
  or an expired lease is no attempt. Dead-lettering is by cause and age: a refusal is
  ``failed`` at once; a conflict (409/412, a clash with a concurrent write) is retried and
  ``dead`` after ``max_attempts``; a transient failure is ``dead`` only after ``max_attempts`` attempts
  *and* ``dead_after`` seconds since the first failure of the streak (72 h by default),
  so an outage of hours never kills a queue.
- *event*: one line of a delivery's history (queued, sending, synced, failed, retry ...).

The storage sits behind :class:`Outbox`: SQLite (:mod:`.sqlite`, one host, the embedded
default) or PostgreSQL (:mod:`.postgres`, ``SELECT ... FOR UPDATE SKIP LOCKED`` claims, for
several workers on several hosts); both share their SQL in :mod:`.sql` and apply their
versioned schema migrations (table ``schema_version``) when opened. Every method is one
transaction. Times are seconds since the epoch, passed in by the caller (no clock in here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..fhir.diff import FieldChange

STATES = ("queued", "sending", "synced", "kept", "conflict", "failed", "dead")

#: order in which record kinds are sent: what others refer to goes first
KIND_RANK = {"practitioner": 0, "patient": 0, "assessment": 1, "treatment": 2}

#: default age (seconds since the first transient failure) before a delivery may be ``dead``
DEAD_AFTER = 72 * 3600.0

#: bucket bounds (seconds) of the transaction latency histogram
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A validated, converted record ready for the outbox."""

    record_type: str
    record_id: str
    content_hash: str
    group: bytes  # fhir.bundles.group_to_bytes of its MappedRecord
    #: ``(record_type, record_id)`` this record must be sent after (a treatment's assessment)
    waits_for: tuple[str, str] | None = None
    #: conditional-create entries of its shared resources (a Patient/Practitioner), by resource id
    shared: dict[str, bytes] = field(default_factory=dict)
    #: the patient this record belongs to: records of one patient are sent in order
    patient: str | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """What the outbox did with one incoming record: ``queued`` (new or changed) or ``unchanged``."""

    record_type: str
    record_id: str
    result: str
    revision: int


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a worker has claimed: the record's content at the claimed revision."""

    target: str
    record_type: str
    record_id: str
    revision: int
    group: bytes
    #: attempts counted before this claim (refusals and transient failures, never crashes)
    attempts: int


@dataclass(frozen=True, slots=True)
class Result:
    """What happened to one claimed delivery.

    ``kind``: ``synced`` (``resources`` = server ids and versions), ``kept`` (the same, for a
    server-owned resource that was referenced, not written), ``version_conflict`` (not written:
    the server's version moved since the adapter wrote it; ``error`` names the recorded
    conflict; the delivery rests in state ``conflict`` until resolved), ``rejected`` (the server
    refused it: ``status`` + ``outcome``), ``conflict`` (the server refused it for a clash with
    a concurrent write, 409/412: retried, ``dead`` after ``max_attempts``), ``transient``
    (worth another try later).
    """

    record_type: str
    record_id: str
    kind: str
    revision: int
    resources: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None
    error: str | None = None
    outcome: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    target: str
    state: str
    attempts: int
    revision: int
    synced_revision: int | None
    server_id: str | None
    server_version: str | None
    resources: list[dict[str, Any]]
    http_status: int | None
    error: str | None
    outcome: dict[str, Any] | None
    queued_at: float | None
    updated_at: float | None
    synced_at: float | None
    next_attempt_at: float | None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "state": self.state, "attempts": self.attempts,
                               "record_revision": self.revision}
        if self.state == "synced" or self.synced_revision is not None:
            out.update(synced_revision=self.synced_revision, server_id=self.server_id,
                       server_version=self.server_version, resources=self.resources)
        if self.state in ("failed", "dead", "queued") and (self.error or self.outcome):
            out.update(http_status=self.http_status, error=self.error, outcome=self.outcome)
        out.update(queued_at=self.queued_at, updated_at=self.updated_at, synced_at=self.synced_at)
        if self.state == "queued":
            out["next_attempt_at"] = self.next_attempt_at
        return out


@dataclass(frozen=True, slots=True)
class RecordStatus:
    record_type: str
    record_id: str
    revision: int
    received_at: float
    updated_at: float
    deliveries: list[DeliveryStatus]


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    target: str
    record_type: str
    record_id: str
    revision: int
    event: str
    detail: str | None


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed or dead delivery, for the dashboard."""

    target: str
    record_type: str
    record_id: str
    state: str
    attempts: int
    http_status: int | None
    error: str | None
    outcome: dict[str, Any] | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class Stats:
    """What ``/metrics`` shows: depth per (target, state), counters and the latency histogram."""

    depth: dict[tuple[str, str], int]
    counters: dict[tuple[str, str], float]  # (name, target) -> value
    latency: dict[str, tuple[list[int], int, float]]  # target -> (cumulative bucket counts, count, sum)


# -- per-target state: identity map, conflicts, audit trail ---------------------------------------
#
# Terms (issue 9):
#
# - *identity*: what a target server calls one of the clinic's resources: per target and per
#   business identifier (resource type, system, value), the server's id, the version the adapter
#   last wrote or saw, the *owner*, and the hash of the content the adapter last wrote.
# - *owner*: ``clinic`` (the adapter created the resource: the clinic's edits are sent as updates,
#   each with ``If-Match`` on the version last written) or ``server`` (the resource was on the
#   server before, matched by an identifier such as a health number: referenced, never written).
# - *conflict*: an update refused because the server's version moved since the adapter last
#   wrote it (someone at the hospital edited it). Holds both versions and a field-level diff;
#   ``open`` until resolved by ``resend`` (the clinic's version, sent as an explicit override),
#   ``accept`` (the server's version, imported back as the clinic's new revision) or ``dismiss``.
# - *audit entry*: one write (or deliberate non-write) to one target: what (type, server id,
#   business identifier, record), when, the version that resulted, and the outcome.
#
# These live in their own tables with their own methods (:class:`TargetState`), apart from the
# outbox, so that the push command's small local state file and the service's store share them.

OWNERS = ("clinic", "server")
CONFLICT_STATES = ("open", "resolved")
RESOLUTIONS = ("resend", "accept", "dismiss")


@dataclass(frozen=True, slots=True)
class Identity:
    """One resource of the clinic as one target knows it (see the terms above)."""

    target: str
    resource_type: str
    system: str
    value: str
    server_id: str
    version: str | None
    owner: str  # clinic | server
    content_hash: str | None = None
    record_type: str | None = None
    record_id: str | None = None
    updated_at: float | None = None
    #: the latest updates sent whose answers never came (``[{"resource": ..., "hash": ...}]``): a
    #: refused If-Match whose server version holds one of them is the adapter's own write, not an edit
    pending: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "resourceType": self.resource_type, "system": self.system,
                "value": self.value, "server_id": self.server_id, "version": self.version, "owner": self.owner,
                "record_type": self.record_type, "record_id": self.record_id, "updated_at": self.updated_at}


@dataclass(frozen=True, slots=True)
class Conflict:
    """An update the adapter did not make because the server's version had moved."""

    id: int
    target: str
    resource_type: str
    server_id: str
    record_type: str | None
    record_id: str | None
    base_version: str | None  # the version the adapter last wrote (its If-Match)
    server_version: str | None
    clinic_resource: dict[str, Any]
    server_resource: dict[str, Any] | None
    diff: list[FieldChange]
    state: str  # open | resolved
    resolution: str | None
    detected_at: float
    resolved_at: float | None = None
    detail: str | None = None
    #: content hash of the clinic's version (what ``dismiss`` and ``resend`` remember as written)
    clinic_hash: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "target": self.target, "resourceType": self.resource_type, "server_id": self.server_id,
                "record_type": self.record_type, "record_id": self.record_id, "base_version": self.base_version,
                "server_version": self.server_version, "state": self.state, "resolution": self.resolution,
                "detected_at": self.detected_at, "resolved_at": self.resolved_at, "detail": self.detail,
                "diff": [c.as_dict() for c in self.diff], "clinic_resource": self.clinic_resource,
                "server_resource": self.server_resource}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One write (or deliberate non-write: kept, conflict) to one target."""

    at: float
    target: str
    resource_type: str
    outcome: str  # created | updated | unchanged | kept (server-owned) | conflict | override | rejected
    server_id: str | None = None
    version: str | None = None
    system: str | None = None
    value: str | None = None
    record_type: str | None = None
    record_id: str | None = None
    transaction: str | None = None  # the Provenance (or request) that carried the write
    detail: str | None = None
    seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "target": self.target, "resourceType": self.resource_type,
                "server_id": self.server_id, "version": self.version, "system": self.system, "value": self.value,
                "record_type": self.record_type, "record_id": self.record_id, "outcome": self.outcome,
                "transaction": self.transaction, "detail": self.detail}


class TargetState(Protocol):
    """Identity map, conflicts and audit trail per target (see the terms above)."""

    def identity(self, target: str, resource_type: str, system: str, value: str) -> Identity | None: ...

    def identities_of(self, target: str,
                      keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], Identity]:
        """The identities the map holds of these ``(resource type, system, value)`` keys, read at once."""

    def identities(self, target: str, *, resource_type: str | None = None, owner: str | None = None,
                   limit: int = 1000) -> list[Identity]: ...

    def put_identities(self, identities: list[Identity], *, now: float, force: bool = False) -> None:
        """Insert or replace, by (target, resource type, system, value); a version older than the
        one held for the same server id is ignored, unless ``force`` (putting an identity back)."""

    def identity_by_server_id(self, target: str, resource_type: str, server_id: str) -> Identity | None: ...

    def set_content_hash(self, target: str, resource_type: str, system: str, value: str,
                         content_hash: str | None) -> None:
        """Set (or clear, with None) the content hash last written of one identity."""

    def set_pending(self, target: str, writes: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        """Remember updates sent without an answer: ``(resource type, system, value, {"resource": the
        resource as sent, "hash": its content hash})`` each, added to the identity's latest few;
        :meth:`put_identities` clears them (an answer came)."""

    def forget_identities(self, target: str) -> int:
        """Drop a target's identity map (it is rebuilt by searching); returns how many."""

    def open_conflict(self, conflict: Conflict, *, now: float) -> int:
        """Record a conflict; one already open for the same resource is updated. Returns its id."""

    def conflict(self, conflict_id: int) -> Conflict | None: ...

    def conflicts(self, *, state: str | None = "open", target: str | None = None,
                  limit: int = 100) -> list[Conflict]: ...

    def resolve_conflict(self, conflict_id: int, resolution: str, *, now: float, detail: str | None = None) -> bool:
        """Mark an open conflict resolved; False if it is not open."""

    def note_conflict(self, conflict_id: int, detail: str) -> bool:
        """Say why an open conflict is still open (a resolution that failed); False if it is not open."""

    def add_audit(self, entries: list[AuditEntry]) -> None: ...

    def audit(self, *, target: str | None = None, record: tuple[str, str] | None = None,
              server_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest audit entries first."""


class Storing(Protocol):
    """Records handed to the outbox part by part and stored in one transaction (:meth:`Outbox.storing`)."""

    #: the result of each record added, in order, once the ``storing`` block has ended
    stored: list[Stored]

    def add(self, records: list[Incoming]) -> None:
        """Store these too (now, or when the block ends)."""


@dataclass
class Collected:
    """:class:`Storing` that keeps the parts and stores them all when the block ends (with :meth:`Outbox.put`)."""

    records: list[Incoming] = field(default_factory=list)
    stored: list[Stored] = field(default_factory=list)

    def add(self, records: list[Incoming]) -> None:
        self.records += records


class Outbox(TargetState, Protocol):
    """The storage interface of the sync service (see the module docstring), with the per-target
    state of issue 9 (identity map, conflicts, audit trail) that its worker and API use."""

    def put(self, records: list[Incoming], targets: list[str], *, now: float) -> list[Stored]:
        """Store records in one transaction; a changed record is queued again for every target."""

    def storing(self, targets: list[str], *, now: float) -> AbstractContextManager[Storing]:
        """A block that stores records as intake converts them (``add`` each part) in one
        transaction, as :meth:`put` would store them all; an exception in the block stores none.
        A storage may write each part as it comes (PostgreSQL does, while the next is converted)."""

    def claim(self, target: str, *, owner: str, limit: int, lease_seconds: float, now: float) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries of ``target``, the kinds others refer to first."""

    def shared_entries(self, resource_ids: Iterable[str]) -> dict[str, bytes]:
        """The conditional-create entries of the Patients/Practitioners the outbox holds among
        these resource ids, by id (one statement for a worker's whole claim)."""

    def record_group(self, record_type: str, record_id: str) -> bytes | None:
        """The converted record (``group_to_bytes`` of its MappedRecord, latest revision), if stored."""

    def release_abandoned(self, is_dead: Callable[[str], bool], *, now: float) -> int:
        """Queue again the deliveries leased by owners ``is_dead`` says are gone (a worker on this
        host that was killed), without waiting for their leases to expire; returns how many."""

    def complete(self, target: str, results: list[Result], *, owner: str, now: float, max_attempts: int,
                 backoff_base: float, backoff_cap: float, latency: float | None,
                 dead_after: float = DEAD_AFTER) -> None:
        """Record what happened to claimed deliveries (only those still leased by ``owner``); a
        transient failure is ``dead`` after ``max_attempts`` attempts and ``dead_after`` seconds."""

    def status(self, record_type: str, record_id: str) -> RecordStatus | None: ...

    def history(self, record_type: str, record_id: str, *, limit: int = 100) -> list[Event]: ...

    def retry(self, record_type: str, record_id: str, *, now: float, target: str | None = None) -> int:
        """Queue a record's failed or dead deliveries again (attempts reset); returns how many."""

    def retry_state(self, state: str, *, now: float, target: str | None = None) -> int:
        """Queue every delivery in ``state`` (failed or dead) again; returns how many."""

    def failures(self, *, limit: int = 20) -> list[Failure]: ...

    def recent(self, *, limit: int = 20) -> list[Event]:
        """The latest events over all records, newest first."""

    def stats(self) -> Stats: ...

    def pending(self, target: str | None = None, *, at_most: int | None = None) -> int:
        """Deliveries not yet in a final state (queued or sending); counted up to ``at_most`` only."""

    def settle_conflict(self, target: str, record_type: str, record_id: str, *, state: str, detail: str,
                        now: float) -> bool:
        """After a conflict's resolution: its delivery leaves ``conflict`` for ``state`` (``synced`` or
        ``queued``). False when the delivery is not in conflict."""

    def ping(self) -> None:
        """Raise if the storage cannot be reached."""

    def close(self) -> None: ...


__all__ = ["CONFLICT_STATES", "DEAD_AFTER", "KIND_RANK", "LATENCY_BUCKETS", "OWNERS", "RESOLUTIONS", "STATES", "AuditEntry",
           "Claimed", "Collected", "Conflict", "DeliveryStatus", "Event", "Failure", "FieldChange", "Identity", "Incoming",
           "Outbox", "RecordStatus", "Result", "Stats", "Stored", "Storing", "TargetState"]
