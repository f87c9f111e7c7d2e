"""Running the sync worker: ``ims-fhir worker`` (and the worker thread of ``ims-fhir serve``).

Needs no web framework: the service (``ims_fhir_service``) builds on this module, never the
other way round. SIGTERM stops the worker cleanly; a ``kill -9`` loses nothing (see
:mod:`ims_fhir.sync.worker`).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from ims_fhir.mapping import MappingContext, MappingOptions, map_organization
from ims_fhir.terminology import default_terminology

from . import open_outbox
from .config import SyncConfig
from .worker import SyncWorker


def configure_logging(level: str = "INFO") -> None:
    """One line per event on stderr; the level by name (``DEBUG`` ... ``ERROR``)."""
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def make_worker(config: SyncConfig) -> SyncWorker:
    """A worker over the configured storage and targets, sending as the configured clinic."""
    mapping = MappingContext(config.source, default_terminology(), MappingOptions(cpt=config.convert.cpt))
    return SyncWorker(open_outbox(config.storage_url), list(config.targets), map_organization(mapping), config.worker)


def run_worker(config: SyncConfig, *, once: bool = False) -> int:
    """The worker on its own; ``once`` runs rounds until the queue has nothing due, then returns."""
    worker = make_worker(config)
    if once:
        try:
            worker.recover()
            while worker.run_once():
                pass
        finally:
            worker.close()
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        worker.run(stop)
    except KeyboardInterrupt:
        stop.set()
    return 0


__all__ = ["configure_logging", "make_worker", "run_worker"]
