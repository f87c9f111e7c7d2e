"""Conflicts and the audit trail of the sync service (issue 9): JSON API, shared with the dashboard.

- ``GET /conflicts[?state=open|resolved|all][&target=]``: the conflicts the worker recorded (a
  resource of the clinic edited on the server since the adapter wrote it: not overwritten), each
  with both versions and the field-level diff.
- ``GET /conflicts/<id>``; ``POST /conflicts/<id>/resolve`` with ``{"resolution": "resend" |
  "accept" | "dismiss"}``: ``resend`` writes the clinic's version over the server's (explicit
  override); ``accept`` imports the server's version back as the record's new revision (stored
  in the outbox like a posted record, then sent with ``If-Match`` on the server's version);
  ``dismiss`` keeps the server's version and does not send the clinic's edit.
- ``GET /audit[?target=][&record_type=&record_id=][&limit=]``: every write per target (what,
  when, the version that resulted, the outcome), newest first.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, jsonify, request

from ims_fhir.errors import FhirError, UsageError
from ims_fhir.importing import reverse_resources
from ims_fhir.sync import parse_body, stored_diagnoses
from ims_fhir.sync import take as take_records
from ims_fhir.sync.reconcile import RESOLUTION_HELP, resolve_conflict
from ims_fhir.sync.store import Conflict, TargetState

from . import ServiceState
from .auth import require
from .outcomes import error_response

bp = Blueprint("conflicts", __name__)
log = logging.getLogger("service.conflicts")


def _state() -> ServiceState:
    return current_app.extensions["ims_fhir"]  # type: ignore[no-any-return]


def target_state(st: ServiceState) -> TargetState:
    """The per-target state (identity map, conflicts, audit trail): every outbox storage keeps it."""
    return st.outbox


def _iso(ts: float | None) -> str | None:
    from .api import iso

    return iso(ts)


def conflict_json(c: Conflict) -> dict[str, Any]:
    item = c.as_dict()
    item["detected_at"], item["resolved_at"] = _iso(c.detected_at), _iso(c.resolved_at)
    return item


class ResolutionError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def resolve(st: ServiceState, conflict_id: int, resolution: str) -> dict[str, Any]:
    """Carry out a resolution (see the module docstring); raises :class:`ResolutionError`.

    ``accept`` is one step: the conflict is resolved only once the server's version is stored as
    the record's new revision; when that fails the conflict stays open with the reason."""
    ts = target_state(st)
    if resolution not in RESOLUTION_HELP:
        raise ResolutionError(422, f"resolution must be one of {', '.join(RESOLUTION_HELP)}")
    conflict = ts.conflict(conflict_id)
    if conflict is None:
        raise ResolutionError(404, f"no conflict {conflict_id}")
    if conflict.state != "open":
        raise ResolutionError(409, f"conflict {conflict_id} is already resolved ({conflict.resolution})")
    target = st.config.target(conflict.target)
    if target is None:
        raise ResolutionError(422, f"conflict {conflict_id} is on {conflict.target!r}, no longer a configured target")
    record = (conflict.record_type, conflict.record_id)
    answer: dict[str, Any] = {"conflict": conflict_id, "resolution": resolution}

    def take(resources: list[dict[str, Any]]) -> None:
        """Import the server's version of the record back into the outbox as its new revision."""
        if not (record[0] and record[1]):
            return
        result = reverse_resources(resources, system_base=st.config.source.system_base)
        data = [r.data for r in result.records if r.record_type == record[0] and r.data.get("id") == record[1]]
        if not data:
            raise ResolutionError(502, f"{record[0]} {record[1]}: the server's version could not be read back "
                                       "as an ims-record/1 record")
        lists = {"patient": "patients", "practitioner": "practitioners", "assessment": "assessments",
                 "treatment": "treatments"}
        body = orjson.dumps({"format": "ims-record/1", "source": st.config.source.model_dump(exclude_none=True),
                             lists[record[0]]: data})
        raw, _ = parse_body(body)
        intake = take_records(raw, st.mapping, earlier_diagnoses=stored_diagnoses(st.outbox.record_group))
        if intake.rejected:
            problems = "; ".join(f"{p.path}: {p.message}" for r in intake.rejected for p in r.problems)
            raise ResolutionError(502, f"{record[0]} {record[1]}: the server's version is not a valid record: "
                                       f"{problems}")
        stored = st.outbox.put(intake.accepted, [t.name for t in st.config.targets], now=st.clock())
        answer["record"] = data[0]
        answer["revision"] = stored[0].revision if stored else None

    client = st.client_factory(target)
    try:
        done = resolve_conflict(client, ts, conflict_id, resolution, now=st.clock(), take=take)
    except ResolutionError:
        raise
    except UsageError as exc:
        raise ResolutionError(409, str(exc)) from exc
    except FhirError as exc:
        raise ResolutionError(502, f"{target.name}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 (an OperationOutcome, never a 500; the conflict stays open)
        log.warning("conflict %d: %s failed (%s)", conflict_id, resolution, type(exc).__name__)
        raise ResolutionError(502, f"conflict {conflict_id}: {resolution} failed ({type(exc).__name__}); "
                                   "the conflict stays open") from exc
    finally:
        client.close()
    answer["server_version"] = done.version
    if resolution != "accept" and record[0] and record[1]:
        st.outbox.settle_conflict(conflict.target, record[0], record[1], state="synced",
                                  detail=f"conflict {conflict_id} resolved: {resolution}", now=st.clock())
    log.info("conflict %d (%s %s on %s) resolved: %s", conflict_id, record[0], record[1], conflict.target, resolution)
    return answer


@bp.get("/conflicts")
@require("read", session_ok=True)
def list_conflicts() -> Response:
    ts = target_state(_state())
    wanted = request.args.get("state", "open")
    if wanted not in ("open", "resolved", "all"):
        return error_response(422, "state must be open, resolved or all")
    found = ts.conflicts(state=None if wanted == "all" else wanted,
                                               target=request.args.get("target") or None, limit=500)
    return jsonify({"conflicts": [conflict_json(c) for c in found]})


@bp.get("/conflicts/<int:conflict_id>")
@require("read", session_ok=True)
def get_conflict(conflict_id: int) -> Response:
    ts = target_state(_state())
    conflict = ts.conflict(conflict_id)
    if conflict is None:
        return error_response(404, f"no conflict {conflict_id}")
    return jsonify(conflict_json(conflict))


@bp.post("/conflicts/<int:conflict_id>/resolve")
@require("read-write")
def resolve_one(conflict_id: int) -> Response:
    body: Any = request.get_json(silent=True) or {}
    resolution = body.get("resolution") if isinstance(body, dict) else None
    if not isinstance(resolution, str):
        return error_response(422, 'the body must be {"resolution": "resend" | "accept" | "dismiss"}')
    try:
        answer = resolve(_state(), conflict_id, resolution)
    except ResolutionError as exc:
        return error_response(exc.status, str(exc))
    return jsonify(answer)


@bp.get("/audit")
@require("read", session_ok=True)
def audit() -> Response:
    ts = target_state(_state())
    rtype, rid = request.args.get("record_type"), request.args.get("record_id")
    if bool(rtype) != bool(rid):
        return error_response(422, "give record_type and record_id together")
    try:
        limit = min(max(int(request.args.get("limit", "100")), 1), 1000)
    except ValueError:
        return error_response(422, "limit must be a number")
    entries = ts.audit(target=request.args.get("target") or None,
                                             record=(rtype, rid) if rtype and rid else None, limit=limit)
    out = []
    for e in entries:
        item = e.as_dict()
        item["at"] = _iso(e.at)
        out.append(item)
    return jsonify({"audit": out})


__all__ = ["ResolutionError", "bp", "conflict_json", "resolve", "target_state"]
