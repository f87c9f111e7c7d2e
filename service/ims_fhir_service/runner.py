"""Running the service: ``ims-fhir serve`` (waitress + the sync worker).

The app is served by waitress, a production WSGI server (never Flask's development
server). The worker runs in a thread of the same process unless ``[worker] enabled =
false``; then run ``ims-fhir worker`` beside it (several may run: claims are leases).
SIGTERM and SIGINT stop both cleanly; a ``kill -9`` loses nothing (see
:mod:`ims_fhir.sync.worker`). The worker itself is built by :mod:`ims_fhir.sync.runner`.
waitress's limits come from ``[server]`` (:func:`waitress_options`; docs/deployment.md).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from ims_fhir.sync.runner import make_worker

from .config import ServiceConfig
from .outcomes import _error_task_class

log = logging.getLogger("ims_fhir_service")


def _on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def waitress_options(config: ServiceConfig) -> dict[str, Any]:
    """waitress's settings from ``[server]``: limits that keep slow or idle clients from taking every connection.

    A half-sent request occupies a connection, not a thread; ``connection_limit`` bounds them
    and ``channel_timeout`` closes those idle that long (checked every ``cleanup_interval``).
    In production put a reverse proxy in front (docs/deployment.md): it buffers whole
    requests, so slow clients never reach waitress.
    """
    srv = config.server
    options: dict[str, Any] = dict(
        host=srv.host, port=srv.port, threads=srv.threads, ident="ims-fhir",
        # waitress's own limit sits above the app's, so the app answers 413 as an OperationOutcome
        max_request_body_size=srv.max_body_bytes + 1024 * 1024,
        max_request_header_size=srv.max_request_header_size,
        channel_timeout=srv.channel_timeout, connection_limit=srv.connection_limit,
        cleanup_interval=srv.cleanup_interval, backlog=srv.backlog,
        asyncore_use_poll=True,  # select() fails past 1024 descriptors; poll() does not
        clear_untrusted_proxy_headers=True)
    if srv.trusted_proxy:
        options.update(trusted_proxy=srv.trusted_proxy, trusted_proxy_count=1,
                       trusted_proxy_headers={"x-forwarded-proto", "x-forwarded-for"})
    return options


def serve(config: ServiceConfig, *, with_worker: bool | None = None) -> int:
    """Serve the app with waitress (and the worker in a thread); returns when stopped."""
    from waitress.server import create_server

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
    server: Any = create_server(app, **waitress_options(config))
    # waitress's own error answers (a chunked body over the limit, a malformed request) as OperationOutcomes
    server.channel_class = type("OutcomeChannel", (server.channel_class,), {"error_task_class": _error_task_class()})
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=30)
    return 0


__all__ = ["serve", "waitress_options"]
