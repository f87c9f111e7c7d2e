"""Operations endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document.

``/health`` and ``/ready`` are the only endpoints that need no token (load balancers and orchestrators call them) and
say nothing about records. ``/ready`` checks the storage (a query, and SQLite's ``PRAGMA
quick_check`` at most once a minute) and every target; without a token it answers only the
verdicts (``{"storage": "ok", "targets": "ok"}``), with a read token it names the targets. ``/metrics`` reads the
outbox, so its figures are the same whichever process (serve or a separate ``ims-fhir worker``) did the sending:

- ``ims_fhir_outbox_deliveries{target,state}``: the queue depth per state
- ``ims_fhir_records_sent_total{target}``, ``ims_fhir_records_failed_total{target}``,
  ``ims_fhir_records_dead_total{target}``, ``ims_fhir_transient_failures_total{target}``
- ``ims_fhir_transaction_seconds{target}``: histogram of one Bundle's send (with retries)
- ``ims_fhir_http_requests_total`` and ``ims_fhir_http_request_seconds``: this process's API
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from werkzeug.exceptions import HTTPException

from ims_fhir.client import RetryPolicy, Timeout
from ims_fhir.errors import FhirError, ImsFhirError
from ims_fhir.sync.store import LATENCY_BUCKETS, STATES

from .auth import bearer_principal, require, session_principal
from .openapi import document

bp = Blueprint("ops", __name__)

_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class HttpMetrics:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * len(_HTTP_BUCKETS))
    count: int = 0
    total: float = 0.0


def observe_request(app: Flask, endpoint: str, status: int, seconds: float) -> None:
    metrics: HttpMetrics = app.extensions.setdefault("ims_fhir_http", HttpMetrics())
    with metrics.lock:
        key = (endpoint, str(status))
        metrics.requests[key] = metrics.requests.get(key, 0) + 1
        for i, bound in enumerate(_HTTP_BUCKETS):
            if seconds <= bound:
                metrics.buckets[i] += 1
        metrics.count += 1
        metrics.total += seconds


@bp.get("/health")
def health() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    """Ready when the storage answers and every target's CapabilityStatement can be read."""
    st = current_app.extensions["ims_fhir"]
    checks: dict[str, Any] = {}
    ok = True
    try:
        st.outbox.ping()
        damage = _integrity(st)
        checks["storage"] = "ok" if damage is None else "damaged (PRAGMA quick_check failed; see the service log)"
        ok = damage is None
    except Exception as exc:  # any storage failure means not ready
        checks["storage"] = f"unreachable ({type(exc).__name__})"
        ok = False
    targets = {}
    for target in st.config.targets:
        probe = replace(target, client=replace(target.client, retry=RetryPolicy.no_retries(),
                                               timeout=Timeout(connect=3.0, read=5.0)))
        try:
            client = st.client_factory(probe)
            try:
                client.capabilities()
            finally:
                client.close()
            targets[target.name] = "ok"
        except (FhirError, ImsFhirError) as exc:
            targets[target.name] = f"unreachable ({type(exc).__name__})"
            ok = False
    try:
        trusted = (bearer_principal() or session_principal()) is not None
    except HTTPException:
        trusted = False
    # target names (and so which hospitals this clinic sends to) only for a token holder
    checks["targets"] = targets if trusted else (
        "ok" if all(v == "ok" for v in targets.values()) else
        f"{sum(v != 'ok' for v in targets.values())} of {len(targets)} unreachable")
    response = jsonify({"status": "ready" if ok else "not ready", "checks": checks})
    response.status_code = 200 if ok else 503
    return response


_INTEGRITY_EVERY = 60.0


def _integrity(st: Any) -> str | None:
    """The storage's quick check (if it has one), at most once per minute per app; the last verdict between."""
    check = getattr(st.outbox, "check_integrity", None)
    if check is None:
        return None
    cache: dict[str, Any] = current_app.extensions.setdefault("ims_fhir_integrity", {"at": -1e18, "result": None})
    now = time.monotonic()
    if now - cache["at"] >= _INTEGRITY_EVERY or cache["result"] is not None:
        cache["result"], cache["at"] = check(), now
        if cache["result"] is not None:
            current_app.logger.error("storage damaged: PRAGMA quick_check: %s", cache["result"])
    return cache["result"]  # type: ignore[no-any-return]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@bp.get("/metrics")
@require("read")
def metrics() -> Response:
    st = current_app.extensions["ims_fhir"]
    stats = st.outbox.stats()
    lines = ["# HELP ims_fhir_outbox_deliveries Deliveries (record x target) per state.",
             "# TYPE ims_fhir_outbox_deliveries gauge"]
    for target in st.config.targets:
        for s in STATES:
            lines.append(f'ims_fhir_outbox_deliveries{{target="{_label(target.name)}",state="{s}"}} '
                         f'{stats.depth.get((target.name, s), 0)}')
    for name, help_text in (("sent", "Records the server accepted."), ("failed", "Records the server refused."),
                            ("dead", "Records given up after the retry limit."),
                            ("transient_failures", "Sends that will be tried again.")):
        metric = f"ims_fhir_records_{name}_total" if name != "transient_failures" else "ims_fhir_transient_failures_total"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
        for target in st.config.targets:
            lines.append(f'{metric}{{target="{_label(target.name)}"}} {stats.counters.get((name, target.name), 0):g}')
    lines += ["# HELP ims_fhir_transaction_seconds Time to send one transaction Bundle, retries included.",
              "# TYPE ims_fhir_transaction_seconds histogram"]
    for target in st.config.targets:
        buckets, count, total = stats.latency.get(target.name, ([0] * len(LATENCY_BUCKETS), 0, 0.0))
        label = f'target="{_label(target.name)}"'
        for bound, n in zip(LATENCY_BUCKETS, buckets, strict=False):
            lines.append(f'ims_fhir_transaction_seconds_bucket{{{label},le="{bound:g}"}} {n}')
        lines.append(f'ims_fhir_transaction_seconds_bucket{{{label},le="+Inf"}} {count}')
        lines.append(f"ims_fhir_transaction_seconds_sum{{{label}}} {total:.6f}")
        lines.append(f"ims_fhir_transaction_seconds_count{{{label}}} {count}")
    http: HttpMetrics = current_app.extensions.setdefault("ims_fhir_http", HttpMetrics())
    with http.lock:
        lines += ["# HELP ims_fhir_http_requests_total API requests answered by this process.",
                  "# TYPE ims_fhir_http_requests_total counter"]
        for (endpoint, status), n in sorted(http.requests.items()):
            lines.append(f'ims_fhir_http_requests_total{{endpoint="{_label(endpoint)}",status="{status}"}} {n}')
        lines += ["# HELP ims_fhir_http_request_seconds API request duration in this process.",
                  "# TYPE ims_fhir_http_request_seconds histogram"]
        for bound, n in zip(_HTTP_BUCKETS, http.buckets, strict=False):
            lines.append(f'ims_fhir_http_request_seconds_bucket{{le="{bound:g}"}} {n}')
        lines.append(f'ims_fhir_http_request_seconds_bucket{{le="+Inf"}} {http.count}')
        lines.append(f"ims_fhir_http_request_seconds_sum {http.total:.6f}")
        lines.append(f"ims_fhir_http_request_seconds_count {http.count}")
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")


@bp.get("/openapi.json")
@require("read", session_ok=True)
def openapi() -> Response:
    return jsonify(document())
