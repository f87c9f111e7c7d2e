"""Defences of the service against hostile clients: redirects, logs, logins, sessions, headers.

Terms:

- *local path*: a redirect target the service accepts from a request (``next`` after
  login, ``back`` after a dashboard retry): a same-origin path such as
  ``/ui/records/patient/P1``. Anything a browser could read as another origin (``//host``,
  ``/\\host``, a scheme, a tab or newline that browsers drop) is refused and the
  dashboard's home is used instead.
- *clean*: text from a request made safe for a log line (:func:`ims_fhir.logs.clean`).
- *throttle*: at most ``limit`` login attempts per minute per client address and per
  token; more answer 429 with ``Retry-After``. Failed bearer tokens count for the address.
- *session registry*: the server side of a dashboard login. The signed cookie carries a
  random session id; the id is valid only while this process keeps it (logout removes
  it, so a copied cookie stops working; a restart ends every session).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Request, Response, request
from flask.sessions import SecureCookieSessionInterface

from ims_fhir.logs import clean

# ---------------------------------------------------------------------------------------
# redirects


def local_path(value: str | None, *, max_length: int = 2000) -> str | None:
    """``value`` if it is a same-origin path to redirect to, else None (see the module docstring)."""
    if not value or len(value) > max_length:
        return None
    if any(not c.isprintable() or c.isspace() for c in value) or "\\" in value:
        return None  # control characters, tabs, newlines, odd spaces: browsers drop or fold them
    if not value.startswith("/") or "//" in value:
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    return value


# ---------------------------------------------------------------------------------------
# login throttle


class Throttle:
    """Sliding one-minute windows of attempts per key; thread-safe, bounded in memory."""

    def __init__(self, limit: int, *, window: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10000) -> None:
        self.limit, self.window, self.clock, self.max_keys = limit, window, clock, max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _window(self, key: str, now: float) -> deque[float]:
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
            while len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        return hits

    def blocked(self, *keys: str) -> float:
        """Seconds until every key may try again (0 when none is over the limit)."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key in keys:
                hits = self._window(key, now)
                if len(hits) >= self.limit:
                    wait = max(wait, hits[0] + self.window - now)
        return wait

    def hit(self, *keys: str) -> None:
        now = self.clock()
        with self._lock:
            for key in keys:
                self._window(key, now).append(now)
                self._hits.move_to_end(key)


# ---------------------------------------------------------------------------------------
# server-side sessions


class SessionRegistry:
    """The dashboard sessions this process issued and has not ended (bounded, with a lifetime)."""

    def __init__(self, lifetime: float, *, clock: Callable[[], float] = time.time, max_sessions: int = 10000) -> None:
        self.lifetime, self.clock, self.max_sessions = lifetime, clock, max_sessions
        self._live: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def start(self) -> str:
        sid = secrets.token_urlsafe(24)
        with self._lock:
            self._live[sid] = self.clock() + self.lifetime
            while len(self._live) > self.max_sessions:
                self._live.popitem(last=False)
        return sid

    def valid(self, sid: object) -> bool:
        if not isinstance(sid, str):
            return False
        with self._lock:
            until = self._live.get(sid)
            if until is None:
                return False
            if until < self.clock():
                del self._live[sid]
                return False
            return True

    def end(self, sid: object) -> None:
        if isinstance(sid, str):
            with self._lock:
                self._live.pop(sid, None)


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure when configured or when the request came over HTTPS
    (``wsgi.url_scheme``, which waitress sets from a trusted proxy's X-Forwarded-Proto)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or _is_https(request)


def _is_https(req: Request) -> bool:
    try:
        return bool(req.is_secure)
    except RuntimeError:  # outside a request
        return False


# ---------------------------------------------------------------------------------------
# response headers

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def security_headers(response: Response) -> Response:
    """Headers every answer carries; pages and record data are never cached."""
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if request.endpoint != "dashboard.static":
        headers["Cache-Control"] = "no-store"
    return response


__all__ = ["CSP", "SessionInterface", "SessionRegistry", "Throttle", "clean", "local_path", "security_headers"]
