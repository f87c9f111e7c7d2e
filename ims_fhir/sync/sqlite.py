"""The SQLite outbox (WAL): the default storage of the sync service, for one host.

One connection per thread (SQLite connections are not shared across threads); every
method is one transaction, and those that write start with ``BEGIN IMMEDIATE`` so that
two workers (threads or processes on this host) never claim the same delivery: the
write lock is taken before the due deliveries are read. ``synchronous=FULL`` with WAL
makes a committed claim or result survive a power cut as well as a ``kill -9``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigurationError
from .store import (
    KIND_RANK,
    LATENCY_BUCKETS,
    OWNERS,
    RESOLUTIONS,
    AuditEntry,
    Claimed,
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
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS record (
    record_type TEXT NOT NULL, record_id TEXT NOT NULL,
    revision INTEGER NOT NULL, content_hash TEXT NOT NULL, body BLOB NOT NULL,
    waits_type TEXT, waits_id TEXT,
    received_at REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (record_type, record_id)
);
CREATE TABLE IF NOT EXISTS shared (resource_id TEXT PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS delivery (
    target TEXT NOT NULL, record_type TEXT NOT NULL, record_id TEXT NOT NULL,
    rank INTEGER NOT NULL, seq INTEGER NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT, lease_until REAL, sending_revision INTEGER,
    synced_revision INTEGER, server_id TEXT, server_version TEXT, resources BLOB,
    http_status INTEGER, error TEXT, outcome BLOB,
    queued_at REAL, updated_at REAL, synced_at REAL,
    PRIMARY KEY (target, record_type, record_id)
);
CREATE INDEX IF NOT EXISTS delivery_due ON delivery (target, state, rank, seq);
CREATE TABLE IF NOT EXISTS event (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, target TEXT NOT NULL,
    record_type TEXT NOT NULL, record_id TEXT NOT NULL, revision INTEGER NOT NULL,
    event TEXT NOT NULL, detail TEXT
);
CREATE INDEX IF NOT EXISTS event_record ON event (record_type, record_id, seq);
CREATE TABLE IF NOT EXISTS counter (name TEXT NOT NULL, target TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (name, target));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

#: the per-target state of issue 9 (identity map, conflicts, audit trail): tables of their own,
#: created beside the outbox's, so that a schema-migration mechanism can add them as one step
TARGET_STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS identity (
    target TEXT NOT NULL, resource_type TEXT NOT NULL, system TEXT NOT NULL, value TEXT NOT NULL,
    server_id TEXT NOT NULL, version TEXT, owner TEXT NOT NULL, content_hash TEXT,
    record_type TEXT, record_id TEXT, updated_at REAL NOT NULL,
    PRIMARY KEY (target, resource_type, system, value)
);
CREATE INDEX IF NOT EXISTS identity_server ON identity (target, resource_type, server_id);
CREATE TABLE IF NOT EXISTS conflict (
    id INTEGER PRIMARY KEY, target TEXT NOT NULL, resource_type TEXT NOT NULL, server_id TEXT NOT NULL,
    record_type TEXT, record_id TEXT, base_version TEXT, server_version TEXT,
    clinic_resource BLOB NOT NULL, server_resource BLOB, diff BLOB NOT NULL,
    state TEXT NOT NULL, resolution TEXT, detected_at REAL NOT NULL, resolved_at REAL, detail TEXT,
    clinic_hash TEXT
);
CREATE INDEX IF NOT EXISTS conflict_state ON conflict (state, target, id);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, target TEXT NOT NULL, resource_type TEXT NOT NULL,
    server_id TEXT, version TEXT, system TEXT, value TEXT, record_type TEXT, record_id TEXT,
    outcome TEXT NOT NULL, txn TEXT, detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_record ON audit (record_type, record_id, seq);
CREATE INDEX IF NOT EXISTS audit_target ON audit (target, seq);
"""


class SQLiteTargetState:
    """:class:`~ims_fhir.sync.store.TargetState` on SQLite; the host class provides ``_tx``
    (a context manager yielding a connection inside one transaction) and creates
    :data:`TARGET_STATE_SCHEMA`."""

    _tx: Callable[..., Any]

    def identity(self, target: str, resource_type: str, system: str, value: str) -> Identity | None:
        with self._tx(write=False) as db:
            row = _query(db, "SELECT * FROM identity WHERE target=? AND resource_type=? AND system=? AND value=?",
                             (target, resource_type, system, value)).fetchone()
        return _identity(row) if row else None

    def identities(self, target: str, *, resource_type: str | None = None, owner: str | None = None,
                   limit: int = 1000) -> list[Identity]:
        where, params = ["target=?"], [target]
        if resource_type is not None:
            where.append("resource_type=?")
            params.append(resource_type)
        if owner is not None:
            where.append("owner=?")
            params.append(owner)
        with self._tx(write=False) as db:
            rows = _query(db, f"SELECT * FROM identity WHERE {' AND '.join(where)} "  # noqa: S608 (fixed columns)
                              "ORDER BY resource_type, system, value LIMIT ?", (*params, limit)).fetchall()
        return [_identity(r) for r in rows]

    def put_identities(self, identities: list[Identity], *, now: float) -> None:
        for i in identities:
            if i.owner not in OWNERS:
                raise ValueError(f"identity owner must be one of {OWNERS}, not {i.owner!r}")
        with self._tx() as db:
            db.executemany(
                "INSERT INTO identity (target, resource_type, system, value, server_id, version, owner, content_hash, "
                "record_type, record_id, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (target, resource_type, system, value) DO UPDATE SET server_id=excluded.server_id, "
                "version=excluded.version, owner=excluded.owner, "
                "content_hash=COALESCE(excluded.content_hash, identity.content_hash), "
                "record_type=COALESCE(excluded.record_type, identity.record_type), "
                "record_id=COALESCE(excluded.record_id, identity.record_id), updated_at=excluded.updated_at",
                [(i.target, i.resource_type, i.system, i.value, i.server_id, i.version, i.owner, i.content_hash,
                  i.record_type, i.record_id, now) for i in identities])

    def identity_by_server_id(self, target: str, resource_type: str, server_id: str) -> Identity | None:
        with self._tx(write=False) as db:
            row = _query(db, "SELECT * FROM identity WHERE target=? AND resource_type=? AND server_id=? "
                             "ORDER BY owner, system LIMIT 1", (target, resource_type, server_id)).fetchone()
        return _identity(row) if row else None

    def set_content_hash(self, target: str, resource_type: str, system: str, value: str,
                         content_hash: str | None) -> None:
        with self._tx() as db:
            db.execute("UPDATE identity SET content_hash=? WHERE target=? AND resource_type=? AND system=? AND value=?",
                       (content_hash, target, resource_type, system, value))

    def forget_identities(self, target: str) -> int:
        with self._tx() as db:
            return int(db.execute("DELETE FROM identity WHERE target=?", (target,)).rowcount)

    def open_conflict(self, conflict: Conflict, *, now: float) -> int:
        values = (conflict.record_type, conflict.record_id, conflict.base_version, conflict.server_version,
                  orjson.dumps(conflict.clinic_resource), _dumps(conflict.server_resource),
                  orjson.dumps([c.as_dict() for c in conflict.diff]), conflict.detail, conflict.clinic_hash)
        with self._tx() as db:
            row = db.execute("SELECT id FROM conflict WHERE target=? AND resource_type=? AND server_id=? "
                             "AND state='open'", (conflict.target, conflict.resource_type, conflict.server_id)).fetchone()
            if row:
                db.execute("UPDATE conflict SET record_type=?, record_id=?, base_version=?, server_version=?, "
                           "clinic_resource=?, server_resource=?, diff=?, detail=?, clinic_hash=?, detected_at=? "
                           "WHERE id=?",
                           (*values, now, row[0]))
                return int(row[0])
            cur = db.execute(
                "INSERT INTO conflict (target, resource_type, server_id, record_type, record_id, base_version, "
                "server_version, clinic_resource, server_resource, diff, detail, clinic_hash, state, detected_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,'open',?)",
                (conflict.target, conflict.resource_type, conflict.server_id, *values, now))
            return int(cur.lastrowid or 0)

    def conflict(self, conflict_id: int) -> Conflict | None:
        with self._tx(write=False) as db:
            row = _query(db, "SELECT * FROM conflict WHERE id=?", (conflict_id,)).fetchone()
        return _conflict(row) if row else None

    def conflicts(self, *, state: str | None = "open", target: str | None = None, limit: int = 100) -> list[Conflict]:
        where, params = ["1=1"], []
        if state is not None:
            where.append("state=?")
            params.append(state)
        if target is not None:
            where.append("target=?")
            params.append(target)
        with self._tx(write=False) as db:
            rows = _query(db, f"SELECT * FROM conflict WHERE {' AND '.join(where)} "  # noqa: S608 (fixed columns)
                              "ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [_conflict(r) for r in rows]

    def resolve_conflict(self, conflict_id: int, resolution: str, *, now: float, detail: str | None = None) -> bool:
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, not {resolution!r}")
        with self._tx() as db:
            cur = db.execute("UPDATE conflict SET state='resolved', resolution=?, resolved_at=?, "
                             "detail=COALESCE(?, detail) WHERE id=? AND state='open'",
                             (resolution, now, detail, conflict_id))
            return bool(cur.rowcount == 1)

    def add_audit(self, entries: list[AuditEntry]) -> None:
        if not entries:
            return
        with self._tx() as db:
            db.executemany(
                "INSERT INTO audit (at, target, resource_type, server_id, version, system, value, record_type, "
                "record_id, outcome, txn, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [(e.at, e.target, e.resource_type, e.server_id, e.version, e.system, e.value, e.record_type,
                  e.record_id, e.outcome, e.transaction, e.detail) for e in entries])

    def audit(self, *, target: str | None = None, record: tuple[str, str] | None = None,
              server_id: str | None = None, limit: int = 100) -> list[AuditEntry]:
        where, params = ["1=1"], []
        if target is not None:
            where.append("target=?")
            params.append(target)
        if record is not None:
            where.append("record_type=? AND record_id=?")
            params.extend(record)
        if server_id is not None:
            where.append("server_id=?")
            params.append(server_id)
        with self._tx(write=False) as db:
            rows = _query(db, f"SELECT * FROM audit WHERE {' AND '.join(where)} "  # noqa: S608 (fixed columns)
                              "ORDER BY seq DESC LIMIT ?", (*params, limit)).fetchall()
        return [AuditEntry(at=r["at"], target=r["target"], resource_type=r["resource_type"], outcome=r["outcome"],
                           server_id=r["server_id"], version=r["version"], system=r["system"], value=r["value"],
                           record_type=r["record_type"], record_id=r["record_id"], transaction=r["txn"],
                           detail=r["detail"], seq=r["seq"]) for r in rows]


def _query(db: sqlite3.Connection, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Cursor:
    """A cursor whose rows are :class:`sqlite3.Row` (by column name), leaving the connection as it is."""
    cur = db.cursor()
    cur.row_factory = sqlite3.Row
    return cur.execute(sql, params)


def _dumps(value: Any) -> bytes | None:
    return None if value is None else orjson.dumps(value)


def _identity(r: sqlite3.Row) -> Identity:
    return Identity(target=r["target"], resource_type=r["resource_type"], system=r["system"], value=r["value"],
                    server_id=r["server_id"], version=r["version"], owner=r["owner"], content_hash=r["content_hash"],
                    record_type=r["record_type"], record_id=r["record_id"], updated_at=r["updated_at"])


def _conflict(r: sqlite3.Row) -> Conflict:
    return Conflict(id=r["id"], target=r["target"], resource_type=r["resource_type"], server_id=r["server_id"],
                    record_type=r["record_type"], record_id=r["record_id"], base_version=r["base_version"],
                    server_version=r["server_version"], clinic_resource=orjson.loads(r["clinic_resource"]),
                    server_resource=orjson.loads(r["server_resource"]) if r["server_resource"] else None,
                    diff=[FieldChange(**c) for c in orjson.loads(r["diff"])], state=r["state"],
                    resolution=r["resolution"], detected_at=r["detected_at"], resolved_at=r["resolved_at"],
                    detail=r["detail"], clinic_hash=r["clinic_hash"])


#: main resource type of each record kind (its id and version are the record's "server id")
_PRIMARY = {"patient": "Patient", "practitioner": "Practitioner", "assessment": "Observation",
            "treatment": "Procedure"}


def path_from_url(url: str) -> str:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``sqlite:///:memory:`` -> a path."""
    if not url.startswith("sqlite:///"):
        raise ConfigurationError(f"storage url {url!r}: expected sqlite:///PATH (PostgreSQL is not implemented yet)")
    path = url[len("sqlite:///"):]
    if not path:
        raise ConfigurationError(f"storage url {url!r} names no file")
    return path


class SQLiteOutbox(SQLiteTargetState):
    """:class:`~ims_fhir.sync.store.Outbox` (and :class:`~ims_fhir.sync.store.TargetState`) on one
    SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db().executescript(SCHEMA)  # each statement IF NOT EXISTS: safe for several processes
        self._db().executescript(TARGET_STATE_SCHEMA)

    @classmethod
    def from_url(cls, url: str) -> SQLiteOutbox:
        return cls(path_from_url(url))

    # -- connections ----------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                     check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise ConfigurationError(f"storage {self.path}: cannot open ({exc})") from exc
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                try:
                    db.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()

    def ping(self) -> None:
        self._db().execute("SELECT 1 FROM meta LIMIT 1").fetchall()

    # -- intake ---------------------------------------------------------------------

    def put(self, records: list[Incoming], targets: list[str], *, now: float) -> list[Stored]:
        out = []
        with self._tx() as db:
            seq = self._next_seq(db, len(records) * max(len(targets), 1))
            for rec in records:
                row = db.execute("SELECT revision, content_hash FROM record WHERE record_type=? AND record_id=?",
                                 (rec.record_type, rec.record_id)).fetchone()
                waits = rec.waits_for or (None, None)
                for rid, entry in rec.shared.items():
                    db.execute("INSERT INTO shared VALUES (?,?) ON CONFLICT (resource_id) DO UPDATE SET entry=excluded.entry",
                               (rid, entry))
                if row is not None and row[1] == rec.content_hash:
                    # unchanged: a target added to the configuration since still gets it
                    revision = row[0]
                    added = self._enqueue(db, rec, targets, revision, seq, now, only_missing=True)
                    seq += len(targets)
                    out.append(Stored(rec.record_type, rec.record_id, "queued" if added else "unchanged", revision))
                    continue
                revision = 1 if row is None else row[0] + 1
                if row is None:
                    db.execute("INSERT INTO record VALUES (?,?,?,?,?,?,?,?,?)",
                               (rec.record_type, rec.record_id, revision, rec.content_hash, rec.group,
                                waits[0], waits[1], now, now))
                else:
                    db.execute("UPDATE record SET revision=?, content_hash=?, body=?, waits_type=?, waits_id=?, "
                               "updated_at=? WHERE record_type=? AND record_id=?",
                               (revision, rec.content_hash, rec.group, waits[0], waits[1], now,
                                rec.record_type, rec.record_id))
                self._enqueue(db, rec, targets, revision, seq, now, only_missing=False)
                seq += len(targets)
                out.append(Stored(rec.record_type, rec.record_id, "queued", revision))
        return out

    @staticmethod
    def _next_seq(db: sqlite3.Connection, n: int) -> int:
        row = db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
        first = (row[0] if row else 0) + 1
        db.execute("INSERT INTO meta VALUES ('seq', ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                   (first + n,))
        return first

    def _enqueue(self, db: sqlite3.Connection, rec: Incoming, targets: list[str], revision: int, seq: int,
                 now: float, *, only_missing: bool) -> bool:
        added = False
        rank = KIND_RANK.get(rec.record_type, 9)
        for i, target in enumerate(targets):
            row = db.execute("SELECT state FROM delivery WHERE target=? AND record_type=? AND record_id=?",
                             (target, rec.record_type, rec.record_id)).fetchone()
            if row is None:
                db.execute("INSERT INTO delivery (target, record_type, record_id, rank, seq, state, attempts, "
                           "next_attempt_at, queued_at, updated_at) VALUES (?,?,?,?,?,'queued',0,?,?,?)",
                           (target, rec.record_type, rec.record_id, rank, seq + i, now, now, now))
            elif only_missing:
                continue
            elif row[0] == "sending":
                # the worker holding it will see the new revision when it completes, and queue it again
                db.execute("UPDATE delivery SET updated_at=? WHERE target=? AND record_type=? AND record_id=?",
                           (now, target, rec.record_type, rec.record_id))
            else:
                db.execute("UPDATE delivery SET state='queued', attempts=0, next_attempt_at=?, seq=?, queued_at=?, "
                           "updated_at=?, lease_owner=NULL, lease_until=NULL "
                           "WHERE target=? AND record_type=? AND record_id=?",
                           (now, seq + i, now, now, target, rec.record_type, rec.record_id))
            self._event(db, now, target, rec.record_type, rec.record_id, revision, "queued",
                        "new record" if row is None else ("changed" if not only_missing else "new target"))
            added = True
        return added

    @staticmethod
    def _event(db: sqlite3.Connection, now: float, target: str, record_type: str, record_id: str, revision: int,
               event: str, detail: str | None = None) -> None:
        db.execute("INSERT INTO event (at, target, record_type, record_id, revision, event, detail) "
                   "VALUES (?,?,?,?,?,?,?)", (now, target, record_type, record_id, revision, event, detail))

    def shared_entry(self, resource_id: str) -> bytes | None:
        row = self._db().execute("SELECT entry FROM shared WHERE resource_id=?", (resource_id,)).fetchone()
        return bytes(row[0]) if row else None

    # -- the worker's side ----------------------------------------------------------

    def claim(self, target: str, *, owner: str, limit: int, lease_seconds: float, now: float) -> list[Claimed]:
        claimed: list[Claimed] = []
        keys: set[tuple[str, str]] = set()
        with self._tx() as db:
            rows = db.execute(
                "SELECT d.record_type, d.record_id, d.attempts, r.revision, r.body, r.waits_type, r.waits_id "
                "FROM delivery d JOIN record r ON r.record_type=d.record_type AND r.record_id=d.record_id "
                "WHERE d.target=? AND ((d.state='queued' AND d.next_attempt_at<=?) OR (d.state='sending' AND d.lease_until<?)) "
                "ORDER BY d.rank, d.seq LIMIT ?", (target, now, now, limit * 4)).fetchall()
            for rtype, rid, attempts, revision, body, waits_type, waits_id in rows:
                if len(claimed) >= limit:
                    break
                if waits_type is not None and (waits_type, waits_id) not in keys:
                    dep = db.execute("SELECT state FROM delivery WHERE target=? AND record_type=? AND record_id=?",
                                     (target, waits_type, waits_id)).fetchone()
                    if dep is not None and dep[0] in ("queued", "sending"):
                        continue  # its assessment goes first; it stays queued
                db.execute("UPDATE delivery SET state='sending', attempts=attempts+1, lease_owner=?, lease_until=?, "
                           "sending_revision=?, updated_at=? WHERE target=? AND record_type=? AND record_id=?",
                           (owner, now + lease_seconds, revision, now, target, rtype, rid))
                self._event(db, now, target, rtype, rid, revision, "sending", f"attempt {attempts + 1}")
                claimed.append(Claimed(target, rtype, rid, revision, bytes(body), attempts + 1))
                keys.add((rtype, rid))
        return claimed

    def release_abandoned(self, is_dead: Callable[[str], bool], *, now: float) -> int:
        with self._tx() as db:
            owners = [r[0] for r in db.execute(
                "SELECT DISTINCT lease_owner FROM delivery WHERE state='sending' AND lease_owner IS NOT NULL")]
            released = 0
            for owner in owners:
                if not is_dead(owner):
                    continue
                rows = db.execute("SELECT target, record_type, record_id, sending_revision FROM delivery "
                                  "WHERE state='sending' AND lease_owner=?", (owner,)).fetchall()
                db.execute("UPDATE delivery SET state='queued', lease_owner=NULL, lease_until=NULL, next_attempt_at=?, "
                           "updated_at=? WHERE state='sending' AND lease_owner=?", (now, now, owner))
                for target, rtype, rid, revision in rows:
                    self._event(db, now, target, rtype, rid, revision or 0, "queued", "its worker stopped mid-send")
                released += len(rows)
        return released

    def complete(self, target: str, results: list[Result], *, owner: str, now: float, max_attempts: int,
                 backoff_base: float, backoff_cap: float, latency: float | None) -> None:
        with self._tx() as db:
            for res in results:
                row = db.execute(
                    "SELECT d.state, d.lease_owner, d.attempts, r.revision FROM delivery d JOIN record r "
                    "ON r.record_type=d.record_type AND r.record_id=d.record_id "
                    "WHERE d.target=? AND d.record_type=? AND d.record_id=?",
                    (target, res.record_type, res.record_id)).fetchone()
                if row is None or row[0] != "sending" or row[1] != owner:
                    continue  # the lease ran out and someone else took it over; their result counts
                _, _, attempts, current = row
                key = (target, res.record_type, res.record_id)
                outcome = orjson.dumps(res.outcome) if res.outcome is not None else None
                if res.kind in ("synced", "kept"):
                    primary = next((r for r in res.resources if r.get("resourceType") == _PRIMARY.get(res.record_type)),
                                   res.resources[0] if res.resources else {})
                    stale = current != res.revision
                    db.execute(
                        "UPDATE delivery SET state=?, synced_revision=?, server_id=?, server_version=?, resources=?, "
                        "http_status=NULL, error=NULL, outcome=NULL, lease_owner=NULL, lease_until=NULL, "
                        "next_attempt_at=?, attempts=CASE WHEN ? THEN 0 ELSE attempts END, updated_at=?, synced_at=? "
                        "WHERE target=? AND record_type=? AND record_id=?",
                        ("queued" if stale else res.kind, res.revision, primary.get("id"), primary.get("version"),
                         orjson.dumps(res.resources), now, stale, now, now, *key))
                    what = f"{primary.get('resourceType')}/{primary.get('id')} version {primary.get('version')}"
                    self._event(db, now, target, res.record_type, res.record_id, res.revision, res.kind,
                                what + (" (server-owned: referenced, never written)" if res.kind == "kept" else ""))
                    if stale:
                        self._event(db, now, target, res.record_type, res.record_id, current, "queued", "changed")
                    self._count(db, "sent", target)
                elif res.kind == "conflict":
                    db.execute("UPDATE delivery SET state='conflict', http_status=?, error=?, outcome=?, "
                               "lease_owner=NULL, lease_until=NULL, updated_at=? "
                               "WHERE target=? AND record_type=? AND record_id=?",
                               (res.status, res.error, outcome, now, *key))
                    self._event(db, now, target, res.record_type, res.record_id, res.revision, "conflict", res.error)
                    self._count(db, "conflicts", target)
                elif res.kind == "rejected":
                    db.execute("UPDATE delivery SET state='failed', http_status=?, error=?, outcome=?, lease_owner=NULL, "
                               "lease_until=NULL, updated_at=? WHERE target=? AND record_type=? AND record_id=?",
                               (res.status, res.error, outcome, now, *key))
                    self._event(db, now, target, res.record_type, res.record_id, res.revision, "failed",
                                f"HTTP {res.status}" if res.status else res.error)
                    self._count(db, "failed", target)
                else:
                    dead = attempts >= max_attempts
                    wait = min(backoff_cap, backoff_base * 2.0 ** max(attempts - 1, 0))
                    db.execute("UPDATE delivery SET state=?, http_status=?, error=?, outcome=?, lease_owner=NULL, "
                               "lease_until=NULL, next_attempt_at=?, updated_at=? "
                               "WHERE target=? AND record_type=? AND record_id=?",
                               ("dead" if dead else "queued", res.status, res.error, outcome, now + wait, now, *key))
                    self._event(db, now, target, res.record_type, res.record_id, res.revision,
                                "dead" if dead else "retry-later", res.error)
                    self._count(db, "dead" if dead else "transient_failures", target)
            if latency is not None:
                self._observe(db, target, latency)

    @staticmethod
    def _count(db: sqlite3.Connection, name: str, target: str, by: float = 1.0) -> None:
        db.execute("INSERT INTO counter VALUES (?,?,?) ON CONFLICT (name, target) DO UPDATE SET value=value+excluded.value",
                   (name, target, by))

    def _observe(self, db: sqlite3.Connection, target: str, seconds: float) -> None:
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                self._count(db, f"latency_le_{bound}", target)
        self._count(db, "latency_count", target)
        self._count(db, "latency_sum", target, seconds)

    # -- replay ---------------------------------------------------------------------

    def settle_conflict(self, target: str, record_type: str, record_id: str, *, state: str, detail: str,
                        now: float) -> bool:
        """After a conflict's resolution: its delivery leaves ``conflict`` for ``state`` (``synced``, or
        ``queued`` to send the clinic's new revision). False when the delivery is not in conflict."""
        with self._tx() as db:
            row = db.execute("SELECT r.revision FROM delivery d JOIN record r ON r.record_type=d.record_type "
                             "AND r.record_id=d.record_id WHERE d.target=? AND d.record_type=? AND d.record_id=? "
                             "AND d.state='conflict'", (target, record_type, record_id)).fetchone()
            if row is None:
                return False
            db.execute("UPDATE delivery SET state=?, http_status=NULL, error=NULL, outcome=NULL, attempts=0, "
                       "next_attempt_at=?, updated_at=?, synced_at=CASE WHEN ?='synced' THEN ? ELSE synced_at END "
                       "WHERE target=? AND record_type=? AND record_id=?",
                       (state, now, now, state, now, target, record_type, record_id))
            self._event(db, now, target, record_type, record_id, row[0], state, detail)
            return True

    def retry(self, record_type: str, record_id: str, *, now: float, target: str | None = None) -> int:
        return self._requeue("record_type=? AND record_id=? AND state IN ('failed','dead')", (record_type, record_id),
                             now=now, target=target)

    def retry_state(self, state: str, *, now: float, target: str | None = None) -> int:
        if state not in ("failed", "dead"):
            raise ValueError(f"only failed or dead deliveries can be retried, not {state!r}")
        return self._requeue("state=?", (state,), now=now, target=target)

    def _requeue(self, where: str, params: tuple[Any, ...], *, now: float, target: str | None) -> int:
        if target is not None:
            where += " AND target=?"
            params = (*params, target)
        with self._tx() as db:
            rows = db.execute(f"SELECT d.target, d.record_type, d.record_id, r.revision FROM delivery d JOIN record r "
                              f"USING (record_type, record_id) WHERE {where}", params).fetchall()
            for tgt, rtype, rid, revision in rows:
                db.execute("UPDATE delivery SET state='queued', attempts=0, next_attempt_at=?, updated_at=?, "
                           "queued_at=? WHERE target=? AND record_type=? AND record_id=?",
                           (now, now, now, tgt, rtype, rid))
                self._event(db, now, tgt, rtype, rid, revision, "queued", "retry requested")
        return len(rows)

    # -- reading --------------------------------------------------------------------

    def status(self, record_type: str, record_id: str) -> RecordStatus | None:
        with self._tx(write=False) as db:
            rec = db.execute("SELECT revision, received_at, updated_at FROM record WHERE record_type=? AND record_id=?",
                             (record_type, record_id)).fetchone()
            if rec is None:
                return None
            rows = db.execute(
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
        rows = self._db().execute(
            "SELECT at, target, record_type, record_id, revision, event, detail FROM event "
            "WHERE record_type=? AND record_id=? ORDER BY seq DESC LIMIT ?", (record_type, record_id, limit)).fetchall()
        return [Event(*r) for r in rows]

    def recent(self, *, limit: int = 20) -> list[Event]:
        rows = self._db().execute("SELECT at, target, record_type, record_id, revision, event, detail FROM event "
                                  "ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [Event(*r) for r in rows]

    def failures(self, *, limit: int = 20) -> list[Failure]:
        rows = self._db().execute(
            "SELECT target, record_type, record_id, state, attempts, http_status, error, outcome, updated_at "
            "FROM delivery WHERE state IN ('failed','dead') ORDER BY updated_at DESC LIMIT ?", (limit,)).fetchall()
        return [Failure(target=r[0], record_type=r[1], record_id=r[2], state=r[3], attempts=r[4], http_status=r[5],
                        error=r[6], outcome=orjson.loads(r[7]) if r[7] else None, updated_at=r[8]) for r in rows]

    def pending(self, target: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM delivery WHERE state IN ('queued','sending')"
        row = self._db().execute(sql + (" AND target=?" if target else ""), (target,) if target else ()).fetchone()
        return int(row[0])

    def stats(self) -> Stats:
        with self._tx(write=False) as db:
            depth = {(t, s): n for t, s, n in db.execute(
                "SELECT target, state, COUNT(*) FROM delivery GROUP BY target, state")}
            raw = {(n, t): v for n, t, v in db.execute("SELECT name, target, value FROM counter")}
        counters = {k: v for k, v in raw.items() if not k[0].startswith("latency_")}
        latency: dict[str, tuple[list[int], int, float]] = {}
        for target in {t for n, t in raw if n == "latency_count"}:
            buckets = [int(raw.get((f"latency_le_{b}", target), 0)) for b in LATENCY_BUCKETS]
            latency[target] = (buckets, int(raw[("latency_count", target)]), raw.get(("latency_sum", target), 0.0))
        return Stats(depth, counters, latency)


__all__ = ["SQLiteOutbox", "path_from_url"]
