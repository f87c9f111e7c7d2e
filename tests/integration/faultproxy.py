"""A fault-injecting HTTP proxy for testing the FHIR client against a real server.

``FaultProxy(upstream_base_url)`` listens on 127.0.0.1 (a free port) and forwards each
request to the upstream server (which must also be on 127.0.0.1), unless a scripted
:class:`Fault` claims the request first. The proxy's :attr:`FaultProxy.base_url` has the
same path as the upstream base, so a client pointed at it talks FHIR as usual. The
``Host`` header is forwarded unchanged, so the server builds its paging links through
the proxy.

Terms
-----
fault
    One misbehaviour (:class:`Fault`): ``reset`` (close the socket with a TCP reset and
    no reply), ``error`` (answer an HTTP status such as 500, 503 or 429 with
    ``Retry-After``) or ``delay`` (hold the request or its answer for a while, e.g. past
    the client's read timeout).
forward
    Whether and when a faulted request still reaches the upstream server:
    ``"no"`` never; ``"before"`` forwarded first and the fault applied to the answer
    (the server applied the write, the client sees a reset, an error or a timeout: the
    nasty case that only idempotent requests survive); ``"after"`` (delay only) held
    first, forwarded when the delay ends, even if the client has given up.
rule
    A fault with a count and a filter (:meth:`FaultProxy.inject`): it applies to the
    next ``times`` requests that satisfy ``when`` (a predicate on :class:`ProxyRequest`),
    after letting ``skip`` of them pass. Rules are tried in the order they were added;
    a request no rule claims is passed through.
TLS
    With ``tls=`` (a server-side ``ssl.SSLContext``) the proxy terminates TLS, like a
    hospital's gateway; with ``verify_mode = CERT_REQUIRED`` on that context it demands a
    client certificate (mutual TLS). The upstream stays plain HTTP on 127.0.0.1.
timestamps
    Every request's arrival and the moment its answer (or fault) left, on the
    ``time.monotonic()`` scale (:class:`LogEntry` ``at`` and ``answered``), e.g. to check that
    no client request arrived inside a ``Retry-After`` window the proxy announced.
bounds
    The proxy stops by itself after ``lifetime`` seconds or ``max_requests`` requests;
    delays are capped at ``max_delay`` and end early when the proxy stops; idle
    keep-alive connections time out; it binds and connects only to 127.0.0.1.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal, Self
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"

# Headers that describe one hop, not the message (RFC 9110 section 7.6.1), plus the
# framing this proxy redoes itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)

Forward = Literal["no", "before", "after"]


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted misbehaviour; build with :meth:`reset`, :meth:`error`, :meth:`delay`."""

    kind: Literal["reset", "error", "delay"]
    forward: Forward = "no"
    status: int = 503
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    seconds: float = 0.0

    @classmethod
    def reset(cls, *, forward: Literal["no", "before"] = "no") -> Fault:
        """Close the connection with a TCP reset and no reply."""
        return cls("reset", forward=forward)

    @classmethod
    def error(
        cls,
        status: int = 503,
        *,
        retry_after: str | None = None,
        body: bytes = b"",
        forward: Literal["no", "before"] = "no",
    ) -> Fault:
        """Answer ``status`` (optionally with ``Retry-After``) instead of the server's reply."""
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        if retry_after is not None:
            headers.append(("Retry-After", retry_after))
        text = body or f"fault proxy: injected {status}".encode()
        return cls("error", forward=forward, status=status, headers=tuple(headers), body=text)

    @classmethod
    def delay(cls, seconds: float, *, forward: Forward = "after") -> Fault:
        """Hold the request for ``seconds``: ``forward="after"`` then forwards it and relays
        the answer (to whoever still listens); ``"before"`` forwards it at once and holds
        the answer; ``"no"`` never forwards and closes the connection after the delay."""
        return cls("delay", forward=forward, seconds=seconds)


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """A request as the proxy received it; ``index`` counts requests from 0."""

    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = 0.0  # arrival, time.monotonic()

    @property
    def path_only(self) -> str:
        return self.path.split("?", 1)[0]


@dataclass
class _Rule:
    fault: Fault
    when: Callable[[ProxyRequest], bool]
    times: int
    skip: int


@dataclass(frozen=True, slots=True)
class LogEntry:
    """What the proxy did with one request: ``action`` is ``pass`` or the fault kind;
    ``upstream_status`` is the server's status when the request was forwarded."""

    index: int
    method: str
    path: str
    action: str
    upstream_status: int | None = None
    at: float = 0.0  # arrival (time.monotonic())
    answered: float = 0.0  # when the answer (or the fault) went back


@dataclass
class _State:
    rules: list[_Rule] = field(default_factory=list)
    log: list[LogEntry] = field(default_factory=list)
    count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a refused TLS handshake (no or wrong client certificate) is expected in the TLS tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections end; handler threads do not linger
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # the proxy's log is FaultProxy.log

    def _handle(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        request = proxy._admit(self.command, self.path, dict(self.headers.items()), body)
        if request is None:  # over max_requests: the proxy is stopping
            self._reset()
            return
        fault = proxy._claim(request)
        if fault is None:
            status, reason, headers, data = proxy._forward(request)
            proxy._record(request, "pass", status)
            self._relay(status, reason, headers, data)
            return
        upstream: tuple[int, str, list[tuple[str, str]], bytes] | None = None
        if fault.forward == "before":
            upstream = proxy._forward(request)
        if fault.kind == "delay":
            proxy._sleep(fault.seconds)
            if fault.forward == "after":
                upstream = proxy._forward(request)
        proxy._record(request, fault.kind, upstream[0] if upstream else None)
        if fault.kind == "reset" or (fault.kind == "delay" and upstream is None):
            self._reset()
        elif fault.kind == "error":
            self._relay(fault.status, http.client.responses.get(fault.status, ""), list(fault.headers), fault.body)
        elif upstream is not None:
            self._relay(*upstream)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    def _relay(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
        try:
            self.send_response(status, reason)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP and name.lower() not in ("date", "server"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client gave up (timeout) before the answer came

    def _reset(self) -> None:
        try:
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True


class FaultProxy:
    """See the module docstring. Use as a context manager, or call start() and stop()."""

    def __init__(
        self,
        upstream_base_url: str,
        *,
        lifetime: float = 600.0,
        max_requests: int = 5000,
        max_delay: float = 60.0,
        upstream_timeout: float = 120.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(upstream_base_url)
        if parts.scheme != "http" or parts.hostname not in (LOOPBACK, "localhost") or parts.port is None:
            raise ValueError(f"the fault proxy only forwards to http://127.0.0.1:PORT, not {upstream_base_url!r}")
        self.upstream_port: int = parts.port
        self.base_path = parts.path.rstrip("/")
        self.lifetime = lifetime
        self.max_requests = max_requests
        self.max_delay = max_delay
        self.upstream_timeout = upstream_timeout
        self._state = _State()
        self._stopped = threading.Event()
        self._server = _Server((LOOPBACK, 0), _Handler)
        self._server.proxy = self
        self.scheme = "http"
        if tls is not None:
            # TLS termination, as a hospital's gateway does: the proxy holds the certificate
            # (and, for mutual TLS, a context that requires the client's), the upstream is plain HTTP.
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.port}{self.base_path}"

    def is_transaction(self, request: ProxyRequest) -> bool:
        """A predicate for :meth:`inject`: POST to the FHIR base (a transaction or batch)."""
        return request.method == "POST" and request.path_only.rstrip("/") == self.base_path

    # -- scripting ----------------------------------------------------------------------

    def inject(
        self,
        fault: Fault,
        *,
        times: int = 1,
        when: Callable[[ProxyRequest], bool] | None = None,
        skip: int = 0,
    ) -> Self:
        """Apply ``fault`` to the next ``times`` requests matching ``when`` (all if None),
        after letting ``skip`` matching requests through."""
        if times < 1 or skip < 0:
            raise ValueError("times must be at least 1 and skip not negative")
        with self._state.lock:
            self._state.rules.append(_Rule(fault, when or (lambda request: True), times, skip))
        return self

    @property
    def log(self) -> list[LogEntry]:
        with self._state.lock:
            return list(self._state.log)

    def pending(self) -> int:
        """How many scripted faults have not fired yet."""
        with self._state.lock:
            return sum(rule.times for rule in self._state.rules)

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy", daemon=True
        )
        self._thread.start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()  # ends delays early
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- used by the handler ------------------------------------------------------------

    def _admit(self, method: str, path: str, headers: dict[str, str], body: bytes) -> ProxyRequest | None:
        with self._state.lock:
            index = self._state.count
            self._state.count += 1
        if index >= self.max_requests:
            threading.Thread(target=self.stop, daemon=True).start()
            return None
        return ProxyRequest(index, method, path, headers, body, time.monotonic())

    def _claim(self, request: ProxyRequest) -> Fault | None:
        with self._state.lock:
            for rule in self._state.rules:
                if rule.times <= 0 or not rule.when(request):
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                rule.times -= 1
                return rule.fault
        return None

    def _record(self, request: ProxyRequest, action: str, upstream_status: int | None) -> None:
        with self._state.lock:
            self._state.log.append(LogEntry(request.index, request.method, request.path, action, upstream_status,
                                            request.at, time.monotonic()))

    def _sleep(self, seconds: float) -> None:
        self._stopped.wait(min(seconds, self.max_delay))

    def _forward(self, request: ProxyRequest) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send the request to the upstream server; a failure there becomes a 502."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        connection = http.client.HTTPConnection(LOOPBACK, self.upstream_port, timeout=self.upstream_timeout)
        try:
            connection.request(request.method, request.path, body=request.body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        except OSError as exc:
            text = f"fault proxy: upstream failed: {exc}".encode()
            return 502, "Bad Gateway", [("Content-Type", "text/plain; charset=utf-8")], text
        finally:
            connection.close()


__all__ = ["Fault", "FaultProxy", "LogEntry", "ProxyRequest"]
