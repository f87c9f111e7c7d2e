"""The small local state of ``ims-fhir push``: identity map, conflicts and audit trail per target.

Terms:

- *state file*: one SQLite file holding the tables of :data:`~ims_fhir.sync.sqlite.TARGET_STATE_SCHEMA`
  (brought up to date by :func:`~ims_fhir.sync.sqlite.adopt_target_state`)
  (the same tables the sync service keeps beside its outbox). Default location
  :func:`default_state_path`: ``$XDG_STATE_HOME/ims-fhir/push-state.sqlite``, or
  ``~/.local/state/ims-fhir/push-state.sqlite`` when ``XDG_STATE_HOME`` is unset; ``--state PATH``
  chooses another.
- *target key*: the server's base URL, normalised (one file serves several servers).

Safe to delete: identities are rebuilt by searching the server (a Patient that carries the
clinic's identifier was created by the adapter and is the clinic's; one found only by another
identifier, such as a health number, is the hospital's). What a deleted file loses: open
conflicts, the audit trail, and the version last written (after a rebuild the adapter takes the
server's current version as the base of its next ``If-Match``, so a hospital edit made between
the loss and the next push is not detected as a conflict).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigurationError
from .sqlite import SQLiteTargetState, adopt_target_state

STATE_FILE = "push-state.sqlite"


def default_state_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/ims-fhir/push-state.sqlite`` (XDG Base Directory), else under ``~/.local/state``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or ""
    root = Path(base) if base and Path(base).is_absolute() else Path(env.get("HOME") or Path.home()) / ".local" / "state"
    return root / "ims-fhir" / STATE_FILE


class PushState(SQLiteTargetState):
    """The state file (see the module docstring); one connection, used from one thread at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            adopt_target_state(self._db)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigurationError(f"push state {self.path}: cannot open ({exc}); it is safe to delete, "
                                     "or choose another with --state PATH") from exc

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> PushState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["STATE_FILE", "PushState", "default_state_path"]
