"""The SQL both outbox storages share (SQLite and PostgreSQL), written once.

:class:`SqlOutbox` holds every method of :class:`~ims_fhir.sync.store.Outbox` in SQL that
SQLite and PostgreSQL both understand, with ``?`` placeholders (the PostgreSQL storage
turns them into ``%s``). A storage adds its connections (``_db``), transactions (``_tx``),
its schema migrations, the lock clause of a claim (``FOR UPDATE ... SKIP LOCKED`` on
PostgreSQL; SQLite takes the database's write lock instead) and may replace a method with
a faster one of its own (PostgreSQL's batched ``put``).

Terms:

- *migration*: one step of the schema, numbered from 1; ``schema_version`` holds the
  numbers applied. :meth:`SqlOutbox._migrate` applies the missing ones in order, in one
  transaction, when a storage is opened (the storage holds a lock meanwhile, so several
  processes starting at once apply each step once).
- *blocker*: an earlier delivery of the same patient and target that is still queued or
  sending; a delivery with a blocker is not claimable (see :mod:`.store`, *patient*).
- *version rank*: ``identity.version_num``, the version as a number when the server's
  version ids are numbers (HAPI's are); an identity's version never goes back to a lower
  rank of the same server id, so a worker that read a resource before another one wrote it
  cannot put the older version over the newer one (a lost update of the map's versions).

:class:`SqlTargetState` is the per-target state of issue 9 (:class:`~ims_fhir.sync.store.TargetState`)
in the same portable SQL, for both outbox storages and the push command's state file: every
write is one statement or one transaction (an open conflict per resource is unique by a
partial index and written with ``ON CONFLICT``), so several workers share it safely.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import orjson

from .store import (
    DEAD_AFTER,
    KIND_RANK,
    LATENCY_BUCKETS,
    OWNERS,
    RESOLUTIONS,
    AuditEntry,
    Claimed,
    Collected,
    Conflict,
    DeliveryStatus,
    Event,
    Failure,
    FieldChange,
    Identity,
    Incoming,
    RecordStatus,
    Result,
    Stats,
    Stored,
    Storing,
)

#: main resource type of each record kind (its id and version are the record's "server id")
PRIMARY = {"patient": "Patient", "practitioner": "Practitioner", "assessment": "Observation",
           "treatment": "Procedure"}

#: how many due deliveries a claim looks at per delivery it may take (the others may have blockers)
LOOKAHEAD = 4


#: the delivery upsert of a new or changed record: a delivery being sent stays ``sending``
#: (its worker queues it again when it sees the newer revision), any other is queued anew
UPSERT_DELIVERY = (
    "INSERT INTO delivery (target, record_type, record_id, patient, rank, seq, state, attempts, next_attempt_at, "
    "queued_at, updated_at) VALUES (?,?,?,?,?,?,'queued',0,?,?,?) "
    "ON CONFLICT (target, record_type, record_id) DO UPDATE SET "
    "patient=excluded.patient, seq=excluded.seq, updated_at=excluded.updated_at, "
    "next_attempt_at=excluded.next_attempt_at, "
    "attempts=CASE WHEN delivery.state='sending' THEN delivery.attempts ELSE 0 END, "
    "first_failed_at=CASE WHEN delivery.state='sending' THEN delivery.first_failed_at ELSE NULL END, "
    "queued_at=CASE WHEN delivery.state='sending' THEN delivery.queued_at ELSE excluded.queued_at END, "
    "lease_owner=CASE WHEN delivery.state='sending' THEN delivery.lease_owner ELSE NULL END, "
    "lease_until=CASE WHEN delivery.state='sending' THEN delivery.lease_until ELSE NULL END, "
    "state=CASE WHEN delivery.state='sending' THEN 'sending' ELSE 'queued' END")

INSERT_DELIVERY = (
    "INSERT INTO delivery (target, record_type, record_id, patient, rank, seq, state, attempts, next_attempt_at, "
    "queued_at, updated_at) VALUES (?,?,?,?,?,?,'queued',0,?,?,?) "
    "ON CONFLICT (target, record_type, record_id) DO NOTHING")

INSERT_EVENT = ("INSERT INTO event (at, target, record_type, record_id, revision, event, detail) "
                "VALUES (?,?,?,?,?,?,?)")

UPSERT_SHARED = ("INSERT INTO shared (resource_id, entry) VALUES (?,?) "
                 "ON CONFLICT (resource_id) DO UPDATE SET entry=excluded.entry")

#: the due deliveries of a target, kinds others refer to first, then in arrival order: queued
#: ones whose time has come, and (:data:`CLAIM_EXPIRED`) sending ones whose lease ran out. Each
#: reads the index ``delivery_due`` (target, state, rank, seq) in order and stops at its LIMIT,
#: so a claim costs the same with a hundred or a million deliveries queued (one query with both
#: states and the record bodies joined sorted the whole queue, bodies and all, at every claim)
CLAIM_DUE = ("SELECT d.record_type, d.record_id, d.attempts, d.patient, d.rank, d.seq FROM delivery d "
             "WHERE d.target=? AND d.state='queued' AND d.next_attempt_at<=? ORDER BY d.rank, d.seq LIMIT ?")
CLAIM_EXPIRED = ("SELECT d.record_type, d.record_id, d.attempts, d.patient, d.rank, d.seq FROM delivery d "
                 "WHERE d.target=? AND d.state='sending' AND d.lease_until<? ORDER BY d.rank, d.seq LIMIT ?")

#: rows per statement of the lookups by key (:meth:`SqlOutbox._by_key`)
KEYS_PER_QUERY = 400


def _chunks(values: Sequence[str], size: int = KEYS_PER_QUERY) -> Iterator[tuple[list[str], str]]:
    """``values`` in lists of at most ``size``, each with its placeholders (``?,?,?``) for ``IN (...)``."""
    for i in range(0, len(values), size):
        chunk = list(values[i:i + size])
        yield chunk, ",".join("?" * len(chunk))

#: the updates of a delivery whose result came back (:meth:`SqlOutbox.complete`), by kind
COMPLETE_SYNCED = (
    "UPDATE delivery SET state=?, synced_revision=?, server_id=?, server_version=?, resources=?, "
    "http_status=NULL, error=NULL, outcome=NULL, lease_owner=NULL, lease_until=NULL, first_failed_at=NULL, "
    "next_attempt_at=?, attempts=CASE WHEN ? THEN 0 ELSE attempts END, updated_at=?, synced_at=? "
    "WHERE target=? AND record_type=? AND record_id=?")
COMPLETE_CONFLICT = ("UPDATE delivery SET state='conflict', http_status=?, error=?, outcome=?, "
                     "lease_owner=NULL, lease_until=NULL, updated_at=? WHERE target=? AND record_type=? AND record_id=?")
COMPLETE_FAILED = ("UPDATE delivery SET state='failed', attempts=attempts+1, http_status=?, error=?, outcome=?, "
                   "lease_owner=NULL, lease_until=NULL, updated_at=? WHERE target=? AND record_type=? AND record_id=?")
COMPLETE_RETRY = ("UPDATE delivery SET state=?, attempts=?, first_failed_at=?, http_status=?, error=?, outcome=?, "
                  "lease_owner=NULL, lease_until=NULL, next_attempt_at=?, updated_at=? "
                  "WHERE target=? AND record_type=? AND record_id=?")

COUNT = ("INSERT INTO counter (name, target, value) VALUES (?,?,?) "
         "ON CONFLICT (name, target) DO UPDATE SET value=counter.value+excluded.value")


class SqlOutbox:
    """:class:`~ims_fhir.sync.store.Outbox` in portable SQL (see the module docstring)."""

    #: appended to the claim's SELECT (PostgreSQL: row locks that other workers skip)
    lock_clause = ""
    #: appended to a SELECT of one delivery about to be updated (PostgreSQL: FOR UPDATE)
    row_lock = ""
    #: run first in a claim's transaction (PostgreSQL: no plan that sorts the queue, see :data:`CLAIM_DUE`)
    claim_prelude = ""

    # -- what a storage provides ---------------------------------------------------------

    def _db(self) -> Any:
        raise NotImplementedError

    def _tx(self, *, write: bool = True) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        """The storage's form of a statement written with ``?`` placeholders."""
        return sql

    def _next_seq(self, db: Any, n: int) -> list[int]:
        """``n`` increasing sequence numbers, later than every one handed out before."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------

    def _x(self, db: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        return db.execute(self._q(sql), tuple(params))

    def _xm(self, db: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            db.cursor().executemany(self._q(sql), rows)

    def _migrate(self, db: Any, migrations: Sequence[Sequence[str]]) -> int:
        """Apply the migrations ``schema_version`` lacks (inside the caller's locked transaction)."""
        self._x(db, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
        row = self._x(db, "SELECT MAX(version) FROM schema_version").fetchone()
        current = int(row[0] or 0)
        for number, statements in enumerate(migrations, start=1):
            if number <= current:
                continue
            for statement in statements:
                self._x(db, statement)
            self._x(db, "INSERT INTO schema_version (version, applied_at) VALUES (?,?)", (number, time.time()))
        return len(migrations)

    def schema_version(self) -> int:
        row = self._x(self._db(), "SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def ping(self) -> None:
        self._x(self._db(), "SELECT 1 FROM schema_version LIMIT 1").fetchall()

    # -- intake ---------------------------------------------------------------------------

    def put(self, records: list[Incoming], targets: list[str], *, now: float) -> list[Stored]:
        out = []
        with self._tx() as db:
            seqs = iter(self._next_seq(db, len(records) * max(len(targets), 1)))
            for rec in records:
                row = self._x(db, "SELECT revision, content_hash FROM record WHERE record_type=? AND record_id=?",
                              (rec.record_type, rec.record_id)).fetchone()
                waits = rec.waits_for or (None, None)
                self._xm(db, UPSERT_SHARED, list(rec.shared.items()))
                seq = [next(seqs) for _ in targets]
                if row is not None and row[1] == rec.content_hash:
                    # unchanged: a target added to the configuration since still gets it
                    revision = int(row[0])
                    added = self._enqueue(db, rec, targets, revision, seq, now, only_missing=True)
                    out.append(Stored(rec.record_type, rec.record_id, "queued" if added else "unchanged", revision))
                    continue
                revision = 1 if row is None else int(row[0]) + 1
                if row is None:
                    self._x(db, "INSERT INTO record (record_type, record_id, revision, content_hash, body, waits_type, "
                                "waits_id, received_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                            (rec.record_type, rec.record_id, revision, rec.content_hash, rec.group,
                             waits[0], waits[1], now, now))
                else:
                    self._x(db, "UPDATE record SET revision=?, content_hash=?, body=?, waits_type=?, waits_id=?, "
                                "updated_at=? WHERE record_type=? AND record_id=?",
                            (revision, rec.content_hash, rec.group, waits[0], waits[1], now,
                             rec.record_type, rec.record_id))
                self._enqueue(db, rec, targets, revision, seq, now, only_missing=False,
                              detail="new record" if row is None else "changed")
                out.append(Stored(rec.record_type, rec.record_id, "queued", revision))
        return out

    @contextmanager
    def storing(self, targets: list[str], *, now: float) -> Iterator[Storing]:
        """The parts stored together when the block ends (SQLite writes in this process: nothing to overlap)."""
        batch = Collected()
        yield batch
        batch.stored = self.put(batch.records, targets, now=now) if batch.records else []

    def _enqueue(self, db: Any, rec: Incoming, targets: list[str], revision: int, seq: list[int], now: float, *,
                 only_missing: bool, detail: str = "new target") -> bool:
        added = False
        rank = KIND_RANK.get(rec.record_type, 9)
        for target, n in zip(targets, seq, strict=True):
            params = (target, rec.record_type, rec.record_id, rec.patient, rank, n, now, now, now)
            cur = self._x(db, INSERT_DELIVERY if only_missing else UPSERT_DELIVERY, params)
            if only_missing and cur.rowcount < 1:
                continue
            self._event(db, now, target, rec.record_type, rec.record_id, revision, "queued", detail)
            added = True
        return added

    def _event(self, db: Any, now: float, target: str, record_type: str, record_id: str, revision: int,
               event: str, detail: str | None = None) -> None:
        self._x(db, INSERT_EVENT, (now, target, record_type, record_id, revision, event, detail))

    def shared_entries(self, resource_ids: Iterable[str]) -> dict[str, bytes]:
        wanted = sorted(set(resource_ids))
        out: dict[str, bytes] = {}
        db = self._db()
        for chunk, marks in _chunks(wanted):
            sql = f"SELECT resource_id, entry FROM shared WHERE resource_id IN ({marks})"  # noqa: S608 - only '?' marks
            out.update((str(rid), bytes(entry)) for rid, entry in self._x(db, sql, chunk).fetchall())
        return out

    def record_group(self, record_type: str, record_id: str) -> bytes | None:
        row = self._x(self._db(), "SELECT body FROM record WHERE record_type=? AND record_id=?",
                      (record_type, record_id)).fetchone()
        return bytes(row[0]) if row else None

    # -- the worker's side ----------------------------------------------------------------

    def claim(self, target: str, *, owner: str, limit: int, lease_seconds: float, now: float) -> list[Claimed]:
        claimed: list[Claimed] = []
        with self._tx() as db:
            window = limit * LOOKAHEAD
            if self.claim_prelude:
                self._x(db, self.claim_prelude)
            rows = sorted([*self._x(db, CLAIM_DUE + self.lock_clause, (target, now, window)).fetchall(),
                           *self._x(db, CLAIM_EXPIRED + self.lock_clause, (target, now, window)).fetchall()],
                          key=lambda r: (int(r[4]), int(r[5])))[:window]
            if not rows:
                return []
            pending = self._pending_of_patients(db, target, sorted({r[3] for r in rows if r[3] is not None}))
            waits = {(t, i): (wt, wi) for t, i, wt, wi in self._by_key(
                db, "SELECT record_type, record_id, waits_type, waits_id FROM record", [(r[0], r[1]) for r in rows])
                if wt is not None}
            # the deliveries of the records waited for (an assessment its sessions wait for), read at once
            waited = {(t, i): state for t, i, state in self._by_key(
                db, "SELECT record_type, record_id, state FROM delivery", sorted(set(waits.values())),
                where="target=?", params=(target,))}
            keys: set[tuple[str, str]] = set()
            taken: list[tuple[str, str, int]] = []
            for rtype, rid, attempts, patient, rank, seq in rows:
                if len(taken) >= limit:
                    break
                if patient is not None and any((r, s) < (rank, seq) and k not in keys
                                               for r, s, k in pending.get(patient, ())):
                    continue  # an earlier record of its patient is not sent yet: it stays queued
                dep = waits.get((rtype, rid))
                if dep is not None and dep not in keys and waited.get(dep) in ("queued", "sending"):
                    continue  # its assessment goes first; it stays queued
                taken.append((rtype, rid, int(attempts)))
                keys.add((rtype, rid))
            # revision and body read together, for the records taken only
            content = {(t, i): (int(rev), bytes(body)) for t, i, rev, body in self._by_key(
                db, "SELECT record_type, record_id, revision, body FROM record", [k[:2] for k in taken])}
            for rtype, rid, attempts in taken:
                revision, body = content[(rtype, rid)]
                claimed.append(Claimed(target, rtype, rid, revision, body, attempts))
            self._xm(db, "UPDATE delivery SET state='sending', lease_owner=?, lease_until=?, sending_revision=?, "
                         "updated_at=? WHERE target=? AND record_type=? AND record_id=?",
                     [(owner, now + lease_seconds, c.revision, now, target, c.record_type, c.record_id)
                      for c in claimed])
            self._xm(db, INSERT_EVENT, [(now, target, c.record_type, c.record_id, c.revision, "sending",
                                         f"attempt {c.attempts + 1}") for c in claimed])
        return claimed

    def _by_key(self, db: Any, select: str, keys: list[tuple[str, str]], *, where: str = "",
                params: tuple[Any, ...] = (), suffix: str = "") -> list[tuple[Any, ...]]:
        """The rows of ``select`` (a SELECT ... FROM one table with ``record_type`` and ``record_id``
        columns) for these keys, a statement per record type and :data:`KEYS_PER_QUERY` ids."""
        by_type: dict[str, list[str]] = {}
        for rtype, rid in keys:
            by_type.setdefault(rtype, []).append(rid)
        out: list[tuple[Any, ...]] = []
        for rtype, ids in sorted(by_type.items()):
            for chunk, marks in _chunks(ids):
                sql = (f"{select} WHERE {where + ' AND ' if where else ''}"  # noqa: S608 - only '?' marks are added
                       f"record_type=? AND record_id IN ({marks}){suffix}")
                out += [tuple(r) for r in self._x(db, sql, (*params, rtype, *chunk)).fetchall()]
        return out

    def _pending_of_patients(self, db: Any, target: str,
                             patients: list[str]) -> dict[str, list[tuple[int, int, tuple[str, str]]]]:
        """The queued or sending deliveries of these patients: ``patient -> [(rank, seq, key)]``."""
        out: dict[str, list[tuple[int, int, tuple[str, str]]]] = {}
        for chunk, marks in _chunks(patients, 500):
            sql = ("SELECT patient, rank, seq, record_type, record_id FROM delivery WHERE target=? "  # noqa: S608
                   f"AND state IN ('queued','sending') AND patient IN ({marks})")  # only '?' marks are added
            for patient, rank, seq, rtype, rid in self._x(db, sql, (target, *chunk)).fetchall():
                out.setdefault(patient, []).append((int(rank), int(seq), (rtype, rid)))
        return out

    def release_abandoned(self, is_dead: Callable[[str], bool], *, now: float) -> int:
        with self._tx() as db:
            owners = [r[0] for r in self._x(db, "SELECT DISTINCT lease_owner FROM delivery "
                                                "WHERE state='sending' AND lease_owner IS NOT NULL").fetchall()]
            released = 0
            for owner in owners:
                if not is_dead(owner):
                    continue
                rows = self._x(db, "SELECT target, record_type, record_id, sending_revision FROM delivery "
                                   "WHERE state='sending' AND lease_owner=?", (owner,)).fetchall()
                self._x(db, "UPDATE delivery SET state='queued', lease_owner=NULL, lease_until=NULL, "
                            "next_attempt_at=?, updated_at=? WHERE state='sending' AND lease_owner=?",
                        (now, now, owner))
                for target, rtype, rid, revision in rows:
                    self._event(db, now, target, rtype, rid, revision or 0, "queued", "its worker stopped mid-send")
                released += len(rows)
        return released

    def complete(self, target: str, results: list[Result], *, owner: str, now: float, max_attempts: int,
                 backoff_base: float, backoff_cap: float, latency: float | None,
                 dead_after: float = DEAD_AFTER) -> None:
        """The results of a round, a few statements for all of them (a round trip per record cost
        PostgreSQL more than the intake of those records): the deliveries are locked, then the
        records' revisions read, then each kind of update sent as one batch."""
        with self._tx() as db:
            keys = sorted({(r.record_type, r.record_id) for r in results})
            leases = {(t, i): row for t, i, *row in self._by_key(
                db, "SELECT record_type, record_id, state, lease_owner, attempts, first_failed_at FROM delivery",
                keys, where="target=?", params=(target,), suffix=" ORDER BY record_id" + self.row_lock)}
            # read after the deliveries are locked: a revision posted meanwhile is seen here
            revisions = {(t, i): int(rev) for t, i, rev in self._by_key(
                db, "SELECT record_type, record_id, revision FROM record", [k for k in keys if k in leases])}
            updates: dict[str, list[tuple[Any, ...]]] = {}
            events: list[tuple[Any, ...]] = []
            counts: dict[str, float] = {}
            done: set[tuple[str, str]] = set()
            for res in results:
                key = (res.record_type, res.record_id)
                row = leases.get(key)
                if key in done or row is None or row[0] != "sending" or row[1] != owner:
                    continue  # the lease ran out and someone else took it over; their result counts
                done.add(key)
                attempts, first_failed = row[2], row[3]
                where = (target, *key)
                outcome = orjson.dumps(res.outcome) if res.outcome is not None else None
                if res.kind in ("synced", "kept"):
                    self._synced(updates, events, where, res, revisions[key], now)
                    counts["sent"] = counts.get("sent", 0) + 1
                elif res.kind == "version_conflict":  # issue 9: recorded, not retried, until resolved
                    updates.setdefault(COMPLETE_CONFLICT, []).append((res.status, res.error, outcome, now, *where))
                    events.append((now, target, *key, res.revision, "conflict", res.error))
                    counts["conflicts"] = counts.get("conflicts", 0) + 1
                elif res.kind == "rejected":
                    updates.setdefault(COMPLETE_FAILED, []).append((res.status, res.error, outcome, now, *where))
                    events.append((now, target, *key, res.revision, "failed",
                                   f"HTTP {res.status}" if res.status else res.error))
                    counts["failed"] = counts.get("failed", 0) + 1
                else:  # transient: dead by count and age; conflict: by count only
                    attempts = int(attempts) + 1
                    first = now if first_failed is None else float(first_failed)
                    dead = attempts >= max_attempts and (res.kind == "conflict" or now - first >= dead_after)
                    wait = min(backoff_cap, backoff_base * 2.0 ** max(attempts - 1, 0))
                    updates.setdefault(COMPLETE_RETRY, []).append(
                        ("dead" if dead else "queued", attempts, first, res.status, res.error, outcome,
                         now + wait, now, *where))
                    events.append((now, target, *key, res.revision, "dead" if dead else "retry-later", res.error))
                    name = "dead" if dead else "transient_failures"
                    counts[name] = counts.get(name, 0) + 1
            for sql, rows in updates.items():
                self._xm(db, sql, rows)
            self._xm(db, INSERT_EVENT, events)
            # counters in name order: two workers' rounds take their rows in the same order
            self._xm(db, COUNT, [(name, target, by) for name, by in sorted(counts.items())])
            if latency is not None:
                self._observe(db, target, latency)

    @staticmethod
    def _synced(updates: dict[str, list[tuple[Any, ...]]], events: list[tuple[Any, ...]],
                where: tuple[str, str, str], res: Result, current: int, now: float) -> None:
        target = where[0]
        primary = next((r for r in res.resources if r.get("resourceType") == PRIMARY.get(res.record_type)),
                       res.resources[0] if res.resources else {})
        stale = current != res.revision
        updates.setdefault(COMPLETE_SYNCED, []).append(
            ("queued" if stale else res.kind, res.revision, primary.get("id"), primary.get("version"),
             orjson.dumps(res.resources), now, stale, now, now, *where))
        what = f"{primary.get('resourceType')}/{primary.get('id')} version {primary.get('version')}"
        events.append((now, target, res.record_type, res.record_id, res.revision, res.kind,
                       what + (" (server-owned: referenced, never written)" if res.kind == "kept" else "")))
        if stale:
            events.append((now, target, res.record_type, res.record_id, current, "queued", "changed"))

    def _count(self, db: Any, name: str, target: str, by: float = 1.0) -> None:
        self._x(db, COUNT, (name, target, by))

    def _observe(self, db: Any, target: str, seconds: float) -> None:
        rows = [(f"latency_le_{bound}", target, 1.0) for bound in LATENCY_BUCKETS if seconds <= bound]
        rows += [("latency_count", target, 1.0), ("latency_sum", target, seconds)]
        self._xm(db, COUNT, rows)

    # -- replay ---------------------------------------------------------------------------

    def settle_conflict(self, target: str, record_type: str, record_id: str, *, state: str, detail: str,
                        now: float) -> bool:
        """After a conflict's resolution (issue 9): its delivery leaves ``conflict`` for ``state``
        (``synced``, or ``queued``). False when the delivery is not in conflict."""
        with self._tx() as db:
            row = self._x(db, "SELECT r.revision FROM delivery d JOIN record r ON r.record_type=d.record_type "
                              "AND r.record_id=d.record_id WHERE d.target=? AND d.record_type=? AND d.record_id=? "
                              "AND d.state='conflict'", (target, record_type, record_id)).fetchone()
            if row is None:
                return False
            self._x(db, "UPDATE delivery SET state=?, http_status=NULL, error=NULL, outcome=NULL, attempts=0, "
                        "next_attempt_at=?, updated_at=?, synced_at=CASE WHEN ?='synced' THEN ? ELSE synced_at END "
                        "WHERE target=? AND record_type=? AND record_id=?",
                    (state, now, now, state, now, target, record_type, record_id))
            self._event(db, now, target, record_type, record_id, int(row[0]), state, detail)
            return True

    def retry(self, record_type: str, record_id: str, *, now: float, target: str | None = None) -> int:
        return self._requeue("d.record_type=? AND d.record_id=? AND d.state IN ('failed','dead')",
                             (record_type, record_id), now=now, target=target)

    def retry_state(self, state: str, *, now: float, target: str | None = None) -> int:
        if state not in ("failed", "dead"):
            raise ValueError(f"only failed or dead deliveries can be retried, not {state!r}")
        return self._requeue("d.state=?", (state,), now=now, target=target)

    def _requeue(self, where: str, params: tuple[Any, ...], *, now: float, target: str | None) -> int:
        if target is not None:
            where += " AND d.target=?"
            params = (*params, target)
        with self._tx() as db:
            sql = ("SELECT d.target, d.record_type, d.record_id, r.revision FROM delivery d "  # noqa: S608
                   "JOIN record r ON r.record_type=d.record_type AND r.record_id=d.record_id "
                   f"WHERE {where}")  # where: a fixed condition of this module, values as '?' parameters
            rows = self._x(db, sql, params).fetchall()
            self._xm(db, "UPDATE delivery SET state='queued', attempts=0, first_failed_at=NULL, next_attempt_at=?, "
                         "updated_at=?, queued_at=? WHERE target=? AND record_type=? AND record_id=?",
                     [(now, now, now, tgt, rtype, rid) for tgt, rtype, rid, _ in rows])
            self._xm(db, INSERT_EVENT, [(now, tgt, rtype, rid, revision, "queued", "retry requested")
                                        for tgt, rtype, rid, revision in rows])
        return len(rows)

    # -- reading --------------------------------------------------------------------------

    def status(self, record_type: str, record_id: str) -> RecordStatus | None:
        with self._tx(write=False) as db:
            rec = self._x(db, "SELECT revision, received_at, updated_at FROM record "
                              "WHERE record_type=? AND record_id=?", (record_type, record_id)).fetchone()
            if rec is None:
                return None
            rows = self._x(db,
                "SELECT target, state, attempts, synced_revision, server_id, server_version, resources, http_status, "
                "error, outcome, queued_at, updated_at, synced_at, next_attempt_at FROM delivery "
                "WHERE record_type=? AND record_id=? ORDER BY target", (record_type, record_id)).fetchall()
        deliveries = [DeliveryStatus(
            target=r[0], state=r[1], attempts=r[2], revision=rec[0], synced_revision=r[3], server_id=r[4],
            server_version=r[5], resources=orjson.loads(r[6]) if r[6] else [], http_status=r[7], error=r[8],
            outcome=orjson.loads(r[9]) if r[9] else None, queued_at=r[10], updated_at=r[11], synced_at=r[12],
            next_attempt_at=r[13]) for r in rows]
        return RecordStatus(record_type, record_id, rec[0], rec[1], rec[2], deliveries)

    def history(self, record_type: str, record_id: str, *, limit: int = 100) -> list[Event]:
        rows = self._x(self._db(),
            "SELECT at, target, record_type, record_id, revision, event, detail FROM event "
            "WHERE record_type=? AND record_id=? ORDER BY seq DESC LIMIT ?", (record_type, record_id, limit)).fetchall()
        return [Event(*r) for r in rows]

    def recent(self, *, limit: int = 20) -> list[Event]:
        rows = self._x(self._db(), "SELECT at, target, record_type, record_id, revision, event, detail FROM event "
                                   "ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [Event(*r) for r in rows]

    def failures(self, *, limit: int = 20) -> list[Failure]:
        rows = self._x(self._db(),
            "SELECT target, record_type, record_id, state, attempts, http_status, error, outcome, updated_at "
            "FROM delivery WHERE state IN ('failed','dead') ORDER BY updated_at DESC LIMIT ?", (limit,)).fetchall()
        return [Failure(target=r[0], record_type=r[1], record_id=r[2], state=r[3], attempts=r[4], http_status=r[5],
                        error=r[6], outcome=orjson.loads(r[7]) if r[7] else None, updated_at=r[8]) for r in rows]

    def pending(self, target: str | None = None, *, at_most: int | None = None) -> int:
        sql = "SELECT 1 FROM delivery WHERE state IN ('queued','sending')" + (  # noqa: S608 - fixed text
            " AND target=?" if target else "")
        params: tuple[Any, ...] = (target,) if target else ()
        if at_most is not None:  # a count that stops there: a deep queue is not read to its end
            sql += " LIMIT ?"
            params += (at_most,)
        row = self._x(self._db(), f"SELECT COUNT(*) FROM ({sql}) AS q", params).fetchone()  # noqa: S608 - fixed text
        return int(row[0])

    def stats(self) -> Stats:
        with self._tx(write=False) as db:
            depth = {(t, s): int(n) for t, s, n in self._x(
                db, "SELECT target, state, COUNT(*) FROM delivery GROUP BY target, state").fetchall()}
            raw = {(n, t): float(v) for n, t, v in self._x(db, "SELECT name, target, value FROM counter").fetchall()}
        counters = {k: v for k, v in raw.items() if not k[0].startswith("latency_")}
        latency: dict[str, tuple[list[int], int, float]] = {}
        for target in {t for n, t in raw if n == "latency_count"}:
            buckets = [int(raw.get((f"latency_le_{b}", target), 0)) for b in LATENCY_BUCKETS]
            latency[target] = (buckets, int(raw[("latency_count", target)]), raw.get(("latency_sum", target), 0.0))
        return Stats(depth, counters, latency)


# -- the per-target state of issue 9 ------------------------------------------------------------

_IDENTITY = ("target, resource_type, system, value, server_id, version, owner, content_hash, record_type, record_id, "
             "updated_at, pending")
_CONFLICT = ("id, target, resource_type, server_id, record_type, record_id, base_version, server_version, "
             "clinic_resource, server_resource, diff, state, resolution, detected_at, resolved_at, detail, clinic_hash")
_AUDIT = ("seq, at, target, resource_type, server_id, version, system, value, record_type, record_id, outcome, txn, "
          "detail")

#: insert or update one identity; the update keeps what the new row does not say (hash, record),
#: clears the in-flight write (its answer came, or the map was corrected) and never puts a lower
#: version rank of the same server id over a higher one (see the terms: *version rank*)
UPSERT_IDENTITY = (
    "INSERT INTO identity (target, resource_type, system, value, server_id, version, version_num, owner, "
    "content_hash, record_type, record_id, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (target, resource_type, system, value) DO UPDATE SET server_id=excluded.server_id, "
    "version=excluded.version, version_num=excluded.version_num, owner=excluded.owner, "
    "content_hash=COALESCE(excluded.content_hash, identity.content_hash), "
    "record_type=COALESCE(excluded.record_type, identity.record_type), "
    "record_id=COALESCE(excluded.record_id, identity.record_id), pending=NULL, updated_at=excluded.updated_at ")
#: the condition of :data:`UPSERT_IDENTITY` that keeps the higher version rank
NEWER_IDENTITY = (
    "WHERE identity.server_id<>excluded.server_id OR identity.version_num IS NULL "
    "OR excluded.version_num IS NULL OR excluded.version_num>=identity.version_num")

#: one open conflict per resource (a partial unique index): a newer refusal updates it
UPSERT_CONFLICT = (
    "INSERT INTO conflict (target, resource_type, server_id, record_type, record_id, base_version, server_version, "
    "clinic_resource, server_resource, diff, detail, clinic_hash, state, detected_at) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,'open',?) "
    "ON CONFLICT (target, resource_type, server_id) WHERE state='open' DO UPDATE SET "
    "record_type=excluded.record_type, record_id=excluded.record_id, base_version=excluded.base_version, "
    "server_version=excluded.server_version, clinic_resource=excluded.clinic_resource, "
    "server_resource=excluded.server_resource, diff=excluded.diff, detail=excluded.detail, "
    "clinic_hash=excluded.clinic_hash, detected_at=excluded.detected_at RETURNING id")


#: in-flight updates kept per identity (each retry without an answer may have landed)
PENDING_KEPT = 4


def version_rank(version: str | None) -> int | None:
    """A version id as a number, when it is one (see the terms)."""
    return int(version) if version is not None and version.isdigit() and len(version) < 19 else None


class SqlTargetState:
    """:class:`~ims_fhir.sync.store.TargetState` in portable SQL (see the module docstring); the
    host class provides ``_tx`` (a context manager yielding a connection inside one transaction),
    may provide ``_q`` (its placeholders) and creates the tables."""

    #: appended to a SELECT of a row about to be updated (PostgreSQL: FOR UPDATE)
    row_lock = ""

    def _tx(self, *, write: bool = True) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        return sql

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._tx(write=False) as db:
            return list(db.execute(self._q(sql), tuple(params)).fetchall())

    def identity(self, target: str, resource_type: str, system: str, value: str) -> Identity | None:
        rows = self._rows(f"SELECT {_IDENTITY} FROM identity WHERE target=? AND resource_type=? "  # noqa: S608
                          "AND system=? AND value=?", (target, resource_type, system, value))
        return _identity(rows[0]) if rows else None

    def identities_of(self, target: str,
                      keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], Identity]:
        """A statement per resource type and system and :data:`KEYS_PER_QUERY` values, one transaction."""
        values: dict[tuple[str, str], list[str]] = {}
        for rtype, system, value in dict.fromkeys(keys):
            values.setdefault((rtype, system), []).append(value)
        out: dict[tuple[str, str, str], Identity] = {}
        with self._tx(write=False) as db:
            for (rtype, system), wanted in sorted(values.items()):
                for chunk, marks in _chunks(wanted):
                    sql = (f"SELECT {_IDENTITY} FROM identity WHERE target=? AND resource_type=? "  # noqa: S608
                           f"AND system=? AND value IN ({marks})")  # only '?' marks are added
                    for row in db.execute(self._q(sql), (target, rtype, system, *chunk)).fetchall():
                        found = _identity(row)
                        out[(found.resource_type, found.system, found.value)] = found
        return out

    def identities(self, target: str, *, resource_type: str | None = None, owner: str | None = None,
                   limit: int = 1000) -> list[Identity]:
        where, params = _filters(target=target, resource_type=resource_type, owner=owner)
        rows = self._rows(f"SELECT {_IDENTITY} FROM identity WHERE {where} "  # noqa: S608 (fixed columns)
                          "ORDER BY resource_type, system, value LIMIT ?", (*params, limit))
        return [_identity(r) for r in rows]

    def put_identities(self, identities: list[Identity], *, now: float, force: bool = False) -> None:
        for i in identities:
            if i.owner not in OWNERS:
                raise ValueError(f"identity owner must be one of {OWNERS}, not {i.owner!r}")
        # in key order: two workers writing the same identities wait for each other, never deadlock
        rows = sorted({(i.target, i.resource_type, i.system, i.value): (
            i.target, i.resource_type, i.system, i.value, i.server_id, i.version, version_rank(i.version), i.owner,
            i.content_hash, i.record_type, i.record_id, now) for i in identities}.items())
        if not rows:
            return
        with self._tx() as db:
            db.cursor().executemany(self._q(UPSERT_IDENTITY + ("" if force else NEWER_IDENTITY)), [r for _, r in rows])

    def identity_by_server_id(self, target: str, resource_type: str, server_id: str) -> Identity | None:
        rows = self._rows(f"SELECT {_IDENTITY} FROM identity WHERE target=? AND resource_type=? "  # noqa: S608
                          "AND server_id=? ORDER BY owner, system LIMIT 1", (target, resource_type, server_id))
        return _identity(rows[0]) if rows else None

    def set_content_hash(self, target: str, resource_type: str, system: str, value: str,
                         content_hash: str | None) -> None:
        with self._tx() as db:
            db.execute(self._q("UPDATE identity SET content_hash=? WHERE target=? AND resource_type=? AND system=? "
                               "AND value=?"), (content_hash, target, resource_type, system, value))

    def set_pending(self, target: str, writes: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        if not writes:
            return
        with self._tx() as db:
            for rtype, system, value, write in sorted(writes, key=lambda w: w[:3]):
                key = (target, rtype, system, value)
                sql = ("SELECT pending FROM identity WHERE target=? AND resource_type=? AND system=? "  # noqa: S608
                       f"AND value=?{self.row_lock}")  # row_lock: a fixed clause of the storage class
                row = db.execute(self._q(sql), key).fetchone()
                if row is None:
                    continue
                earlier = [w for w in (orjson.loads(row[0]) if row[0] else []) if w != write]
                db.execute(self._q("UPDATE identity SET pending=? WHERE target=? AND resource_type=? AND system=? "
                                   "AND value=?"), (orjson.dumps([*earlier, write][-PENDING_KEPT:]), *key))

    def forget_identities(self, target: str) -> int:
        with self._tx() as db:
            return int(db.execute(self._q("DELETE FROM identity WHERE target=?"), (target,)).rowcount)

    def open_conflict(self, conflict: Conflict, *, now: float) -> int:
        params = (conflict.target, conflict.resource_type, conflict.server_id, conflict.record_type,
                  conflict.record_id, conflict.base_version, conflict.server_version,
                  orjson.dumps(conflict.clinic_resource), _dumps(conflict.server_resource),
                  orjson.dumps([c.as_dict() for c in conflict.diff]), conflict.detail, conflict.clinic_hash, now)
        with self._tx() as db:
            return int(db.execute(self._q(UPSERT_CONFLICT), params).fetchone()[0])

    def conflict(self, conflict_id: int) -> Conflict | None:
        rows = self._rows(f"SELECT {_CONFLICT} FROM conflict WHERE id=?", (conflict_id,))  # noqa: S608
        return _conflict(rows[0]) if rows else None

    def conflicts(self, *, state: str | None = "open", target: str | None = None, limit: int = 100) -> list[Conflict]:
        where, params = _filters(state=state, target=target)
        rows = self._rows(f"SELECT {_CONFLICT} FROM conflict WHERE {where} "  # noqa: S608 (fixed columns)
                          "ORDER BY id DESC LIMIT ?", (*params, limit))
        return [_conflict(r) for r in rows]

    def resolve_conflict(self, conflict_id: int, resolution: str, *, now: float, detail: str | None = None) -> bool:
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, not {resolution!r}")
        with self._tx() as db:
            cur = db.execute(self._q("UPDATE conflict SET state='resolved', resolution=?, resolved_at=?, "
                                     "detail=COALESCE(?, detail) WHERE id=? AND state='open'"),
                             (resolution, now, detail, conflict_id))
            return bool(cur.rowcount == 1)

    def note_conflict(self, conflict_id: int, detail: str) -> bool:
        with self._tx() as db:
            cur = db.execute(self._q("UPDATE conflict SET detail=? WHERE id=? AND state='open'"), (detail, conflict_id))
            return bool(cur.rowcount == 1)

    def add_audit(self, entries: list[AuditEntry]) -> None:
        if not entries:
            return
        with self._tx() as db:
            db.cursor().executemany(self._q(
                "INSERT INTO audit (at, target, resource_type, server_id, version, system, value, record_type, "
                "record_id, outcome, txn, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"),
                [(e.at, e.target, e.resource_type, e.server_id, e.version, e.system, e.value, e.record_type,
                  e.record_id, e.outcome, e.transaction, e.detail) for e in entries])

    def audit(self, *, target: str | None = None, record: tuple[str, str] | None = None,
              server_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        where, params = _filters(target=target, record_type=record[0] if record else None,
                                 record_id=record[1] if record else None, server_id=server_id)
        rows = self._rows(f"SELECT {_AUDIT} FROM audit WHERE {where} "  # noqa: S608 (fixed columns)
                          "ORDER BY seq DESC LIMIT ?", (*params, limit))
        return [AuditEntry(at=r[1], target=r[2], resource_type=r[3], server_id=r[4], version=r[5], system=r[6],
                           value=r[7], record_type=r[8], record_id=r[9], outcome=r[10], transaction=r[11],
                           detail=r[12], seq=int(r[0])) for r in rows]


def _filters(**columns: str | None) -> tuple[str, list[str]]:
    """A WHERE condition (``?`` placeholders) for the columns given a value; None leaves one out."""
    given = {c: v for c, v in columns.items() if v is not None}
    return " AND ".join([f"{c}=?" for c in given] or ["1=1"]), list(given.values())


def _dumps(value: Any) -> bytes | None:
    return None if value is None else orjson.dumps(value)


def _identity(r: Sequence[Any]) -> Identity:
    return Identity(target=r[0], resource_type=r[1], system=r[2], value=r[3], server_id=r[4], version=r[5],
                    owner=r[6], content_hash=r[7], record_type=r[8], record_id=r[9], updated_at=r[10],
                    pending=orjson.loads(r[11]) if r[11] else None)


def _conflict(r: Sequence[Any]) -> Conflict:
    return Conflict(id=int(r[0]), target=r[1], resource_type=r[2], server_id=r[3], record_type=r[4], record_id=r[5],
                    base_version=r[6], server_version=r[7], clinic_resource=orjson.loads(r[8]),
                    server_resource=orjson.loads(r[9]) if r[9] else None,
                    diff=[FieldChange(**c) for c in orjson.loads(r[10])], state=r[11], resolution=r[12],
                    detected_at=r[13], resolved_at=r[14], detail=r[15], clinic_hash=r[16])


__all__ = ["PRIMARY", "SqlOutbox", "SqlTargetState", "version_rank"]
