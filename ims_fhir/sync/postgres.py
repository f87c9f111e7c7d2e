"""The PostgreSQL outbox: one queue shared by several workers on several hosts.

Chosen by a storage URL ``postgresql://user@host:port/dbname`` (any libpq connection URL;
a password belongs in ``PGPASSWORD`` or ``~/.pgpass``, never in a configuration file). Needs
the optional extra ``ims-fhir[postgres]`` (psycopg 3).

How several workers share the queue:

- a *claim* selects due deliveries ``FOR UPDATE OF d SKIP LOCKED``: rows another worker is
  claiming at this moment are skipped, never waited for, and never taken twice; the claim
  then marks them ``sending`` under a lease (owner + expiry) and commits;
- a delivery with a *blocker* (an earlier queued or sending delivery of the same patient
  and target, see :mod:`.store`) is left alone, so one patient's records reach the server in
  order whichever worker sends them;
- a worker that dies leaves its leases; they expire (``lease_seconds``) and any worker claims
  the deliveries again (a worker of the same host re-queues them at once, see
  :func:`ims_fhir.sync.worker.owner_is_dead`); re-sending is safe (conditional writes);
- :meth:`complete` locks the delivery before it reads the record's revision, and intake's
  delivery upsert decides "still sending?" on the locked row, so a record changed while it
  is being sent is always sent again;
- the per-target state of issue 9 (identity map, conflicts, audit trail; :mod:`.sql`,
  :class:`~ims_fhir.sync.sql.SqlTargetState`) is written by upserts in key order: two workers
  that learn the same identity or meet the same conflict write one row, and an identity's
  version never goes back to an older one.

Transactions run at READ COMMITTED; one that PostgreSQL aborts for a deadlock or a
serialization failure (two intakes of the same new record) is run again, up to
:data:`TX_ATTEMPTS` times. Migrations (:data:`MIGRATIONS`) run under an advisory lock when
the outbox is opened. Intake writes a part of a request (:data:`~ims_fhir.sync.intake.PART`
records) with one statement (a WITH of the tables' inserts, the rows as typed arrays sent in
binary through ``unnest``), in pipeline mode while the next part converts (:class:`_Streaming`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ConfigurationError
from .sql import UPSERT_DELIVERY, SqlOutbox, SqlTargetState
from .store import DEAD_AFTER, KIND_RANK, AuditEntry, Claimed, Conflict, Identity, Incoming, Result, Stored, Storing

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

#: runs of a transaction that PostgreSQL aborted for a deadlock or a serialization conflict
TX_ATTEMPTS = 5

#: a key of ``pg_advisory_xact_lock`` held while migrations run ("imsfhir" in ASCII)
MIGRATION_LOCK = 0x696D7366686972

_DELIVERY_COLUMNS = ("target, record_type, record_id, patient, rank, seq, state, attempts, next_attempt_at, "
                     "queued_at, updated_at")
_DELIVERY_TYPES = ("text", "text", "text", "text", "int4", "int8", "float8", "float8", "float8")
_DELIVERY_ROWS = ("SELECT u.target, u.record_type, u.record_id, u.patient, u.rank, u.seq, 'queued', 0, u.next_attempt_at, "
                  "u.queued_at, u.updated_at FROM unnest({}) AS u(target, record_type, record_id, patient, rank, seq, "
                  "next_attempt_at, queued_at, updated_at)")
#: :data:`~.sql.UPSERT_DELIVERY` for many rows in one statement
UPSERT_DELIVERY_BULK = (f"INSERT INTO delivery ({_DELIVERY_COLUMNS}) {_DELIVERY_ROWS} "
                        + UPSERT_DELIVERY[UPSERT_DELIVERY.index("ON CONFLICT"):])
INSERT_DELIVERY_BULK = (f"INSERT INTO delivery ({_DELIVERY_COLUMNS}) {_DELIVERY_ROWS} "
                        "ON CONFLICT (target, record_type, record_id) DO NOTHING")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE record (
            record_type TEXT NOT NULL, record_id TEXT NOT NULL,
            revision INTEGER NOT NULL, content_hash TEXT NOT NULL, body BYTEA NOT NULL,
            waits_type TEXT, waits_id TEXT,
            received_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (record_type, record_id))""",
        "CREATE TABLE shared (resource_id TEXT PRIMARY KEY, entry BYTEA NOT NULL)",
        """CREATE TABLE delivery (
            target TEXT NOT NULL, record_type TEXT NOT NULL, record_id TEXT NOT NULL,
            patient TEXT, rank INTEGER NOT NULL, seq BIGINT NOT NULL,
            state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at DOUBLE PRECISION NOT NULL, first_failed_at DOUBLE PRECISION,
            lease_owner TEXT, lease_until DOUBLE PRECISION, sending_revision INTEGER,
            synced_revision INTEGER, server_id TEXT, server_version TEXT, resources BYTEA,
            http_status INTEGER, error TEXT, outcome BYTEA,
            queued_at DOUBLE PRECISION, updated_at DOUBLE PRECISION, synced_at DOUBLE PRECISION,
            PRIMARY KEY (target, record_type, record_id))""",
        "CREATE INDEX delivery_due ON delivery (target, state, rank, seq)",
        "CREATE INDEX delivery_patient ON delivery (target, patient) WHERE state IN ('queued', 'sending')",
        "CREATE INDEX delivery_updated ON delivery (updated_at) WHERE state IN ('failed', 'dead')",
        "CREATE SEQUENCE delivery_seq",
        """CREATE TABLE event (
            seq BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, target TEXT NOT NULL,
            record_type TEXT NOT NULL, record_id TEXT NOT NULL, revision INTEGER NOT NULL,
            event TEXT NOT NULL, detail TEXT)""",
        "CREATE INDEX event_record ON event (record_type, record_id, seq)",
        """CREATE TABLE counter (name TEXT NOT NULL, target TEXT NOT NULL, value DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (name, target))""",
    ),
    (  # 2: a converted record is about 10 kB of JSON: compressed with lz4 (where the server has
       # it; pglz cost intake much of its time) and kept in the row rather than in TOAST chunks
        """DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)) THEN
                EXECUTE 'ALTER TABLE record ALTER COLUMN body SET COMPRESSION lz4';
                EXECUTE 'ALTER TABLE shared ALTER COLUMN entry SET COMPRESSION lz4';
            END IF;
        END $$""",
        "ALTER TABLE record ALTER COLUMN body SET STORAGE MAIN",
    ),
    (  # 3: issue 9's per-target state (identity map, conflicts, audit trail), as on SQLite; several
       # workers write it at once: identities by upsert (a version never goes back, see
       # :mod:`.sql`, *version rank*), one open conflict per resource by a partial unique index
        """CREATE TABLE identity (
            target TEXT NOT NULL, resource_type TEXT NOT NULL, system TEXT NOT NULL, value TEXT NOT NULL,
            server_id TEXT NOT NULL, version TEXT, version_num BIGINT, owner TEXT NOT NULL, content_hash TEXT,
            record_type TEXT, record_id TEXT, updated_at DOUBLE PRECISION NOT NULL, pending BYTEA,
            PRIMARY KEY (target, resource_type, system, value))""",
        "CREATE INDEX identity_server ON identity (target, resource_type, server_id)",
        """CREATE TABLE conflict (
            id BIGSERIAL PRIMARY KEY, target TEXT NOT NULL, resource_type TEXT NOT NULL, server_id TEXT NOT NULL,
            record_type TEXT, record_id TEXT, base_version TEXT, server_version TEXT,
            clinic_resource BYTEA NOT NULL, server_resource BYTEA, diff BYTEA NOT NULL,
            state TEXT NOT NULL, resolution TEXT, detected_at DOUBLE PRECISION NOT NULL,
            resolved_at DOUBLE PRECISION, detail TEXT, clinic_hash TEXT)""",
        "CREATE INDEX conflict_state ON conflict (state, target, id)",
        "CREATE UNIQUE INDEX conflict_open ON conflict (target, resource_type, server_id) WHERE state='open'",
        """CREATE TABLE audit (
            seq BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, target TEXT NOT NULL,
            resource_type TEXT NOT NULL, server_id TEXT, version TEXT, system TEXT, value TEXT,
            record_type TEXT, record_id TEXT, outcome TEXT NOT NULL, txn TEXT, detail TEXT)""",
        "CREATE INDEX audit_record ON audit (record_type, record_id, seq)",
        "CREATE INDEX audit_target ON audit (target, seq)",
    ),
)

_URL = re.compile(r"postgres(ql)?://")


def is_postgres_url(url: str) -> bool:
    return bool(_URL.match(url))


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigurationError("a postgresql:// storage needs psycopg 3: pip install 'ims-fhir[postgres]'") from None
    return psycopg


def _where(url: str) -> str:
    """The URL without a password, for messages."""
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", url)


class PostgresOutbox(SqlOutbox, SqlTargetState):
    """:class:`~ims_fhir.sync.store.Outbox`, with the per-target state of issue 9, on PostgreSQL
    (see the module docstring)."""

    lock_clause = " FOR UPDATE OF d SKIP LOCKED"
    row_lock = " FOR UPDATE"
    #: a table that grew since autovacuum last analysed it (a queue filled in seconds) looks
    #: nearly empty to the planner, which then sorts the whole queue at every claim rather than
    #: read ``delivery_due`` in order (it did, here: an 8,000-delivery queue spilled a 35 MB sort
    #: to disk per claim); the claim's transaction tells it not to
    claim_prelude = "SET LOCAL enable_sort = off"

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._pg = _psycopg()
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._sql: dict[str, str] = {}
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            self._migrate(db, MIGRATIONS)

    @classmethod
    def from_url(cls, url: str) -> PostgresOutbox:
        return cls(url)

    # -- connections ----------------------------------------------------------------------

    def _db(self) -> psycopg.Connection[Any]:
        db: psycopg.Connection[Any] | None = getattr(self._local, "db", None)
        if db is None or db.closed:
            try:
                db = self._pg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
                                      application_name="ims-fhir")
            except self._pg.Error as exc:
                # the server's message names host and database, never the password
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigurationError(f"storage {_where(self.url)}: cannot connect ({reason})") from None
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[psycopg.Connection[Any]]:
        db = self._db()
        with db.transaction():
            yield db

    def _q(self, sql: str) -> str:
        out = self._sql.get(sql)
        if out is None:
            out = self._sql[sql] = sql.replace("?", "%s")
        return out

    @property
    def retryable(self) -> tuple[type[Exception], ...]:
        """The errors of a transaction PostgreSQL aborted for a conflict with another one."""
        errors = self._pg.errors
        return errors.DeadlockDetected, errors.SerializationFailure, errors.UniqueViolation

    def _retrying(self, run: Callable[[], T]) -> T:
        """Run a transaction again when PostgreSQL aborted it for a conflict with another one."""
        retryable = self.retryable
        for attempt in range(1, TX_ATTEMPTS + 1):
            try:
                return run()
            except retryable:
                if attempt == TX_ATTEMPTS:
                    raise
                time.sleep(0.01 * attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                try:
                    db.close()
                except self._pg.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()

    # -- the shared SQL, with retries on conflicts ----------------------------------------

    def claim(self, target: str, *, owner: str, limit: int, lease_seconds: float, now: float) -> list[Claimed]:
        return self._retrying(lambda: SqlOutbox.claim(self, target, owner=owner, limit=limit,
                                                      lease_seconds=lease_seconds, now=now))

    def complete(self, target: str, results: list[Result], *, owner: str, now: float, max_attempts: int,
                 backoff_base: float, backoff_cap: float, latency: float | None,
                 dead_after: float = DEAD_AFTER) -> None:
        self._retrying(lambda: SqlOutbox.complete(
            self, target, results, owner=owner, now=now, max_attempts=max_attempts, backoff_base=backoff_base,
            backoff_cap=backoff_cap, latency=latency, dead_after=dead_after))

    def release_abandoned(self, is_dead: Callable[[str], bool], *, now: float) -> int:
        return self._retrying(lambda: SqlOutbox.release_abandoned(self, is_dead, now=now))

    def _requeue(self, where: str, params: tuple[Any, ...], *, now: float, target: str | None) -> int:
        return self._retrying(lambda: SqlOutbox._requeue(self, where, params, now=now, target=target))

    def put_identities(self, identities: list[Identity], *, now: float, force: bool = False) -> None:
        self._retrying(lambda: SqlTargetState.put_identities(self, identities, now=now, force=force))

    def open_conflict(self, conflict: Conflict, *, now: float) -> int:
        return self._retrying(lambda: SqlTargetState.open_conflict(self, conflict, now=now))

    def add_audit(self, entries: list[AuditEntry]) -> None:
        self._retrying(lambda: SqlTargetState.add_audit(self, entries))

    # -- intake, batched ------------------------------------------------------------------

    @staticmethod
    def _bulk(db: psycopg.Connection[Any], writes: list[tuple[str, tuple[str, ...], list[tuple[Any, ...]]]]) -> None:
        """Many rows of several statements in one: each ``(sql, types, rows)`` with rows becomes a
        WITH part, ``{}`` in its ``sql`` one typed array parameter per column (sent in binary:
        no hex-escaped bytea to parse). PostgreSQL runs every part of a WITH once, to completion."""
        parts: list[str] = []
        params: list[Any] = []
        for sql, types, rows in writes:
            if rows:
                parts.append(f"w{len(parts)} AS ({sql.format(', '.join(f'%b::{t}[]' for t in types))})")
                params += [list(column) for column in zip(*rows, strict=True)]
        if parts:
            db.execute(f"WITH {', '.join(parts)} SELECT 1", params)

    def put(self, records: list[Incoming], targets: list[str], *, now: float) -> list[Stored]:
        return self._retrying(lambda: self._put(records, targets, now))

    def _put(self, records: list[Incoming], targets: list[str], now: float) -> list[Stored]:
        with self._tx() as db:
            return self._put_in(db, records, targets, now)

    @contextmanager
    def storing(self, targets: list[str], *, now: float) -> Iterator[Storing]:
        """Intake's transaction in pipeline mode: each part is sent as it comes, and PostgreSQL
        writes it while intake converts the next (see :class:`_Streaming`)."""
        batch = _Streaming(self, targets, now)
        try:
            yield batch
        except BaseException as exc:
            batch.close(exc)
            raise
        batch.finish()

    def _put_in(self, db: psycopg.Connection[Any], records: list[Incoming], targets: list[str],
                now: float) -> list[Stored]:
        """:meth:`put`'s writes in the caller's transaction; in pipeline mode they are sent, not waited for."""
        keys = [(r.record_type, r.record_id) for r in records]
        if len(set(keys)) != len(keys):  # the same record twice in one batch: one after the other
            return [s for rec in records for s in self._put_in(db, [rec], targets, now)]
        out: list[Stored] = []
        if not records:
            return out
        # lock the records already stored, in key order (two intakes of the same records wait, not deadlock)
        order = sorted(range(len(records)), key=lambda i: (records[i].record_type, records[i].record_id))
        n = len(records) * len(targets)
        numbers = db.execute("SELECT nextval('delivery_seq') FROM generate_series(1, %s)", (n,)) if n else None
        existing = db.execute(
            "SELECT record_type, record_id, revision, content_hash FROM record "
            "WHERE (record_type, record_id) IN (SELECT * FROM unnest(%s::text[], %s::text[])) "
            "ORDER BY record_type, record_id FOR UPDATE",
            ([records[i].record_type for i in order], [records[i].record_id for i in order]))
        # in pipeline mode (intake) both are sent before either is waited for: one round trip
        seqs = iter(sorted(int(r[0]) for r in numbers.fetchall()) if numbers is not None else [])
        found = {(t, i): (int(rev), h) for t, i, rev, h in existing.fetchall()}
        inserts, updates, deliveries, news, events = [], [], [], [], []
        shared: dict[str, bytes] = {}
        unchanged: list[tuple[Incoming, int, list[int]]] = []
        for rec in records:
            shared.update(rec.shared)
            seq = [next(seqs) for _ in targets]
            rank = KIND_RANK.get(rec.record_type, 9)
            old = found.get((rec.record_type, rec.record_id))
            if old is not None and old[1] == rec.content_hash:
                unchanged.append((rec, old[0], seq))
                continue
            waits = rec.waits_for or (None, None)
            revision = 1 if old is None else old[0] + 1
            if old is None:
                inserts.append((rec.record_type, rec.record_id, revision, rec.content_hash, rec.group,
                                waits[0], waits[1], now, now))
            else:
                updates.append((revision, rec.content_hash, rec.group, waits[0], waits[1], now,
                                rec.record_type, rec.record_id))
            for target, n in zip(targets, seq, strict=True):
                deliveries.append((target, rec.record_type, rec.record_id, rec.patient, rank, n, now, now, now))
                events.append((now, target, rec.record_type, rec.record_id, revision, "queued",
                               "new record" if old is None else "changed"))
            out.append(Stored(rec.record_type, rec.record_id, "queued", revision))
        if unchanged:
            # unchanged records: only a target added to the configuration since gets them
            have = {tuple(r) for r in db.execute(
                "SELECT target, record_type, record_id FROM delivery WHERE (record_type, record_id) IN "
                "(SELECT * FROM unnest(%s::text[], %s::text[]))",
                ([r.record_type for r, _, _ in unchanged], [r.record_id for r, _, _ in unchanged])).fetchall()}
            for rec, revision, seq in unchanged:
                missing = [(t, n) for t, n in zip(targets, seq, strict=True)
                           if (t, rec.record_type, rec.record_id) not in have]
                for target, n in missing:
                    news.append((target, rec.record_type, rec.record_id, rec.patient,
                                 KIND_RANK.get(rec.record_type, 9), n, now, now, now))
                    events.append((now, target, rec.record_type, rec.record_id, revision, "queued", "new target"))
                out.append(Stored(rec.record_type, rec.record_id, "queued" if missing else "unchanged", revision))
        # every write of the part in one statement (one round trip; in pipeline mode, none waited for)
        self._bulk(db, [
            ("INSERT INTO shared (resource_id, entry) SELECT * FROM unnest({}) "
             "ON CONFLICT (resource_id) DO UPDATE SET entry=excluded.entry", ("text", "bytea"), sorted(shared.items())),
            ("INSERT INTO record (record_type, record_id, revision, content_hash, body, waits_type, "
             "waits_id, received_at, updated_at) SELECT * FROM unnest({})",
             ("text", "text", "int4", "text", "bytea", "text", "text", "float8", "float8"), inserts),
            ("UPDATE record SET revision=u.revision, content_hash=u.content_hash, body=u.body, "
             "waits_type=u.waits_type, waits_id=u.waits_id, updated_at=u.updated_at FROM unnest({}) "
             "AS u(revision, content_hash, body, waits_type, waits_id, updated_at, record_type, "
             "record_id) WHERE record.record_type=u.record_type AND record.record_id=u.record_id",
             ("int4", "text", "bytea", "text", "text", "float8", "text", "text"), updates),
            (UPSERT_DELIVERY_BULK, _DELIVERY_TYPES, sorted(deliveries, key=lambda d: d[:3])),
            (INSERT_DELIVERY_BULK, _DELIVERY_TYPES, news),
            ("INSERT INTO event (at, target, record_type, record_id, revision, event, detail) SELECT * FROM unnest({})",
             ("float8", "text", "text", "text", "int4", "text", "text"), events),
        ])
        position = {k: i for i, k in enumerate((r.record_type, r.record_id) for r in records)}
        return sorted(out, key=lambda s: position[(s.record_type, s.record_id)])


class _Streaming:
    """The records of one intake, stored part by part in one transaction in pipeline mode.

    Each part's statements are sent at once and not waited for: PostgreSQL writes them (the
    record bodies' compression is most of it) while intake converts the next part, on the
    machine's other core. A part waits only for the locks and sequence numbers it reads, by
    which time the previous part is written. When PostgreSQL aborts the transaction for a
    deadlock or a serialization conflict (two intakes of the same new records), the records
    are stored again by :meth:`PostgresOutbox.put`, which retries; the result is the same.
    """

    def __init__(self, box: PostgresOutbox, targets: list[str], now: float) -> None:
        self.box, self.targets, self.now = box, targets, now
        self.records: list[Incoming] = []
        self.stored: list[Stored] = []
        self._open: ExitStack | None = None
        self._again = False  # aborted: store everything again at the end

    def add(self, records: list[Incoming]) -> None:
        self.records += records
        if self._again or not records:
            return
        try:
            if self._open is None:
                db = self.box._db()
                self._open = ExitStack()
                self._open.enter_context(db.transaction())
                self._open.enter_context(db.pipeline())
                self._db = db
            self.stored += self.box._put_in(self._db, records, self.targets, self.now)
        except self.box.retryable as exc:
            self.close(exc)
            self._again = True

    def close(self, exc: BaseException) -> None:
        """Roll back (an error ends the transaction)."""
        stack, self._open = self._open, None
        if stack is not None:
            try:
                stack.__exit__(type(exc), exc, exc.__traceback__)
            except self.box._pg.Error:
                pass  # the connection reports the same error again; the rollback is what counts

    def finish(self) -> None:
        stack, self._open = self._open, None
        if stack is not None and not self._again:
            try:
                stack.close()  # the pipeline's last results, then COMMIT
            except self.box.retryable:
                self._again = True
        if self._again:
            self.stored = self.box.put(self.records, self.targets, now=self.now)


__all__ = ["MIGRATIONS", "PostgresOutbox", "is_postgres_url"]
