"""API tokens: bearer tokens checked against configured SHA-256 digests, with scopes.

Terms:

- *token*: a random secret a client sends as ``Authorization: Bearer <token>``. The
  service keeps only its SHA-256 digest (tokens are long random strings, not passwords,
  so a fast digest is enough; comparisons are constant-time). Neither is ever logged.
- *scope*: ``read`` (GET endpoints and the dashboard) or ``read-write`` (also posting
  records, retries and pulls).
- *session*: the dashboard's login form takes a token once and keeps the token's name in
  Flask's signed session cookie (HttpOnly, SameSite=Lax, Secure over HTTPS) with a CSRF
  token for its forms and a session id the server keeps (:class:`.hardening.SessionRegistry`).
  A session ends at logout (server-side: a copy of the cookie stops working too), after
  ``[server] session_hours``, at a restart, or when its token leaves the configuration.
- *throttle*: login attempts are limited per client address and per token
  (``[server] login_attempts_per_minute``); a wrong bearer token counts for its address. API endpoints that only read
  also accept the session (the dashboard's script polls them); writes need the bearer
  token or, from the dashboard, a form with the CSRF token.

``python -m ims_fhir_service.auth`` reads a token on stdin (or makes a new one with ``--new``)
and prints the ``sha256`` line for the configuration.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from flask import current_app, g, request, session
from werkzeug.exceptions import Forbidden, TooManyRequests, Unauthorized

from .config import TokenConfig

F = TypeVar("F", bound=Callable[..., Any])


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scope: str
    via: str  # "bearer" or "session"

    def can(self, scope: str) -> bool:
        return scope == "read" or self.scope == "read-write"


def find_token(tokens: tuple[TokenConfig, ...], token: str) -> TokenConfig | None:
    digest = hash_token(token)
    found = None
    for configured in tokens:  # no early exit: the time taken does not depend on which token matched
        if hmac.compare_digest(configured.sha256, digest):
            found = configured
    return found


def _tokens() -> tuple[TokenConfig, ...]:
    return current_app.extensions["ims_fhir"].config.tokens  # type: ignore[no-any-return]


def _state() -> Any:
    return current_app.extensions["ims_fhir"]


def _client_key() -> str:
    return "ip:" + (request.remote_addr or "unknown")


def _token_key(token: str) -> str:
    return "token:" + hash_token(token)[:32]


def throttled(token: str | None = None) -> float:
    """Seconds this client (and this token) must wait before trying again; 0 if it may try now."""
    keys = [_client_key()] + ([_token_key(token)] if token else [])
    return float(_state().login_throttle.blocked(*keys))


def _too_many(wait: float) -> TooManyRequests:
    exc = TooManyRequests(f"too many attempts with a wrong token; try again in {int(wait) + 1} s")
    exc.retry_after = int(wait) + 1
    return exc


def bearer_principal() -> Principal | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    token = token.strip()
    wait = throttled(token)
    if wait:
        raise _too_many(wait)
    found = find_token(_tokens(), token)
    if found is None:
        _state().login_throttle.hit(_client_key(), _token_key(token))
        raise Unauthorized("the bearer token is not valid")
    return Principal(found.name, found.scope, "bearer")


def session_principal() -> Principal | None:
    name = session.get("token")
    fingerprint = session.get("fp")
    if not name or not fingerprint:
        return None
    if not _state().sessions.valid(session.get("sid")):
        session.clear()  # logged out, expired, or issued before a restart
        return None
    for configured in _tokens():
        if configured.name == name and hmac.compare_digest(configured.sha256[:16].encode(), str(fingerprint).encode()):
            return Principal(configured.name, configured.scope, "session")
    session.clear()  # the token was removed from the configuration
    return None


def log_in(token: str) -> Principal | None:
    """Start a session for ``token``; None if it is wrong. Raises 429 when throttled."""
    wait = throttled(token or None)
    if wait:
        raise _too_many(wait)
    found = find_token(_tokens(), token) if token else None
    if token:
        _state().login_throttle.hit(_token_key(token))  # every attempt with this token
    if found is None:
        _state().login_throttle.hit(_client_key())  # failures from this address
        return None
    log_out()
    session["token"] = found.name
    session["fp"] = found.sha256[:16]
    session["csrf"] = secrets.token_urlsafe(24)
    session["sid"] = _state().sessions.start()
    return Principal(found.name, found.scope, "session")


def log_out() -> None:
    """End the session here and on the server (a copy of the cookie is worth nothing after this)."""
    _state().sessions.end(session.get("sid"))
    session.clear()


def csrf_token() -> str:
    return str(session.get("csrf", ""))


def check_csrf() -> None:
    sent = request.form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
    expected = csrf_token()
    # bytes: compare_digest refuses str with non-ASCII characters (TypeError), and a form may hold any
    if not expected or not hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode("utf-8")):
        raise Forbidden("the form is stale or did not come from the dashboard (CSRF token missing or wrong); reload the page")


def require(scope: str, *, session_ok: bool = False) -> Callable[[F], F]:
    """Allow the view only to a principal with ``scope`` (401 without one, 403 with too little)."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = bearer_principal()
            if principal is None and session_ok:
                principal = session_principal()
            if principal is None:
                raise Unauthorized("this endpoint needs a bearer token (Authorization: Bearer <token>)")
            if not principal.can(scope):
                raise Forbidden(f"token {principal.name!r} is read-only; this needs a read-write token")
            g.principal = principal
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--new":
        token = secrets.token_urlsafe(32)
        print(f"token (give it to the client, keep it nowhere else): {token}", file=sys.stderr)
    else:
        token = sys.stdin.readline().strip()
        if not token:
            print("usage: python -m ims_fhir_service.auth [--new] < token", file=sys.stderr)
            return 2
    print(f'sha256 = "{hash_token(token)}"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
