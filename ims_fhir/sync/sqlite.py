"""The SQLite outbox (WAL): the default storage of the sync service, for one host.

One connection per thread (SQLite connections are not shared across threads); every
method is one transaction, and those that write start with ``BEGIN IMMEDIATE`` so that
two workers (threads or processes on this host) never claim the same delivery: the
write lock is taken before the due deliveries are read. ``synchronous=FULL`` with WAL
makes a committed claim or result survive a power cut as well as a ``kill -9``.
The SQL itself is shared with PostgreSQL (:mod:`.sql`); :data:`MIGRATIONS` is the schema.
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
from .sql import SqlOutbox
from .store import OWNERS, RESOLUTIONS, AuditEntry, Conflict, FieldChange, Identity

#: the schema, one migration per step (``schema_version`` records those applied). Step 1 is
#: the schema before versioning, every statement ``IF NOT EXISTS`` so that it also adopts an
#: outbox written by an earlier version.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS record (
            record_type TEXT NOT NULL, record_id TEXT NOT NULL,
            revision INTEGER NOT NULL, content_hash TEXT NOT NULL, body BLOB NOT NULL,
            waits_type TEXT, waits_id TEXT,
            received_at REAL NOT NULL, updated_at REAL NOT NULL,
            PRIMARY KEY (record_type, record_id))""",
        "CREATE TABLE IF NOT EXISTS shared (resource_id TEXT PRIMARY KEY, entry BLOB NOT NULL)",
        """CREATE TABLE IF NOT EXISTS delivery (
            target TEXT NOT NULL, record_type TEXT NOT NULL, record_id TEXT NOT NULL,
            rank INTEGER NOT NULL, seq INTEGER NOT NULL,
            state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            lease_owner TEXT, lease_until REAL, sending_revision INTEGER,
            synced_revision INTEGER, server_id TEXT, server_version TEXT, resources BLOB,
            http_status INTEGER, error TEXT, outcome BLOB,
            queued_at REAL, updated_at REAL, synced_at REAL,
            PRIMARY KEY (target, record_type, record_id))""",
        "CREATE INDEX IF NOT EXISTS delivery_due ON delivery (target, state, rank, seq)",
        """CREATE TABLE IF NOT EXISTS event (
            seq INTEGER PRIMARY KEY, at REAL NOT NULL, target TEXT NOT NULL,
            record_type TEXT NOT NULL, record_id TEXT NOT NULL, revision INTEGER NOT NULL,
            event TEXT NOT NULL, detail TEXT)""",
        "CREATE INDEX IF NOT EXISTS event_record ON event (record_type, record_id, seq)",
        """CREATE TABLE IF NOT EXISTS counter (name TEXT NOT NULL, target TEXT NOT NULL, value REAL NOT NULL,
            PRIMARY KEY (name, target))""",
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    ),
    (  # 2: per-patient order, and dead-lettering by age
        "ALTER TABLE delivery ADD COLUMN patient TEXT",
        "ALTER TABLE delivery ADD COLUMN first_failed_at REAL",
        "CREATE INDEX delivery_patient ON delivery (target, patient, state)",
    ),
)


def path_from_url(url: str) -> str:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``sqlite:///:memory:`` -> a path."""
    if not url.startswith("sqlite:///"):
        raise ConfigurationError(f"storage url {url!r}: expected sqlite:///PATH or postgresql://...")
    path = url[len("sqlite:///"):]
    if not path:
        raise ConfigurationError(f"storage url {url!r} names no file")
    return path


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


class SQLiteOutbox(SqlOutbox, SQLiteTargetState):
    """:class:`~ims_fhir.sync.store.Outbox` (and the per-target state of issue 9,
    :class:`~ims_fhir.sync.store.TargetState`) on one SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._refuse_damaged()
        with self._tx() as db:  # the write lock: one process applies a step, the others see it done
            self._migrate(db, MIGRATIONS)
        # issue 9's tables, each IF NOT EXISTS (to become a migration step of their own when the
        # PostgreSQL storage keeps them too)
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

    def _next_seq(self, db: sqlite3.Connection, n: int) -> list[int]:
        row = db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()
        first = (row[0] if row else 0) + 1
        db.execute("INSERT INTO meta VALUES ('seq', ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                   (first + n,))
        return list(range(first, first + n))

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                try:
                    db.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()

    # -- integrity ------------------------------------------------------------------

    def check_integrity(self) -> str | None:
        """``PRAGMA quick_check``: None when the file is sound, else SQLite's first complaint."""
        try:
            rows = self._db().execute("PRAGMA quick_check(5)").fetchall()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        found = [str(r[0]) for r in rows if r and r[0] != "ok"]
        return "; ".join(found)[:500] if found else None

    def _refuse_damaged(self) -> None:
        """A file that exists must be a sound outbox: an empty (0-byte) or damaged file is an error, never
        silently a new, empty outbox (that would lose every queued record). A missing file is a new outbox."""
        path = Path(self.path)
        if not path.exists():
            return
        wal = Path(self.path + "-wal")
        if path.is_file() and path.stat().st_size == 0 and not (wal.exists() and wal.stat().st_size > 0):
            raise ConfigurationError(
                f"storage {self.path}: the file is empty (0 bytes), not an outbox; if a new outbox is meant, "
                "delete the file; otherwise restore it from a backup")
        problem = self.check_integrity()
        if problem is not None:
            self.close()
            raise ConfigurationError(f"storage {self.path}: the outbox is damaged (PRAGMA quick_check: {problem}); "
                                     "restore it from a backup")


__all__ = ["MIGRATIONS", "TARGET_STATE_SCHEMA", "SQLiteOutbox", "SQLiteTargetState", "path_from_url"]
