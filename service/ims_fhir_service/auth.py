"""API tokens: bearer tokens checked against configured SHA-256 digests, with scopes.

Terms:

- *token*: a random secret a client sends as ``Authorization: Bearer <token>``. The
  service keeps only its SHA-256 digest (tokens are long random strings, not passwords,
  so a fast digest is enough; comparisons are constant-time). Neither is ever logged.
- *scope*: ``read`` (GET endpoints and the dashboard) or ``read-write`` (also posting
  records, retries and pulls).
- *session*: the dashboard's login form takes a token once and keeps the token's name in
  Flask's signed session cookie (HttpOnly, SameSite=Lax) with a CSRF token for its forms.
  A session ends when its token leaves the configuration. API endpoints that only read
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
from werkzeug.exceptions import Forbidden, Unauthorized

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


def bearer_principal() -> Principal | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    found = find_token(_tokens(), token.strip())
    if found is None:
        raise Unauthorized("the bearer token is not valid")
    return Principal(found.name, found.scope, "bearer")


def session_principal() -> Principal | None:
    name = session.get("token")
    fingerprint = session.get("fp")
    if not name or not fingerprint:
        return None
    for configured in _tokens():
        if configured.name == name and hmac.compare_digest(configured.sha256[:16], fingerprint):
            return Principal(configured.name, configured.scope, "session")
    session.clear()  # the token was removed from the configuration
    return None


def log_in(token: str) -> Principal | None:
    found = find_token(_tokens(), token)
    if found is None:
        return None
    session.clear()
    session["token"] = found.name
    session["fp"] = found.sha256[:16]
    session["csrf"] = secrets.token_urlsafe(24)
    return Principal(found.name, found.scope, "session")


def csrf_token() -> str:
    return str(session.get("csrf", ""))


def check_csrf() -> None:
    sent = request.form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
    expected = csrf_token()
    if not expected or not hmac.compare_digest(sent, expected):
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
