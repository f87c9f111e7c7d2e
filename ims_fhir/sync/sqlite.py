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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigurationError
from .sql import SqlOutbox, SqlTargetState

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


#: what the per-target state gained after :data:`TARGET_STATE_SCHEMA`: the version rank (no lost
#: update of an identity's version by several workers), the in-flight write whose answer never
#: came, and one open conflict per resource enforced by the database
TARGET_STATE_STEP_2 = (
    "ALTER TABLE identity ADD COLUMN version_num INTEGER",
    "ALTER TABLE identity ADD COLUMN pending BLOB",
    "CREATE UNIQUE INDEX IF NOT EXISTS conflict_open ON conflict (target, resource_type, server_id) "
    "WHERE state='open'",
)


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
    # 3: issue 9's per-target state (identity map, conflicts, audit trail), IF NOT EXISTS: an outbox
    # of an earlier version created these tables beside the versioned ones
    tuple(s.strip() for s in TARGET_STATE_SCHEMA.split(";") if s.strip()),
    TARGET_STATE_STEP_2,  # 4
)


def path_from_url(url: str) -> str:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``sqlite:///:memory:`` -> a path."""
    if not url.startswith("sqlite:///"):
        raise ConfigurationError(f"storage url {url!r}: expected sqlite:///PATH or postgresql://...")
    path = url[len("sqlite:///"):]
    if not path:
        raise ConfigurationError(f"storage url {url!r} names no file")
    return path


def adopt_target_state(db: sqlite3.Connection) -> None:
    """Bring a file without schema versions (the push command's state file) to the current
    per-target state: :data:`TARGET_STATE_SCHEMA`, then the steps of :data:`TARGET_STATE_STEP_2`
    it lacks."""
    db.executescript(TARGET_STATE_SCHEMA)
    columns = {str(r[1]) for r in db.execute("PRAGMA table_info(identity)").fetchall()}
    for statement in TARGET_STATE_STEP_2:
        column = statement.split("ADD COLUMN ")[1].split()[0] if "ADD COLUMN" in statement else None
        if column is None or column not in columns:
            db.execute(statement)


class SQLiteTargetState(SqlTargetState):
    """:class:`~ims_fhir.sync.store.TargetState` on SQLite (the shared SQL of :mod:`.sql`)."""


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


__all__ = ["MIGRATIONS", "TARGET_STATE_SCHEMA", "TARGET_STATE_STEP_2", "SQLiteOutbox", "SQLiteTargetState",
           "adopt_target_state", "path_from_url"]
