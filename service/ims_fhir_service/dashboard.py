"""The dashboard: server-rendered pages over the outbox, behind a login with an API token.

Plain HTML forms that work without JavaScript (post, then redirect back: 303); the small
``static/dashboard.js`` only enhances them (sends forms in the background and refreshes
the live part of the page every few seconds). Every form carries the session's CSRF token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, flash, g, redirect, render_template, request, url_for
from werkzeug.exceptions import Forbidden, NotFound, TooManyRequests

from ims_fhir.records import vocabulary as v
from ims_fhir.sync.reconcile import RESOLUTION_HELP
from ims_fhir.sync.store import STATES

from .api import iso
from .auth import check_csrf, csrf_token, log_in, log_out, session_principal
from .conflicts import ResolutionError, resolve, target_state
from .hardening import clean, local_path

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")
log = logging.getLogger("ims_fhir_service.dashboard")
F = TypeVar("F", bound=Callable[..., Any])


def login_required(view: F) -> F:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        principal = session_principal()
        if principal is None:
            return redirect(url_for("dashboard.login", next=request.path))
        g.principal = principal
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _writable() -> None:
    check_csrf()
    if not g.principal.can("read-write"):
        raise Forbidden(f"token {g.principal.name!r} is read-only; retries need a read-write token")


def important_issues(outcome: dict[str, Any] | None, limit: int = 3) -> tuple[list[dict[str, Any]], int]:
    """The errors of an OperationOutcome first (HAPI adds a warning per resource), at most ``limit``;
    and how many issues are left out."""
    issues = [i for i in (outcome or {}).get("issue", []) if isinstance(i, dict)]
    errors = [i for i in issues if i.get("severity") in ("fatal", "error")] or issues
    return errors[:limit], len(issues) - min(len(errors), limit)


@bp.app_context_processor
def _helpers() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "iso": iso, "states": STATES, "important_issues": important_issues}


@bp.get("/login")
def login() -> str:
    return render_template("login.html", next=local_path(request.args.get("next")) or "")


@bp.post("/login")
def login_post() -> Any:
    try:
        principal = log_in(request.form.get("token", "").strip())
    except TooManyRequests as exc:
        log.warning("dashboard login throttled")
        page = render_template("login.html", error="Too many attempts; wait a minute and try again.", next="")
        return page, 429, {"Retry-After": str(getattr(exc, "retry_after", 60))}
    if principal is None:
        log.info("dashboard login refused")
        return render_template("login.html", error="That token is not valid.", next=""), 401
    log.info("dashboard login: token %s", principal.name)
    # only a same-origin path: never a tab, newline, backslash or // that would leave the site or break the header
    return redirect(local_path(request.form.get("next")) or url_for("dashboard.index"))


@bp.post("/logout")
@login_required
def logout() -> Any:
    check_csrf()
    log_out()
    return redirect(url_for("dashboard.login"))


@bp.get("/")
@login_required
def index() -> str:
    st = current_app.extensions["ims_fhir"]
    stats = st.outbox.stats()
    targets = [t.name for t in st.config.targets]
    counts = {t: {s: stats.depth.get((t, s), 0) for s in STATES} for t in targets}
    dead = sum(c["dead"] for c in counts.values())
    ts = target_state(st)
    return render_template("dashboard.html", counts=counts, dead=dead, failures=st.outbox.failures(limit=25),
                           recent=st.outbox.recent(limit=15), source=st.config.source, principal=g.principal,
                           record_types=v.RECORD_TYPES, conflicts=ts.conflicts(limit=50),
                           resolutions=RESOLUTION_HELP)


@bp.get("/ui/lookup")
@login_required
def lookup() -> Any:
    rtype, rid = request.args.get("record_type", ""), request.args.get("record_id", "").strip()
    if rtype not in v.RECORD_TYPES or not rid:
        flash("Choose a record type and give an id.")
        return redirect(url_for("dashboard.index"))
    return redirect(url_for("dashboard.record", record_type=rtype, record_id=rid))


@bp.get("/ui/records/<record_type>/<record_id>")
@login_required
def record(record_type: str, record_id: str) -> Any:
    st = current_app.extensions["ims_fhir"]
    status = st.outbox.status(record_type, record_id) if record_type in v.RECORD_TYPES else None
    if status is None:
        raise NotFound(f"no {record_type} {record_id!r} has been posted")
    return render_template("record.html", status=status, history=st.outbox.history(record_type, record_id, limit=200),
                           principal=g.principal)


@bp.post("/ui/records/<record_type>/<record_id>/retry")
@login_required
def retry_record(record_type: str, record_id: str) -> Response:
    _writable()
    st = current_app.extensions["ims_fhir"]
    target = request.form.get("target") or None
    if target is not None and st.config.target(target) is None:
        raise NotFound(f"{target!r} is not a configured target")
    n = st.outbox.retry(record_type, record_id, now=st.clock(), target=target)
    log.info("dashboard retry of %s %s: %d queued", clean(record_type, 40), clean(record_id, 80), n)
    flash(f"{record_type} {record_id}: queued again." if n else f"{record_type} {record_id}: nothing to retry.")
    back = local_path(request.form.get("back")) or url_for("dashboard.index")
    return redirect(back, code=303)  # type: ignore[return-value]


@bp.post("/ui/retry-dead")
@login_required
def retry_dead() -> Response:
    _writable()
    st = current_app.extensions["ims_fhir"]
    n = st.outbox.retry_state("dead", now=st.clock())
    log.info("dashboard retry of every dead delivery: %d queued", n)
    flash(f"{n} dead deliveries queued again.")
    return redirect(url_for("dashboard.index"), code=303)  # type: ignore[return-value]


@bp.post("/ui/conflicts/<int:conflict_id>/resolve")
@login_required
def resolve_conflict(conflict_id: int) -> Response:
    _writable()
    st = current_app.extensions["ims_fhir"]
    resolution = request.form.get("resolution", "")
    try:
        answer = resolve(st, conflict_id, resolution)
    except ResolutionError as exc:
        flash(f"Conflict {conflict_id}: {exc}")
    else:
        done = {"resend": "the clinic's version was sent over the server's",
                "accept": "the server's version is the record's new revision",
                "dismiss": "the server's version is kept"}[resolution]
        flash(f"Conflict {conflict_id} resolved: {done}" + (f" (server version {answer['server_version']})."
                                                             if answer.get("server_version") else "."))
    return redirect(url_for("dashboard.index"), code=303)  # type: ignore[return-value]


@bp.get("/ui/audit")
@login_required
def audit() -> str:
    st = current_app.extensions["ims_fhir"]
    ts = target_state(st)
    rtype, rid = request.args.get("record_type") or None, request.args.get("record_id") or None
    entries = ts.audit(target=request.args.get("target") or None,
                       record=(rtype, rid) if rtype and rid else None, limit=500)
    return render_template("audit.html", entries=entries, principal=g.principal)
