"""Running the service: ``ims-fhir serve`` (waitress + the sync worker).

The app is served by waitress, a production WSGI server (never Flask's development
server). The worker runs in a thread of the same process unless ``[worker] enabled =
false``; then run ``ims-fhir worker`` beside it (several may run: claims are leases).
SIGTERM and SIGINT stop both cleanly; a ``kill -9`` loses nothing (see
:mod:`ims_fhir.sync.worker`). The worker itself is built by :mod:`ims_fhir.sync.runner`.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from ims_fhir.sync.runner import make_worker

from .config import ServiceConfig

log = logging.getLogger("ims_fhir_service")


def _on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def serve(config: ServiceConfig, *, with_worker: bool | None = None) -> int:
    """Serve the app with waitress (and the worker in a thread); returns when stopped."""
    import waitress

    from . import create_app

    app = create_app(config)
    stop = threading.Event()
    thread = None
    if config.worker_enabled if with_worker is None else with_worker:
        worker = make_worker(config)
        thread = threading.Thread(target=worker.run, args=(stop,), name="sync-worker", daemon=True)
        thread.start()
    _on_signals(stop)
    srv = config.server
    log.info("serving on http://%s:%d (targets: %s)", srv.host, srv.port, ", ".join(t.name for t in config.targets))
    try:
        # waitress's own limit sits above the app's, so the app answers 413 as an OperationOutcome
        waitress.serve(app, host=srv.host, port=srv.port, threads=srv.threads, ident="ims-fhir",
                       max_request_body_size=srv.max_body_bytes + 1024 * 1024, clear_untrusted_proxy_headers=True)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=30)
    return 0


__all__ = ["serve"]
