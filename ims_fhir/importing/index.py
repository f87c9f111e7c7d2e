"""The resource set of one reverse run, indexed in SQLite (see :mod:`ims_fhir.mapping.reverse.resources`).

It lives on a connection the caller passes in: ``":memory:"`` by default, a temporary
file for inputs too big for memory (the importer's choice; this module opens no file).
Bodies are stored as JSON and parsed back on use, with a small cache.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from ..mapping.reverse.resources import (
    COVERED,
    MAPPED,
    PENDING,
    REJECTED,
    Entry,
    aliases,
    dumps,
    loads,
    reference_keys,
)


class ResourceIndex:
    """The resource set, indexed; see the module docstring."""

    def __init__(self, db: sqlite3.Connection | None = None, *, cache_size: int = 2048) -> None:
        self.db = db if db is not None else sqlite3.connect(":memory:")
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.executescript(
            """
            CREATE TABLE res (seq INTEGER PRIMARY KEY, rtype TEXT, full_url TEXT, origin TEXT, role TEXT,
                              part_of INTEGER, state INTEGER DEFAULT 0, body BLOB);
            CREATE INDEX res_role ON res (role, state, seq);
            CREATE TABLE alias (key TEXT, seq INTEGER);
            CREATE INDEX alias_key ON alias (key);
            CREATE TABLE pending_link (source INTEGER, kind TEXT, pos INTEGER, ref TEXT, full_url TEXT);
            CREATE TABLE link (kind TEXT, target INTEGER, source INTEGER, pos INTEGER);
            CREATE INDEX link_target ON link (kind, target);
            CREATE TABLE outcome (seq INTEGER PRIMARY KEY, body BLOB);
            CREATE TABLE record (rtype TEXT, scope TEXT, id TEXT, digest BLOB, origin TEXT,
                                 PRIMARY KEY (rtype, scope, id)) WITHOUT ROWID;
            CREATE TABLE grp (key TEXT, seq INTEGER);
            """
        )
        self.db.execute("BEGIN")
        self._cache: OrderedDict[int, Entry] = OrderedDict()
        self._cache_size = cache_size
        self.duplicates = 0
        self._pending = 0

    # -- loading ---------------------------------------------------------------------------
    def find_alias(self, keys: Iterable[str]) -> int | None:
        for key in keys:
            row = self.db.execute("SELECT seq FROM alias WHERE key=? ORDER BY seq LIMIT 1", (key,)).fetchone()
            if row is not None:
                return int(row[0])
        return None

    def body_of(self, seq: int) -> bytes:
        return bytes(self.db.execute("SELECT body FROM res WHERE seq=?", (seq,)).fetchone()[0])

    def add(self, resource: dict[str, Any], origin: str, full_url: str | None, role: str,
            links: list[tuple[str, int, str]], *, part_of: bool, state: int = PENDING) -> int:
        """Store a resource; returns its sequence number."""
        cur = self.db.execute(
            "INSERT INTO res (rtype, full_url, origin, role, part_of, state, body) VALUES (?,?,?,?,?,?,?)",
            (resource["resourceType"], full_url, origin, role, int(part_of), state, dumps(resource)))
        seq = int(cur.lastrowid or 0)
        if state != REJECTED:
            self.db.executemany("INSERT INTO alias VALUES (?,?)", [(k, seq) for k in aliases(resource, full_url)])
            self.db.executemany("INSERT INTO pending_link VALUES (?,?,?,?,?)",
                                [(seq, kind, pos, ref, full_url) for kind, pos, ref in links])
        self._tick()
        return seq

    def add_outcome(self, body: bytes) -> None:
        """An outcome decided while loading (an invalid resource): yielded first by the run, in order."""
        self.db.execute("INSERT INTO outcome (body) VALUES (?)", (body,))

    def early_outcomes(self) -> Iterator[bytes]:
        for (body,) in self.db.execute("SELECT body FROM outcome ORDER BY seq").fetchall():
            yield bytes(body)

    def _tick(self) -> None:
        self._pending += 1
        if self._pending >= 20000:
            self.db.execute("COMMIT")
            self.db.execute("BEGIN")
            self._pending = 0

    def finalise(self) -> None:
        """Resolve the stored links now that every resource is in."""
        rows = self.db.execute("SELECT source, kind, pos, ref, full_url FROM pending_link ORDER BY rowid")
        resolved = []
        for source, kind, pos, ref, full_url in rows.fetchall():
            target = self.find_alias(reference_keys(ref, full_url))
            if target is not None:
                resolved.append((kind, target, source, pos))
        self.db.executemany("INSERT INTO link VALUES (?,?,?,?)", resolved)
        self.db.execute("DELETE FROM pending_link")

    # -- reading ---------------------------------------------------------------------------
    def get(self, seq: int) -> Entry:
        entry = self._cache.get(seq)
        if entry is not None:
            self._cache.move_to_end(seq)
            return entry
        rtype, full_url, origin, role, body = self.db.execute(
            "SELECT rtype, full_url, origin, role, body FROM res WHERE seq=?", (seq,)).fetchone()
        entry = Entry(seq, rtype, loads(body), origin, full_url, role)
        self._cache[seq] = entry
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def lookup(self, keys: Iterable[str]) -> Entry | None:
        seq = self.find_alias(keys)
        return None if seq is None else self.get(seq)

    def entries(self, role: str, state: int = PENDING) -> Iterator[Entry]:
        """Resources of a role in a state, in input order (paged: states may change meanwhile)."""
        last = 0
        while True:
            rows = self.db.execute("SELECT seq FROM res WHERE role=? AND state=? AND seq>? ORDER BY seq LIMIT 500",
                                   (role, state, last)).fetchall()
            if not rows:
                return
            for (seq,) in rows:
                last = seq
                yield self.get(seq)

    def pending(self) -> Iterator[Entry]:
        last = 0
        while True:
            rows = self.db.execute("SELECT seq FROM res WHERE state=? AND seq>? ORDER BY seq LIMIT 500",
                                   (PENDING, last)).fetchall()
            if not rows:
                return
            for (seq,) in rows:
                last = seq
                yield self.get(seq)

    def linked_from(self, kind: str, target: int) -> list[Entry]:
        """Resources whose ``kind`` reference (partOf, hasMember) points at ``target``, in input order."""
        rows = self.db.execute("SELECT DISTINCT source FROM link WHERE kind=? AND target=? ORDER BY source",
                               (kind, target)).fetchall()
        return [self.get(seq) for (seq,) in rows]

    def has_part_of(self, seq: int) -> bool:
        row = self.db.execute("SELECT part_of FROM res WHERE seq=?", (seq,)).fetchone()
        return bool(row and row[0])

    def state(self, seq: int) -> int:
        return int(self.db.execute("SELECT state FROM res WHERE seq=?", (seq,)).fetchone()[0])

    def mark(self, seqs: Iterable[int], state: int) -> None:
        """Move resources to ``state``; a state only moves forward (pending -> covered -> mapped),
        and a rejected resource stays rejected."""
        for seq in seqs:
            if state == MAPPED:
                self.db.execute("UPDATE res SET state=? WHERE seq=? AND state IN (?,?)", (MAPPED, seq, PENDING, COVERED))
            elif state == COVERED:
                self.db.execute("UPDATE res SET state=? WHERE seq=? AND state=?", (COVERED, seq, PENDING))
            else:
                self.db.execute("UPDATE res SET state=? WHERE seq=? AND state=?", (REJECTED, seq, PENDING))

    def counts(self) -> dict[str, int]:
        out = {"mapped": 0, "rejected": 0, "pending": 0}
        names = {PENDING: "pending", MAPPED: "mapped", COVERED: "rejected", REJECTED: "rejected"}
        for state, n in self.db.execute("SELECT state, count(*) FROM res GROUP BY state"):
            out[names[state]] += n
        return out

    # -- grouping of standalone findings ---------------------------------------------------
    def group(self, key: str, seq: int) -> None:
        self.db.execute("INSERT INTO grp VALUES (?,?)", (key, seq))

    def groups(self) -> Iterator[list[int]]:
        rows = self.db.execute("SELECT key, min(seq) AS first FROM grp GROUP BY key ORDER BY first").fetchall()
        for key, _ in rows:
            yield [s for (s,) in self.db.execute("SELECT seq FROM grp WHERE key=? ORDER BY seq", (key,)).fetchall()]

    # -- records already produced (duplicates across inputs) ------------------------------
    def record_seen(self, record_type: str, scope: str, record_id: str, digest: bytes, origin: str) -> tuple[bool, str] | None:
        """None the first time; else (same content?, origin of the first)."""
        row = self.db.execute("SELECT digest, origin FROM record WHERE rtype=? AND scope=? AND id=?",
                              (record_type, scope, record_id)).fetchone()
        if row is None:
            self.db.execute("INSERT INTO record VALUES (?,?,?,?,?)", (record_type, scope, record_id, digest, origin))
            return None
        return bytes(row[0]) == digest, str(row[1])

    def close(self) -> None:
        self.db.close()
