"""The sync layer: a durable outbox and ledger, and the worker that empties it.

Modules: :mod:`.store` (terms, states, the :class:`Outbox` interface), :mod:`.sql` (the
SQL both storages share), :mod:`.sqlite` (the default SQLite/WAL storage),
:mod:`.postgres` (PostgreSQL, for several workers on several hosts), :mod:`.intake`
(request body -> validated, converted work), :mod:`.worker` (claim, send through
:class:`ims_fhir.delivery.Sender`, record). The Flask service (``ims_fhir_service``) and
``ims-fhir worker`` (:mod:`.runner`, :mod:`.config`) build on it.
"""

from __future__ import annotations

from .intake import Intake, Rejected, parse_body, stored_diagnoses, take
from .postgres import is_postgres_url
from .sqlite import SQLiteOutbox, path_from_url
from .store import STATES, Claimed, Incoming, Outbox, RecordStatus, Result, Stats, Stored
from .worker import SyncWorker, Target, WorkerOptions


def check_storage_url(url: str) -> None:
    """Raise ConfigurationError unless ``url`` names a storage this version knows (no connection made)."""
    if not is_postgres_url(url):
        path_from_url(url)


def open_outbox(url: str) -> Outbox:
    """The storage named by a URL: ``sqlite:///PATH`` or ``postgresql://...`` (extra ``[postgres]``)."""
    if is_postgres_url(url):
        from .postgres import PostgresOutbox

        return PostgresOutbox.from_url(url)
    return SQLiteOutbox.from_url(url)


__all__ = ["STATES", "Claimed", "Incoming", "Intake", "Outbox", "RecordStatus", "Rejected", "Result", "SQLiteOutbox",
           "Stats", "Stored", "SyncWorker", "Target", "WorkerOptions", "check_storage_url", "open_outbox", "parse_body",
           "stored_diagnoses", "take"]
