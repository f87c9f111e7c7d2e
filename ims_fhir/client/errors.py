"""Translation of HTTP failures into the project's error tree (the one place it happens).

Terms
-----
error status
    A final HTTP status of 300 or more (redirects are followed only for GET/HEAD, so a
    3xx that reaches here is unexpected). Mapping (see :func:`error_class_for_status`)::

        401 403              FhirAuthError
        404 410              FhirNotFoundError
        409 412              FhirConflictError
          409 any write      FhirVersionConflictError  (HAPI's answer to a stale If-Match)
          412 + If-Match     FhirVersionConflictError  (the spec's answer to a stale If-Match)
        422                  FhirUnprocessableError
        408 429 5xx          FhirServerSideError   (only after the retry policy gave up)
        other 4xx            FhirClientSideError
        3xx and the rest     FhirServerError

issues
    The ``OperationOutcome.issue`` list of an error body, read with
    :func:`ims_fhir.errors.issues_from_outcome`; their diagnostics are folded to one
    line so an exception's ``str()`` is always a single line.
body summary
    For a body that is not an OperationOutcome (an HTML page from a proxy, plain text,
    other JSON): its ``<title>`` or first text, whitespace folded, cut to
    :data:`SUMMARY_LIMIT` characters. Never a traceback, never the whole page.
shown URL
    URLs in messages lose their query string (``?…``): search parameters can hold
    patient identifiers, and messages end up in logs. The full URL stays on ``.url``.
transport failure
    A ``requests`` exception, classified by :func:`classify_exception` into retryable
    or not, and whether the request provably never reached the server.
"""

from __future__ import annotations

import html
import http.client
import re
import socket
import ssl
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import requests
import urllib3.exceptions

from ims_fhir.errors import (
    FhirAuthError,
    FhirClientSideError,
    FhirConflictError,
    FhirNotFoundError,
    FhirServerError,
    FhirServerSideError,
    FhirTransportError,
    FhirUnprocessableError,
    FhirVersionConflictError,
    OutcomeIssue,
    issues_from_outcome,
)

SUMMARY_LIMIT = 200

_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_DROP = re.compile(r"<(script|style|head)[^>]*>.*?</\1>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


def error_class_for_status(status: int, *, version_aware: bool = False) -> type[FhirServerError]:
    """The exception class for a final error status (table in the module docstring).

    ``version_aware``: the request was a write that carried ``If-Match`` (a header, or
    ``request.ifMatch`` on a transaction entry). A 412 is then a stale version, not an
    ambiguous conditional match; a 409 to any write is HAPI's version conflict.
    """
    if status == 409 or (status == 412 and version_aware):
        return FhirVersionConflictError
    if status in (401, 403):
        return FhirAuthError
    if status in (404, 410):
        return FhirNotFoundError
    if status in (409, 412):
        return FhirConflictError
    if status == 422:
        return FhirUnprocessableError
    if status in (408, 429) or 500 <= status <= 599:
        return FhirServerSideError
    if 400 <= status <= 499:
        return FhirClientSideError
    return FhirServerError


def shown_url(url: str) -> str:
    """The URL as messages show it: without its query string."""
    parts = urlsplit(url)
    shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return shown + ("?…" if parts.query else "")


def one_line(text: str, limit: int = SUMMARY_LIMIT) -> str:
    """Whitespace folded to single spaces, cut to ``limit`` characters with an ellipsis."""
    folded = " ".join(text.split())
    return folded if len(folded) <= limit else folded[: limit - 1].rstrip() + "…"


def read_outcome(content: bytes) -> tuple[dict[str, Any] | None, list[OutcomeIssue]]:
    """(the OperationOutcome, its issues folded to one line each) if ``content`` is one."""
    try:
        body = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        return None, []
    issues = issues_from_outcome(body)
    if not issues and not (isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"):
        return None, []
    folded = [replace(i, diagnostics=one_line(i.diagnostics, 1000)) if i.diagnostics else i for i in issues]
    return body, folded


def summarize_body(content: bytes, content_type: str | None) -> str | None:
    """A short readable summary of an error body that is not an OperationOutcome."""
    if not content:
        return None
    text = content[:65536].decode("utf-8", errors="replace")
    kind = (content_type or "").lower()
    if "html" in kind or text.lstrip()[:1] == "<":
        title = _TITLE.search(text)
        if title and title.group(1).strip():
            text = title.group(1)
        else:
            text = _TAG.sub(" ", _DROP.sub(" ", text))
        text = html.unescape(text)
    elif "json" in kind or text.lstrip()[:1] in ("{", "["):
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            for key in ("error_description", "message", "error", "detail", "title"):
                if isinstance(body.get(key), str):
                    text = body[key]
                    break
    summary = one_line(text)
    return summary or None


def error_for_response(
    response: requests.Response, *, method: str, attempts: int = 1, version_aware: bool | None = None
) -> FhirServerError:
    """The typed exception for a final error response (call only for status >= 300).

    ``version_aware`` defaults to whether the request carried an ``If-Match`` header.
    """
    status = response.status_code
    if version_aware is None:
        sent = response.request.headers if response.request is not None else {}
        version_aware = bool(sent.get("If-Match"))
    url = response.url or (response.request.url if response.request is not None else "") or ""
    outcome, issues = read_outcome(response.content)
    message = f"{method} {shown_url(url)} failed"
    if attempts > 1:
        message += f" after {attempts} attempts"
    if not issues:
        summary = summarize_body(response.content, response.headers.get("Content-Type"))
        reason = response.reason or http.client.responses.get(status, "")
        message += f": {summary or reason}" if (summary or reason) else ""
    if 300 <= status <= 399:
        message += f" (unexpected redirect to {shown_url(response.headers.get('Location', '?'))})"
    cls = error_class_for_status(status, version_aware=version_aware)
    return cls(message, status=status, issues=issues, outcome=outcome, url=url)


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """What a ``requests`` exception means for retrying.

    ``retryable``: another attempt may succeed. ``unsent``: the request provably never
    reached the server (connection not established), so even a non-idempotent request
    may be sent again. ``summary``: a short phrase for the message.
    """

    retryable: bool
    unsent: bool
    summary: str


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps (args, reason, cause, context), bounded."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        item = todo.pop(0)
        if any(item is s for s in seen):
            continue
        seen.append(item)
        inner = [a for a in item.args if isinstance(a, BaseException)]
        reason = getattr(item, "reason", None)
        if isinstance(reason, BaseException):
            inner.append(reason)
        for nxt in (item.__cause__, item.__context__):
            if nxt is not None:
                inner.append(nxt)
        todo.extend(inner)
    return seen


def classify_exception(exc: requests.RequestException) -> TransportFailure:
    """Classify a ``requests`` exception (see :class:`TransportFailure`)."""
    chain = _chain(exc)

    def has(*types: type[BaseException]) -> bool:
        return any(isinstance(e, types) for e in chain)

    if isinstance(exc, requests.exceptions.SSLError) or has(ssl.SSLError):
        inner = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
        detail = getattr(inner, "reason", None) or getattr(inner, "verify_message", None) or "handshake failed"
        return TransportFailure(False, True, f"TLS error ({detail})")
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return TransportFailure(True, True, "connect timed out")
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return TransportFailure(True, False, "no answer within the read timeout")
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return TransportFailure(True, False, "the answer was cut off")
    if isinstance(exc, requests.exceptions.ConnectionError):
        if has(urllib3.exceptions.NameResolutionError, socket.gaierror):
            return TransportFailure(True, True, "host name could not be resolved")
        if has(ConnectionRefusedError):
            return TransportFailure(True, True, "connection refused")
        if has(urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError):
            return TransportFailure(True, True, "could not connect")
        if has(ConnectionResetError):
            return TransportFailure(True, False, "connection reset by the server")
        if has(http.client.RemoteDisconnected):
            return TransportFailure(True, False, "server closed the connection without answering")
        if has(TimeoutError, socket.timeout, urllib3.exceptions.ReadTimeoutError):
            return TransportFailure(True, False, "no answer within the read timeout")
        return TransportFailure(True, False, "connection lost")
    return TransportFailure(False, True, f"request could not be sent ({type(exc).__name__})")


def transport_error(
    failure: TransportFailure,
    *,
    method: str,
    url: str,
    attempts: int,
    elapsed: float,
) -> FhirTransportError:
    """The FhirTransportError for a transport failure that ends the call."""
    tries = f"after {attempts} attempts in {elapsed:.1f} s" if attempts > 1 else "after 1 attempt"
    return FhirTransportError(f"{method} {shown_url(url)}: {failure.summary} ({tries})")


__all__ = [
    "SUMMARY_LIMIT",
    "TransportFailure",
    "classify_exception",
    "error_class_for_status",
    "error_for_response",
    "one_line",
    "read_outcome",
    "shown_url",
    "summarize_body",
    "transport_error",
]
