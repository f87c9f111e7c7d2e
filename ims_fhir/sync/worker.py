"""The sync worker: claims queued deliveries per target, sends them, writes the ledger.

One round (:meth:`SyncWorker.run_once`), for each target: claim up to ``batch_records``
due deliveries under a lease (patients and practitioners first, then assessments, then
treatments; a treatment waits while its assessment is still queued), pack them into
self-contained transaction Bundles, send each Bundle through the shared engine
(:class:`ims_fhir.delivery.Sender`, with the client's retry policy), and record each
record's result as soon as its Bundle is answered:

- its entries went through: ``synced`` with the server's ids and versions;
- the server refused it (4xx): ``failed`` with the server's OperationOutcome; but a
  conflict (409/412: a clash with a concurrent write) is queued again with backoff and
  ``dead`` only after ``max_attempts``;
- the target could not be reached or kept failing (connection, 5xx, 429, 401/403 after
  the client's retries): queued again with backoff; ``dead`` only after ``max_attempts``
  such attempts *and* ``dead_after_seconds`` since the first of them (72 h by default), so
  an outage of hours never kills a queue (see :mod:`.store`, *attempt*).

Crash safety: a claim is a lease in the outbox; a worker killed mid-send leaves its
deliveries ``sending`` until the lease expires, then any worker claims them again (a
worker on the same host re-queues at once the leases of a dead process there: when it
starts, and every ``lease_seconds / 4`` while it runs). An interrupted send is no attempt.
Sending again is safe because every entry is a conditional create or a conditional
update on a business identifier: the server ends with one copy whatever happened.
The lease must outlast one Bundle's send (the client's retry budget plus a read
timeout); :class:`WorkerOptions` checks it against the targets' retry policies.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..client import ClientConfig, FhirClient
from ..client.keyed_pool import KeyedPool
from ..client.throttle import Throttle
from ..delivery import operation_outcome, patient_keys, status_of
from ..errors import FhirError, UsageError
from ..fhir.bundles import BundlePacker, group_from_bytes
from ..identifiers import IdentifierScheme, RecordKey
from ..mapping.context import Resource
from .reconcile import KEPT, Sent, TargetSync
from .store import DEAD_AFTER, Claimed, Outbox, Result

log = logging.getLogger("ims_fhir.sync")


@dataclass(frozen=True, slots=True)
class Target:
    """A FHIR server the service sends to (from configuration only, never from a request)."""

    name: str
    client: ClientConfig


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    batch_records: int = 100
    bundle_size: int = 200
    lease_seconds: float = 300.0
    poll_seconds: float = 1.0
    #: deliveries (claims) before a record that keeps failing transiently is ``dead``
    max_attempts: int = 8
    backoff_base: float = 5.0
    backoff_cap: float = 600.0
    #: and seconds since the first failure of a streak, before a transiently failing record is ``dead``
    dead_after_seconds: float = DEAD_AFTER
    #: Bundles in flight at once per target; one patient's Bundles still go in order.
    concurrency: int = 1

    def __post_init__(self) -> None:
        if self.batch_records < 1 or self.bundle_size < 2 or self.max_attempts < 1:
            raise UsageError("worker: batch_records >= 1, bundle_size >= 2 and max_attempts >= 1 are needed")
        if not 1 <= self.concurrency <= 64:
            raise UsageError("worker: concurrency must be 1-64")
        if self.lease_seconds <= 0 or self.poll_seconds <= 0:
            raise UsageError("worker: lease_seconds and poll_seconds must be positive")
        if self.dead_after_seconds < 0:
            raise UsageError("worker: dead_after_seconds must not be negative")

    def check_lease(self, targets: list[Target]) -> None:
        """A lease shorter than one send could let a second worker send the same records concurrently."""
        for t in targets:
            longest = t.client.retry.total_budget + t.client.timeout.read
            if self.lease_seconds < longest:
                raise UsageError(f"worker lease_seconds ({self.lease_seconds:g}) is shorter than one send to target "
                                 f"{t.name!r} can take (retry budget + read timeout = {longest:g} s)")


def new_owner() -> str:
    """``host:pid:random``: who holds a lease, so that a restarted worker can tell a dead one."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True only for an owner on this host whose process is gone; anything else waits for its lease."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class SyncWorker:
    """Sends the outbox to the configured targets (see the module docstring)."""

    def __init__(self, outbox: Outbox, targets: list[Target], organization: Resource, options: WorkerOptions, *,
                 client_factory: Callable[[Target], FhirClient] | None = None,
                 clock: Callable[[], float] = time.time, owner: str | None = None) -> None:
        self.outbox = outbox
        self.targets = targets
        self.organization = organization
        self.options = options
        scheme = IdentifierScheme.from_organization(organization)
        if scheme is None:
            raise UsageError("worker: the clinic Organization carries no {system_base}/organization identifier")
        self.scheme = scheme
        self.clock = clock
        self.owner = owner or new_owner()
        self._client_factory = client_factory or (lambda target: FhirClient(target.client))
        self._clients: dict[str, FhirClient] = {}
        self._syncs: dict[str, TargetSync] = {}

    def client(self, target: Target) -> FhirClient:
        client = self._clients.get(target.name)
        if client is None:
            client = self._clients[target.name] = self._client_factory(target)
            if self.options.concurrency > 1:
                # one 429 back-off for the delivery threads; `concurrency` is also the
                # fan-out of a Bundle sent entry by entry
                client.transport.throttle = Throttle(concurrency=self.options.concurrency)
        return client

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._syncs.clear()

    # -- one round ----------------------------------------------------------------------

    def recover(self) -> int:
        """Queue again what a killed worker of this host left ``sending`` (other leases just expire)."""
        released = self.outbox.release_abandoned(owner_is_dead, now=self.clock())
        if released:
            log.info("re-queued %d deliveries left by a worker that stopped mid-send", released)
        return released

    def run_once(self) -> int:
        """One claim-and-send round over every target; returns how many deliveries it handled."""
        handled = 0
        for target in self.targets:
            claimed = self.outbox.claim(target.name, owner=self.owner, limit=self.options.batch_records,
                                        lease_seconds=self.options.lease_seconds, now=self.clock())
            if claimed:
                self._send(target, claimed)
                handled += len(claimed)
        return handled

    def _bundles(self, claimed: list[Claimed]) -> list[dict[str, Any]]:
        bodies: list[bytes] = []
        groups = [group_from_bytes(item.group) for item in claimed]
        # the Patients/Practitioners they refer to, read at once (a miss: referred to conditionally)
        shared = self.outbox.shared_entries(d.id for g in groups for d in g.dependencies)
        packer = BundlePacker(max_entries=self.options.bundle_size, organization=self.organization,
                              lookup=shared.get, remember=lambda rid, entry: None,
                              defer=lambda group: None, emit=lambda body, n: bodies.append(body))
        for group in groups:
            packer.add(group, final=True)
        packer.flush()
        return [orjson.loads(b) for b in bodies]

    def _send(self, target: Target, claimed: list[Claimed]) -> None:
        by_key = {(c.record_type, c.record_id): c for c in claimed}
        down: FhirError | None = None
        seen: set[tuple[str, str]] = set()
        bundles = self._bundles(claimed)
        ahead = self._deliver_concurrently(target, bundles) if self.options.concurrency > 1 else {}
        for index, bundle in enumerate(bundles):
            keys = []
            for entry in bundle["entry"]:
                key = self.scheme.record_of(entry["resource"])
                if key in by_key and key not in seen and key not in keys:
                    keys.append(key)
            seen.update(keys)
            started = time.monotonic()
            latency: float | None = None
            if down is None:
                try:
                    outcome: Sent
                    if index in ahead:  # sent already, concurrently with the others
                        done, latency = ahead[index]
                        if isinstance(done, FhirError):
                            raise done
                        outcome = done
                    else:
                        outcome = self.target_sync(target).send(bundle)
                        latency = time.monotonic() - started
                    results = self._results_sync(keys, by_key, outcome)
                except FhirError as exc:  # the target, not a record: try again later
                    down = exc
                    log.warning("target %s: send failed (%s): %d records queued for a later attempt",
                                target.name, type(exc).__name__, len(keys))
            if down is not None:
                results = [Result(k[0], k[1], "transient", by_key[k].revision, status=status_of(down),
                                  error=str(down)) for k in keys]
            self.outbox.complete(target.name, results, owner=self.owner, now=self.clock(),
                                 max_attempts=self.options.max_attempts, backoff_base=self.options.backoff_base,
                                 backoff_cap=self.options.backoff_cap, latency=latency,
                                 dead_after=self.options.dead_after_seconds)
            self._log(target, results)
        missing = [k for k in by_key if k not in seen]  # never packed (cannot happen, but never lose one)
        if missing:
            self.outbox.complete(target.name, [Result(k[0], k[1], "transient", by_key[k].revision,
                                                      error="not packed into a Bundle") for k in missing],
                                 owner=self.owner, now=self.clock(), max_attempts=self.options.max_attempts,
                                 backoff_base=self.options.backoff_base, backoff_cap=self.options.backoff_cap,
                                 latency=None, dead_after=self.options.dead_after_seconds)

    def _deliver_concurrently(self, target: Target, bundles: list[dict[str, Any]]
                              ) -> dict[int, tuple[Sent | FhirError, float]]:
        """Send ``bundles`` with up to ``concurrency`` in flight, a patient's in order (KeyedPool).

        Worker threads have their own clients sharing the target's throttle (one 429
        back-off) and, where the outbox keeps the target's state, their own
        :class:`~ims_fhir.sync.reconcile.TargetSync` over that one state (its methods are
        transactions, safe from several threads); the outcomes are recorded afterwards, in
        this thread, bundle by bundle.
        """
        shared = self.client(target)
        local = threading.local()
        made: list[FhirClient] = []
        outcomes: dict[int, tuple[Sent | FhirError, float]] = {}
        lock = threading.Lock()

        def job(index: int, bundle: dict[str, Any]) -> None:
            mine: Callable[[dict[str, Any]], Sent] | None = getattr(local, "send", None)
            if mine is None:
                worker = self._client_factory(target)
                worker.transport.throttle = shared.transport.throttle
                mine = TargetSync(worker, self.outbox, target.name, clock=self.clock).send
                local.send = mine
                with lock:
                    made.append(worker)
            started = time.monotonic()
            outcome: Sent | FhirError
            try:
                outcome = mine(bundle)
            except FhirError as exc:  # the target, not a record: recorded like a sequential failure
                outcome = exc
            with lock:
                outcomes[index] = (outcome, time.monotonic() - started)

        pool: KeyedPool[None] = KeyedPool(self.options.concurrency, on_done=lambda _: None)
        try:
            for index, bundle in enumerate(bundles):
                pool.submit(patient_keys(bundle), lambda i=index, b=bundle: job(i, b))  # type: ignore[misc]
        finally:
            try:
                pool.close()
            finally:
                for client in made:
                    client.close()
        return outcomes

    def target_sync(self, target: Target) -> TargetSync:
        """Identity map, ownership, If-Match, conflicts and Provenance for a target (issue 9), kept
        in the outbox (every storage keeps the per-target state, :class:`~ims_fhir.sync.store.TargetState`)."""
        sync = self._syncs.get(target.name)
        if sync is None:
            sync = self._syncs[target.name] = TargetSync(self.client(target), self.outbox, target.name,
                                                         clock=self.clock)
        return sync

    @staticmethod
    def _results_sync(keys: list[RecordKey], by_key: dict[RecordKey, Claimed], sent: Sent) -> list[Result]:
        """The ledger's result of each record: synced, kept (server-owned, never written), version_conflict
        (a hospital edit, recorded), rejected, conflict (a clash, retried) or transient (send it again)."""
        unresolved = {k: u.reason for u in sent.unresolved for k in u.records}
        conflicts = {c.record: c for c in sent.conflicts if c.record is not None}
        resources: dict[RecordKey, list[dict[str, Any]]] = {}
        for entry in sent.entries:
            if entry.record in by_key:
                resources.setdefault(entry.record, []).append({
                    "resourceType": entry.resource_type, "id": entry.resource_id, "version": entry.version_id,
                    "outcome": entry.outcome})
        refused: dict[RecordKey, FhirError] = {}
        for refusal in sent.refusals:
            for key in refusal.records:
                refused.setdefault(key, refusal.error)
        results = []
        for key in keys:
            revision = by_key[key].revision
            if key in unresolved:
                outcome = {"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "not-found", "diagnostics": unresolved[key]}]}
                results.append(Result(key[0], key[1], "rejected", revision, error=unresolved[key], outcome=outcome))
            elif key in conflicts:
                c = conflicts[key]
                error = (f"conflict {c.conflict_id}: {c.resource} was edited on the server (version {c.server_version}, "
                         f"last written {c.base_version}); not overwritten")
                results.append(Result(key[0], key[1], "version_conflict", revision, status=409, error=error))
            elif key in refused:
                err = refused[key]
                status = status_of(err)
                # 409/412 that is no hospital edit: a clash with a concurrent write (another worker,
                # a re-send after a crash): worth another try, unlike a refusal of the content
                kind = "conflict" if status in (409, 412) else "rejected"
                results.append(Result(key[0], key[1], kind, revision, status=status, error=str(err),
                                      outcome=operation_outcome(err)))
            elif key in resources:
                kept = all(r["outcome"] == KEPT for r in resources[key])
                results.append(Result(key[0], key[1], "kept" if kept else "synced", revision,
                                      resources=resources[key]))
            else:
                results.append(Result(key[0], key[1], "transient", revision,
                                      error="not sent: its Bundle part failed for another record"))
        return results

    @staticmethod
    def _log(target: Target, results: list[Result]) -> None:
        # record keys and outcomes only: never names, birth dates or the server's diagnostics
        kinds: dict[str, int] = {}
        for r in results:
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
            if r.kind == "rejected":
                log.warning("target %s: %s %s refused (HTTP %s)", target.name, r.record_type, r.record_id, r.status)
        log.info("target %s: %d records sent: %s", target.name, len(results),
                 ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))

    # -- the loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Rounds until ``stop`` is set; idles ``poll_seconds`` when there is nothing to do."""
        log.info("sync worker %s started for targets %s", self.owner, ", ".join(t.name for t in self.targets))
        try:
            next_recovery = 0.0
            while not stop.is_set():
                if time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + max(self.options.lease_seconds / 4, 1.0)
                    try:
                        self.recover()
                    except Exception as exc:  # the leases will expire on their own
                        log.error("recovering abandoned leases failed: %s", type(exc).__name__)
                try:
                    handled = self.run_once()
                except Exception as exc:  # storage hiccup, bug: keep the worker alive, try again
                    log.error("sync worker round failed: %s", type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
                    handled = 0
                if handled == 0:
                    stop.wait(self.options.poll_seconds)
        finally:
            self.close()
            log.info("sync worker %s stopped", self.owner)


__all__ = ["SyncWorker", "Target", "WorkerOptions", "new_owner", "owner_is_dead"]
