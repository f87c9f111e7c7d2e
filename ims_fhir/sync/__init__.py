"""The sync layer: a durable outbox and ledger, and the worker that empties it.

Modules: :mod:`.store` (terms, states, the :class:`Outbox` interface), :mod:`.sqlite`
(the default SQLite/WAL storage), :mod:`.intake` (request body -> validated, converted
work), :mod:`.worker` (claim, send through :class:`ims_fhir.delivery.Sender`, record).
The Flask service (``ims_fhir_service``) and ``ims-fhir worker`` (:mod:`.runner`, :mod:`.config`) build on it.
"""

from __future__ import annotations

from .intake import Intake, Rejected, parse_body, take
from .sqlite import SQLiteOutbox
from .store import STATES, Claimed, Incoming, Outbox, RecordStatus, Result, Stats, Stored
from .worker import SyncWorker, Target, WorkerOptions


def open_outbox(url: str) -> Outbox:
    """The storage named by a URL: ``sqlite:///PATH`` (PostgreSQL later, behind the same interface)."""
    return SQLiteOutbox.from_url(url)


__all__ = ["STATES", "Claimed", "Incoming", "Intake", "Outbox", "RecordStatus", "Rejected", "Result", "SQLiteOutbox",
           "Stats", "Stored", "SyncWorker", "Target", "WorkerOptions", "open_outbox", "parse_body", "take"]
