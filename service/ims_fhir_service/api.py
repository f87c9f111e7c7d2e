"""The JSON API: post records, read their sync state, replay, pull.

``POST /records`` takes any ims-record/1 JSON/NDJSON body. Valid records are converted
and stored in the outbox in one transaction (202, each with the URL of its status);
invalid ones are stored nowhere and answered 422 with every reason, while the valid
records of the same batch still go in (the 422 OperationOutcome lists them as
``information`` issues). Re-posting an unchanged record changes nothing; a changed one is
queued again and re-sent as an update. Backpressure: while a target has more than
``[server] max_queue_depth`` deliveries queued or sending, ``POST /records`` answers 429 with
``Retry-After`` and an OperationOutcome, and stores nothing (the client sends the batch again
later). The body must say what it is: ``Content-Type:
application/json`` or ``application/x-ndjson`` (``application/ndjson``); anything else is 415.

``POST /pull`` takes its parameters as a JSON object (``Content-Type: application/json``)
or in the query; ``since`` must be a FHIR date or date-time with an offset (checked here,
422, before anything is sent to the target).
"""

from __future__ import annotations

import logging
import re
import tempfile
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, jsonify, request, url_for

from ims_fhir.convert import resolve_source
from ims_fhir.importer import output_paths
from ims_fhir.records import vocabulary as v
from ims_fhir.records.models import ID_PATTERN
from ims_fhir.sync import parse_body, stored_diagnoses, take

from . import ServiceState
from .auth import require
from .hardening import clean
from .outcomes import error_response, issue, outcome_response

bp = Blueprint("api", __name__)
log = logging.getLogger("ims_fhir_service.api")


def state() -> ServiceState:
    return current_app.extensions["ims_fhir"]  # type: ignore[no-any-return]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _location(record_type: str, record_id: str) -> str:
    return url_for("api.get_record", record_type=record_type, record_id=record_id)


RECORD_TYPES = ("application/json", "application/x-ndjson", "application/ndjson")
_SINCE = re.compile(r"\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2}))?)?)?")


def _content_type(allowed: tuple[str, ...]) -> Response | None:
    """415 unless the request declares one of ``allowed`` (parameters such as charset are fine)."""
    if request.mimetype in allowed:
        return None
    said = f"Content-Type {clean(request.mimetype, 80)!r}" if request.mimetype else "no Content-Type"
    return error_response(415, f"the request has {said}; send one of: {', '.join(allowed)}")


def check_since(value: Any) -> str | None:
    """Why ``value`` is not a usable ``since`` (a FHIR date or date-time with an offset), or None."""
    if not isinstance(value, str) or not _SINCE.fullmatch(value):
        return ("since must be a FHIR date or date-time with an offset, e.g. 2026-01-31 or "
                "2026-01-31T08:00:00-08:00")
    try:
        parsed = (datetime.fromisoformat(value.replace("Z", "+00:00")) if "T" in value
                  else datetime.fromisoformat((value + "-01-01")[:10]))
    except ValueError:
        return f"since {value!r} is not a calendar date or time"
    if parsed.year < 1900:
        return f"since {value!r} is before 1900"
    return None


@bp.post("/records")
@require("read-write")
def post_records() -> Response:
    st = state()
    if (bad := _content_type(RECORD_TYPES)) is not None:
        return bad
    if (busy := _backpressure(st)) is not None:
        return busy
    body = request.get_data(cache=False)  # past MAX_CONTENT_LENGTH: 413
    convert = st.config.convert
    raw_records, declared = parse_body(body, lenient=convert.lenient)
    if declared:
        resolve_source(declared, st.config.source.model_dump(exclude_none=True), "the posted document")
    # stored as converted, in one transaction (PostgreSQL writes a part while the next converts)
    with st.outbox.storing([t.name for t in st.config.targets], now=st.clock()) as batch:
        intake = take(raw_records, st.mapping, lenient=convert.lenient,
                      context={"default_tz": convert.default_tz} if convert.default_tz else None,
                      earlier_diagnoses=stored_diagnoses(st.outbox.record_group), sink=batch.add)
    stored = batch.stored
    accepted = [{"record_type": s.record_type, "id": s.record_id, "origin": intake.origins[(s.record_type, s.record_id)],
                 "result": s.result, "revision": s.revision, "status": _location(s.record_type, s.record_id)}
                for s in stored]
    queued = sum(1 for s in stored if s.result == "queued")
    for target in st.config.targets:
        st.queue_gauge.added(target.name, queued)
    log.info("records posted: %d accepted (%d queued, %d unchanged), %d rejected", len(stored), queued,
             len(stored) - queued, len(intake.rejected))
    if intake.rejected:
        issues = []
        for rej in intake.rejected:
            who = f"{rej.record_type or 'record'} {rej.record_id!r}" if rej.record_id else (rej.record_type or "record")
            for p in rej.problems:
                issues.append(issue("error", "required" if p.rule == "required" else "invalid",
                                    f"{who} at {rej.origin}: {p.path}: {p.message}", expression=[p.path],
                                    location=[rej.origin], rule=p.rule))
        for a in accepted:
            issues.append(issue("information", "informational",
                                f"{a['record_type']} {a['id']!r} at {a['origin']}: accepted ({a['result']}); "
                                f"status at {a['status']}", location=[str(a["origin"])]))
        return outcome_response(422, issues)
    response = jsonify({"accepted": len(stored), "queued": queued, "unchanged": len(stored) - queued,
                        "rejected": 0, "records": accepted})
    response.status_code = 202
    if len(accepted) == 1:
        response.headers["Location"] = str(accepted[0]["status"])
    return response


def _backpressure(st: ServiceState) -> Response | None:
    """429 while a target's queue is deeper than configured (nothing of the request is read or stored)."""
    limit = st.config.server.max_queue_depth
    if limit <= 0:
        return None
    for target in st.config.targets:
        name = target.name
        depth = st.queue_gauge.over(name, limit, partial(st.outbox.pending, name))
        if depth is not None:
            log.warning("records refused for now: more than %d deliveries to %s pending", limit, name)
            wait = str(st.config.server.queue_retry_after)
            return outcome_response(429, [issue("error", "throttled", (
                f"the queue to target {name!r} holds more than {limit} deliveries, its limit: "
                f"nothing of this request was stored; send it again after {wait} seconds"))],
                headers={"Retry-After": wait})
    return None


def _known_type(record_type: str) -> Response | None:
    if record_type not in v.RECORD_TYPES:
        return error_response(404, f"{record_type!r} is not a record type (expected one of: {', '.join(v.RECORD_TYPES)})")
    return None


@bp.get("/records/<record_type>/<record_id>")
@require("read", session_ok=True)
def get_record(record_type: str, record_id: str) -> Response:
    if (bad := _known_type(record_type)) is not None:
        return bad
    st = state()
    status = st.outbox.status(record_type, record_id)
    if status is None:
        return error_response(404, f"no {record_type} {record_id!r} has been posted")
    targets = []
    for d in status.deliveries:
        item = d.as_dict()
        for key in ("queued_at", "updated_at", "synced_at", "next_attempt_at"):
            if key in item:
                item[key] = iso(item[key])
        targets.append(item)
    history = [{"at": iso(e.at), "target": e.target, "revision": e.revision, "event": e.event, "detail": e.detail}
               for e in st.outbox.history(record_type, record_id, limit=50)]
    return jsonify({"record_type": record_type, "id": record_id, "revision": status.revision,
                    "received_at": iso(status.received_at), "updated_at": iso(status.updated_at),
                    "targets": targets, "history": history})


def _target_param() -> tuple[str | None, Response | None]:
    """The optional ``?target=`` of a retry: a configured target's name, or an error answer."""
    target = request.args.get("target")
    if target is not None and state().config.target(target) is None:
        return None, error_response(422, f"{target!r} is not a configured target")
    return target, None


@bp.post("/records/<record_type>/<record_id>/retry")
@require("read-write")
def retry_record(record_type: str, record_id: str) -> Response:
    if (bad := _known_type(record_type)) is not None:
        return bad
    st = state()
    target, bad = _target_param()
    if bad is not None:
        return bad
    if st.outbox.status(record_type, record_id) is None:
        return error_response(404, f"no {record_type} {record_id!r} has been posted")
    n = st.outbox.retry(record_type, record_id, now=st.clock(), target=target)
    log.info("retry of %s %s requested: %d deliveries queued", record_type, clean(record_id, 80), n)
    response = jsonify({"requeued": n, "status": _location(record_type, record_id)})
    response.status_code = 202
    return response


@bp.post("/retry")
@require("read-write")
def retry_all() -> Response:
    st = state()
    wanted = request.args.get("state")
    if wanted not in ("dead", "failed"):
        return error_response(422, "give ?state=dead or ?state=failed (the deliveries to queue again)")
    target, bad = _target_param()
    if bad is not None:
        return bad
    n = st.outbox.retry_state(wanted, now=st.clock(), target=target)
    log.info("retry of every %s delivery requested: %d queued", wanted, n)
    response = jsonify({"requeued": n})
    response.status_code = 202
    return response


@bp.post("/pull")
@require("read-write")
def pull() -> Response:
    """Import from a configured target back into IMS records (``ims_fhir.pull``); synchronous."""
    from ims_fhir.pull import PullOptions
    from ims_fhir.pull import pull as run_pull

    st = state()
    params: Any = {}
    if request.content_length or request.headers.get("Transfer-Encoding") or request.mimetype:
        if (bad := _content_type(("application/json",))) is not None:
            return bad
        params = request.get_json(silent=True)
        if params is None and request.get_data(cache=True).strip():
            return error_response(400, "the body is not JSON")
        params = params or {}
    if not isinstance(params, dict):
        return error_response(422, "the body must be a JSON object {\"target\", \"patient\", \"since\"}")
    params = {**request.args.to_dict(), **params}
    unknown = sorted(set(params) - {"target", "patient", "since"})
    if unknown:
        shown = ", ".join(clean(u, 40) for u in unknown[:10])
        return error_response(422, f"unknown parameter(s) {shown} (expected target, patient, since)")
    for key in ("target", "patient"):
        if params.get(key) is not None and not isinstance(params[key], str):
            return error_response(422, f"{key} must be a string")
    if params.get("patient") and not ID_PATTERN.fullmatch(params["patient"]):
        return error_response(422, "patient must be a record id (printable ASCII without spaces or / ? # %; at most 64)")
    if params.get("since") not in (None, "") and (why := check_since(params["since"])):
        return error_response(422, why)
    target = st.config.target(str(params.get("target") or ""))
    if target is None:
        configured = ", ".join(t.name for t in st.config.targets)
        return error_response(422, f"target must name a configured target ({configured}); URLs are never taken "
                                   "from a request")
    with tempfile.TemporaryDirectory(prefix="ims-fhir-pull-") as tmp:
        out = Path(tmp) / "pulled.ndjson"
        summary = run_pull(target.client, PullOptions(out_file=out, patient=params.get("patient") or None,
                                                      since=params.get("since") or None, output_format="ndjson"))
        paths = output_paths(out)
        records = _ndjson(paths["records"])
        rejects = _ndjson(paths["rejects"])
    log.info("pull from %s: %d records, %d rejected", target.name, len(records), len(rejects))
    info = summary.as_dict()
    for key in ("inputs", "files"):
        info.pop(key, None)
    return jsonify({"target": target.name, "summary": info, "records": records, "rejects": rejects})


def _ndjson(path: Path) -> list[Any]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
