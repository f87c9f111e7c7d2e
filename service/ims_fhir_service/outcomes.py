"""Errors as FHIR OperationOutcome: every error answer of the API has this one shape.

An *issue* names what went wrong (``code``: invalid, required, security, too-costly,
not-found, not-supported, exception ...), the sentence a person reads
(``diagnostics``) and, for record problems, where: ``expression`` holds the field path
inside the record (``sites[0].insertions``), and ``location`` where the record sat in the
request body (``line 3``, ``treatments[2]``).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, current_app, jsonify
from werkzeug.exceptions import HTTPException

from ims_fhir.errors import ImsFhirError, InputError, UsageError

RULE_SYSTEM = "https://ims-fhir.github.io/fhir/CodeSystem/ims-record-rule"

_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
          413: "too-costly", 415: "not-supported", 422: "invalid", 501: "not-supported", 503: "transient"}


def issue(severity: str, code: str, diagnostics: str, *, expression: list[str] | None = None,
          location: list[str] | None = None, rule: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"severity": severity, "code": code}
    if rule:
        out["details"] = {"coding": [{"system": RULE_SYSTEM, "code": rule}]}
    out["diagnostics"] = diagnostics
    if location:
        out["location"] = location
    if expression:
        out["expression"] = expression
    return out


def outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": issues}


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
        return response

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
