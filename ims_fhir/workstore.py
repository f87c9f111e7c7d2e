"""A run's scratch store on disk, so that memory stays flat whatever the input size.

It holds what a streaming conversion must remember about records it has already
passed: which ids it has seen (duplicates), which references it met (``--strict-refs``),
how many diagnoses each assessment has (:mod:`ims_fhir.diagnoses`, first pass), and in
bundle mode the Patient/Practitioner resources it produced (so later Bundles can
include them as conditional creates) and record groups held back until their
dependencies are known. Backed by a temporary SQLite file that is deleted on close.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator


class WorkStore:
    def __init__(self, temp_dir: str | None = None, *, cache_size: int = 4096) -> None:
        fd, self._path = tempfile.mkstemp(prefix="ims-fhir-run-", suffix=".sqlite", dir=temp_dir)
        os.close(fd)
        self.db = sqlite3.connect(self._path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA cache_size=-16000")  # 16 MB page cache at most
        self.db.execute("BEGIN")
        self.db.execute("CREATE TABLE seen (scope TEXT, type TEXT, id TEXT, origin TEXT,"
                        " PRIMARY KEY (scope, type, id)) WITHOUT ROWID")
        self.db.execute("CREATE TABLE ref (scope TEXT, type TEXT, id TEXT, origin TEXT, field TEXT)")
        self.db.execute("CREATE TABLE dep (id TEXT PRIMARY KEY, body BLOB) WITHOUT ROWID")
        self.db.execute("CREATE TABLE deferred (seq INTEGER PRIMARY KEY, body BLOB)")
        self.db.execute("CREATE TABLE dx (scope TEXT, id TEXT, n INTEGER, PRIMARY KEY (scope, id)) WITHOUT ROWID")
        self._dep_cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache_size
        self._pending = 0

    def _tick(self) -> None:
        self._pending += 1
        if self._pending >= 20000:
            self.db.execute("COMMIT")
            self.db.execute("BEGIN")
            self._pending = 0

    # -- duplicates ------------------------------------------------------------------
    def first_seen(self, scope: str, record_type: str, record_id: str, origin: str) -> str | None:
        """Remember an id; return None the first time, else the origin where it was first seen."""
        try:
            self.db.execute("INSERT INTO seen VALUES (?,?,?,?)", (scope, record_type, record_id, origin))
        except sqlite3.IntegrityError:
            row = self.db.execute("SELECT origin FROM seen WHERE scope=? AND type=? AND id=?",
                                  (scope, record_type, record_id)).fetchone()
            return row[0] if row else "?"
        self._tick()
        return None

    def forget(self, scope: str, record_type: str, record_id: str) -> None:
        self.db.execute("DELETE FROM seen WHERE scope=? AND type=? AND id=?", (scope, record_type, record_id))

    def is_seen(self, scope: str, record_type: str, record_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM seen WHERE scope=? AND type=? AND id=?",
                               (scope, record_type, record_id)).fetchone() is not None

    # -- references ------------------------------------------------------------------
    def add_ref(self, scope: str, record_type: str, record_id: str, origin: str, field: str) -> None:
        self.db.execute("INSERT INTO ref VALUES (?,?,?,?,?)", (scope, record_type, record_id, origin, field))
        self._tick()

    def unresolved_refs(self) -> Iterator[tuple[str, str, str, str, str]]:
        """(scope, referenced type, referenced id, origin of the referring record, field)."""
        rows = self.db.execute(
            "SELECT r.scope, r.type, r.id, r.origin, r.field FROM ref r WHERE NOT EXISTS "
            "(SELECT 1 FROM seen s WHERE s.scope=r.scope AND s.type=r.type AND s.id=r.id) ORDER BY r.rowid")
        yield from rows

    # -- diagnosis counts of assessments (ims_fhir.diagnoses) ---------------------------
    def add_diagnoses(self, scope: str, counts: Iterable[tuple[str, int]]) -> None:
        """Remember how many diagnoses assessments have; the first count of an id wins."""
        self.db.executemany("INSERT OR IGNORE INTO dx VALUES (?,?,?)", ((scope, rid, n) for rid, n in counts))

    def add_diagnosis_rows(self, scope: str, assessment_ids: Iterable[str]) -> None:
        """Count one diagnosis per id given (a CSV folder's rows, in any order); then as :meth:`add_diagnoses`."""
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS dx_rows (id TEXT)")
        self.db.executemany("INSERT INTO dx_rows VALUES (?)", ((rid,) for rid in assessment_ids))
        self.db.execute("INSERT OR IGNORE INTO dx SELECT ?, id, COUNT(*) FROM dx_rows GROUP BY id ORDER BY id", (scope,))
        self.db.execute("DELETE FROM dx_rows")

    def has_diagnoses(self) -> bool:
        return self.db.execute("SELECT 1 FROM dx LIMIT 1").fetchone() is not None

    def diagnoses(self, scope: str, assessment_id: str) -> int | None:
        """How many diagnoses the assessment has (None: none, or not in the input)."""
        row = self.db.execute("SELECT n FROM dx WHERE scope=? AND id=?", (scope, assessment_id)).fetchone()
        return int(row[0]) if row else None

    # -- dependency resources (bundle mode) ----------------------------------------------
    def put_dep(self, resource_id: str, body: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO dep VALUES (?,?)", (resource_id, body))
        self._remember(resource_id, body)
        self._tick()

    def get_dep(self, resource_id: str) -> bytes | None:
        body = self._dep_cache.get(resource_id)
        if body is not None:
            self._dep_cache.move_to_end(resource_id)
            return body
        row = self.db.execute("SELECT body FROM dep WHERE id=?", (resource_id,)).fetchone()
        if row is None:
            return None
        stored: bytes = row[0]
        self._remember(resource_id, stored)
        return stored

    def _remember(self, resource_id: str, body: bytes) -> None:
        self._dep_cache[resource_id] = body
        self._dep_cache.move_to_end(resource_id)
        if len(self._dep_cache) > self._cache_size:
            self._dep_cache.popitem(last=False)

    # -- deferred record groups (bundle mode) ------------------------------------------
    def defer(self, body: bytes) -> None:
        self.db.execute("INSERT INTO deferred (body) VALUES (?)", (body,))
        self._tick()

    def deferred(self) -> Iterator[bytes]:
        last = 0
        while True:
            rows = self.db.execute("SELECT seq, body FROM deferred WHERE seq > ? ORDER BY seq LIMIT 500", (last,)).fetchall()
            if not rows:
                return
            for seq, body in rows:
                last = seq
                yield body

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            try:
                os.unlink(self._path)
            except OSError:
                pass

    def __enter__(self) -> WorkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
