"""Errors as FHIR OperationOutcome: every error answer of the API has this one shape.

An *issue* names what went wrong (``code``: invalid, required, security, too-costly,
not-found, not-supported, exception ...), the sentence a person reads
(``diagnostics``) and, for record problems, where: ``expression`` holds the field path
inside the record (``sites[0].insertions``), and ``location`` where the record sat in the
request body (``line 3``, ``treatments[2]``).

An answer is bounded whatever the request: at most ``[server] max_issues`` issues (the
first ones, then one ``information`` issue that counts the rest), each diagnostics text
cut to :data:`MAX_DIAGNOSTICS` characters. Errors found by waitress itself before the app
sees the request (an over-long chunked body, a bad header) are OperationOutcomes too
(:class:`OutcomeErrorTask`).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from flask import Flask, Response, current_app, has_app_context, jsonify
from werkzeug.exceptions import HTTPException

from ims_fhir.errors import ImsFhirError, InputError, UsageError

RULE_SYSTEM = "https://ims-fhir.github.io/fhir/CodeSystem/ims-record-rule"

_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
          413: "too-costly", 415: "not-supported", 422: "invalid", 429: "throttled", 431: "too-costly",
          501: "not-supported", 503: "transient"}
#: the longest diagnostics text of one issue
MAX_DIAGNOSTICS = 1000
DEFAULT_MAX_ISSUES = 100


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def issue(severity: str, code: str, diagnostics: str, *, expression: list[str] | None = None,
          location: list[str] | None = None, rule: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"severity": severity, "code": code}
    if rule:
        out["details"] = {"coding": [{"system": RULE_SYSTEM, "code": rule}]}
    out["diagnostics"] = diagnostics if len(diagnostics) <= MAX_DIAGNOSTICS else diagnostics[:MAX_DIAGNOSTICS] + "..."
    if location:
        out["location"] = [_cut(x) for x in location]
    if expression:
        out["expression"] = [_cut(x) for x in expression]
    return out


def bounded(issues: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` issues, and one more that counts those left out."""
    if len(issues) <= limit:
        return issues
    left = len(issues) - limit
    errors = sum(1 for i in issues[limit:] if i.get("severity") in ("error", "fatal"))
    return issues[:limit] + [issue("information", "too-costly",
                                   f"{left} more issue(s) not listed ({errors} of them errors; {len(issues)} in all); "
                                   "fix the ones above, or send smaller batches, to see them")]


def outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    limit = DEFAULT_MAX_ISSUES
    if has_app_context() and "ims_fhir" in current_app.extensions:
        limit = current_app.extensions["ims_fhir"].config.server.max_issues
    return {"resourceType": "OperationOutcome", "issue": bounded(issues, limit)}


def outcome_response(status: int, issues: list[dict[str, Any]], headers: dict[str, str] | None = None) -> Response:
    response = jsonify(outcome(issues))
    response.status_code = status
    response.mimetype = "application/fhir+json"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def error_response(status: int, message: str, *, code: str | None = None) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="ims-fhir"'} if status == 401 else None
    return outcome_response(status, [issue("error", code or _CODES.get(status, "exception"), message)], headers)


def register(app: Flask) -> None:
    """Every HTTP error and every ImsFhirError answers an OperationOutcome; logged once, here."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            limit = current_app.config.get("MAX_CONTENT_LENGTH")
            message = f"the request body is larger than the limit of {limit} bytes; send smaller batches"
        response = error_response(status, message)
        if status == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        if getattr(exc, "retry_after", None):
            response.headers["Retry-After"] = str(exc.retry_after)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(sqlite3.DatabaseError)
    def storage_error(exc: sqlite3.DatabaseError) -> Response:
        # a damaged or unreadable outbox: the service cannot answer, but says so (503), never a 500
        current_app.logger.error("storage error: %s", type(exc).__name__)
        return error_response(503, "the outbox storage cannot be read (damaged or unavailable); "
                                   "the operator must check the service log and /ready", code="exception")

    @app.errorhandler(ImsFhirError)
    def library_error(exc: ImsFhirError) -> Response:
        status = 400 if isinstance(exc, InputError) else 422 if isinstance(exc, UsageError) else 502
        if status == 502:
            current_app.logger.warning("request failed: %s", type(exc).__name__)
        return error_response(status, str(exc), code="exception" if status == 502 else "invalid")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        # the type only: an exception's text may quote request data
        current_app.logger.error("internal error: %s", type(exc).__name__)
        return error_response(500, "internal error; the service log has the error type", code="exception")


def waitress_outcome(status: int, reason: str, body: str) -> bytes:
    """The OperationOutcome for an error waitress answers itself (no app context there)."""
    message = f"{reason}: {body}".strip().rstrip(":")
    if status == 413:
        message = "the request body is larger than the service accepts; send smaller batches"
    doc = {"resourceType": "OperationOutcome",
           "issue": [issue("error", _CODES.get(status, "invalid"), message[:MAX_DIAGNOSTICS])]}
    return json.dumps(doc).encode("utf-8")


def _error_task_class() -> type:
    from waitress.task import ErrorTask

    class OutcomeErrorTask(ErrorTask):
        """waitress's own error answers (413 of a chunked body, 400, 431) as OperationOutcomes."""

        def execute(self) -> None:
            error: Any = getattr(self.request, "error", None) or self.request  # the parser's error
            code, reason = int(getattr(error, "code", 400)), str(getattr(error, "reason", "Bad Request"))
            body = waitress_outcome(code, reason, str(getattr(error, "body", "")))
            self.status = f"{code} {reason}"
            headers: Any = self.response_headers
            headers.extend([("Content-Type", "application/fhir+json"), ("X-Content-Type-Options", "nosniff"),
                            ("Cache-Control", "no-store")])
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    return OutcomeErrorTask
