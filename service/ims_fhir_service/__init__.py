"""The ims-fhir sync service: a Flask app over the outbox in :mod:`ims_fhir.sync`.

``create_app(config)`` builds one app from a :class:`~ims_fhir_service.config.ServiceConfig`
(see :mod:`ims_fhir_service.config`); everything the views need hangs off
``app.extensions["ims_fhir"]`` (:class:`ServiceState`), so two apps in one process
(tests) share nothing. Blueprints: :mod:`ims_fhir_service.api` (records, retry, pull),
:mod:`ims_fhir_service.ops` (health, readiness, metrics, OpenAPI), :mod:`ims_fhir_service.dashboard`.
``ims-fhir serve`` runs the app under waitress with the sync worker beside it
(:mod:`ims_fhir_service.runner`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, g, request

from ims_fhir.client import FhirClient
from ims_fhir.mapping import MappingContext, MappingOptions, map_organization
from ims_fhir.sync import Outbox, Target, open_outbox
from ims_fhir.terminology import default_terminology

from .backpressure import QueueGauge
from .config import ServiceConfig
from .hardening import SessionInterface, SessionRegistry, Throttle, clean, security_headers

access_log = logging.getLogger("ims_fhir_service.access")


@dataclass
class ServiceState:
    """Per-app state: the configuration, the storage, the converter's context."""

    config: ServiceConfig
    outbox: Outbox
    mapping: MappingContext
    organization: dict[str, Any]
    client_factory: Callable[[Target], FhirClient]
    clock: Callable[[], float] = time.time
    started_at: float = field(default_factory=time.time)
    sessions: SessionRegistry = field(default_factory=lambda: SessionRegistry(12 * 3600.0))
    login_throttle: Throttle = field(default_factory=lambda: Throttle(10))
    queue_gauge: QueueGauge = field(default_factory=QueueGauge)


def create_app(config: ServiceConfig, *, outbox: Outbox | None = None,
               client_factory: Callable[[Target], FhirClient] | None = None,
               clock: Callable[[], float] = time.time) -> Flask:
    """The Flask app of the sync service (storage and transport may be injected for tests)."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=config.secret_key or secrets.token_urlsafe(32),
        MAX_CONTENT_LENGTH=config.server.max_body_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.server.secure_cookies,
        SESSION_COOKIE_NAME="ims_fhir_session",
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.session_interface = SessionInterface()
    mapping = MappingContext(config.source, default_terminology(), MappingOptions(cpt=config.convert.cpt))
    state = ServiceState(
        config=config,
        outbox=outbox or open_outbox(config.storage_url),
        mapping=mapping,
        organization=map_organization(mapping),
        client_factory=client_factory or (lambda target: FhirClient(target.client)),
        clock=clock,
        sessions=SessionRegistry(config.server.session_hours * 3600.0, clock=clock),
        login_throttle=Throttle(config.server.login_attempts_per_minute),
    )
    app.extensions["ims_fhir"] = state

    from . import api, conflicts, dashboard, ops, outcomes

    outcomes.register(app)
    app.register_blueprint(ops.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(conflicts.bp)
    app.register_blueprint(dashboard.bp)
    _access_log(app)
    return app


def _access_log(app: Flask) -> None:
    """One line per request: method, path, status, time. Never bodies, query values or tokens.

    Also adds the security headers (:func:`.hardening.security_headers`) to every answer."""

    @app.before_request
    def start_timer() -> None:
        g.started = time.monotonic()

    @app.after_request
    def log_request(response: Any) -> Any:
        took = time.monotonic() - g.get("started", time.monotonic())
        # the path comes from the client: escaped and cut here, so that no handler can be fed a forged line
        method, path = clean(request.method, 16), clean(request.path, 200)
        access_log.info("%s %s %s %.1fms", method, path, response.status_code, took * 1000,
                        extra={"fields": {"method": method, "path": path, "status": response.status_code,
                                          "ms": round(took * 1000, 1)}})
        security_headers(response)
        ops.observe_request(app, request.endpoint or "unmatched", response.status_code, took)
        return response


from . import ops  # noqa: E402  (used by _access_log)

__all__ = ["ServiceState", "create_app"]
