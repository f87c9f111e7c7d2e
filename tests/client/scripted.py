"""Test doubles for the client's unit tests: a scripted transport adapter and a fake clock.

Terms
-----
ScriptedAdapter
    A ``requests.adapters.BaseAdapter`` mounted on the session the client is given. It
    answers ``GET .../metadata`` with a CapabilityStatement and every other request from
    a queue of :class:`Reply` objects or exceptions (raised as if the network failed),
    or from routes (a function of the request). It records what was sent, with the
    timeout and TLS verify arguments, so tests can assert on headers and counts.
    It is not a FHIR server: the real server's behaviour is tested against HAPI.
FakeClock
    Time that only moves when the client sleeps (or a test/adapter advances it), so
    retry tests run instantly and can assert the exact sleeps requested.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import responses as reasons
from typing import Any

import orjson
import requests
import urllib3.exceptions
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from ims_fhir.client import Clock

BASE = "https://fhir.test/r4"
TOKEN_URL = "https://auth.test/token"

ALL_TYPE_INTERACTIONS = [
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
]


def capability_statement(
    *,
    fhir_version: str = "4.0.1",
    system_interactions: tuple[str, ...] = ("transaction", "batch"),
    types: tuple[str, ...] = ("Patient", "Practitioner", "Observation", "Procedure", "Encounter"),
    interactions: list[str] | None = None,
    conditional: bool = True,
) -> dict[str, Any]:
    """A CapabilityStatement as a server would send it (shaped by the arguments)."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "fhirVersion": fhir_version,
        "software": {"name": "Scripted", "version": "1"},
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "interaction": [{"code": c} for c in system_interactions],
                "resource": [
                    {
                        "type": t,
                        "interaction": [{"code": c} for c in (interactions or ALL_TYPE_INTERACTIONS)],
                        "conditionalCreate": conditional,
                        "conditionalUpdate": conditional,
                    }
                    for t in types
                ],
            }
        ],
    }


@dataclass
class Reply:
    """One scripted HTTP answer. ``body`` may be a dict (sent as JSON), str or bytes."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: seconds the fake clock advances while "the server works" on this request
    takes: float = 0.0

    def content(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return orjson.dumps(self.body)


def outcome(*issues: tuple[str, str, str | None, list[str] | None]) -> dict[str, Any]:
    """An OperationOutcome from (severity, code, diagnostics, expression) tuples."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {k: v for k, v in {"severity": s, "code": c, "diagnostics": d, "expression": e}.items() if v is not None}
            for s, c, d, e in issues
        ],
    }


def connection_reset() -> requests.exceptions.ConnectionError:
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))
    )


def connection_refused() -> requests.exceptions.ConnectionError:
    message = "Failed to establish a new connection: [Errno 111] Connection refused"
    reason = urllib3.exceptions.NewConnectionError(None, message)  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/", reason))  # type: ignore[arg-type]


def read_timeout() -> requests.exceptions.ReadTimeout:
    return requests.exceptions.ReadTimeout("Read timed out. (read timeout=60)")


@dataclass
class Sent:
    """One request the adapter saw, with the per-request arguments requests passed."""

    request: requests.PreparedRequest
    timeout: Any
    verify: Any
    cert: Any = None

    @property
    def method(self) -> str:
        return str(self.request.method)

    @property
    def url(self) -> str:
        return str(self.request.url)

    @property
    def headers(self) -> CaseInsensitiveDict[str]:
        return self.request.headers

    def json(self) -> Any:
        body = self.request.body
        return orjson.loads(body) if body else None


class FakeClock:
    """Time that moves only when slept on or advanced; ``rand`` is the jitter draw."""

    def __init__(self, *, rand: float = 0.5, wall: float = 1_700_000_000.0) -> None:
        self.elapsed = 0.0
        self.wall = wall
        self.rand = rand
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds
        self.wall += seconds

    def clock(self) -> Clock:
        return Clock(sleep=self.sleep, monotonic=lambda: self.elapsed, now=lambda: self.wall, random=lambda: self.rand)


Handler = Callable[[requests.PreparedRequest], "Reply | BaseException"]


class ScriptedAdapter(BaseAdapter):
    """See the module docstring."""

    def __init__(self, *, capability: dict[str, Any] | None = None, clock: FakeClock | None = None) -> None:
        super().__init__()
        self.capability = capability if capability is not None else capability_statement()
        self.clock = clock
        self.script: deque[Reply | BaseException] = deque()
        self.routes: list[tuple[str, str, Handler]] = []
        self.sent: list[Sent] = []

    def queue(self, *replies: Reply | BaseException) -> ScriptedAdapter:
        self.script.extend(replies)
        return self

    def route(self, method: str, url_prefix: str, handler: Handler) -> ScriptedAdapter:
        self.routes.append((method, url_prefix, handler))
        return self

    def calls(self, method: str | None = None, *, metadata: bool = False) -> list[Sent]:
        """Requests seen (``metadata`` ones only when asked), optionally of one method."""
        return [
            s
            for s in self.sent
            if (method is None or s.method == method) and (metadata or not s.url.endswith("/metadata"))
        ]

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        self.sent.append(Sent(request, timeout, verify, cert))
        url = str(request.url)
        answer: Reply | BaseException
        route = next((h for m, p, h in self.routes if m == request.method and url.startswith(p)), None)
        if route is not None:
            answer = route(request)
        elif request.method == "GET" and url.endswith("/metadata"):
            answer = Reply(200, self.capability, {"Content-Type": "application/fhir+json"})
        elif self.script:
            answer = self.script.popleft()
        else:
            raise AssertionError(f"unscripted request {request.method} {url}")
        if isinstance(answer, BaseException):
            raise answer
        if self.clock is not None and answer.takes:
            self.clock.advance(answer.takes)
        response = requests.Response()
        response.status_code = answer.status
        response.reason = reasons.get(answer.status, "")
        response.headers = CaseInsensitiveDict(answer.headers)
        if isinstance(answer.body, (dict, list)) and "Content-Type" not in response.headers:
            response.headers["Content-Type"] = "application/fhir+json;charset=utf-8"
        response.raw = io.BytesIO(answer.content())
        response.url = url
        response.request = request
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass
