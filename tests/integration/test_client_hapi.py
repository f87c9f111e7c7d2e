"""The FHIR client against the real HAPI FHIR server, directly and through a fault proxy.

Directly: the CapabilityStatement is accepted, create/read/update with If-Match work,
a stale If-Match is a conflict, HAPI's validator errors arrive as typed 422 errors with
their issues, search pages follow HAPI's next links, transactions answer per entry.

Through :class:`~tests.integration.faultproxy.FaultProxy`: connection resets, 500/503,
429 with Retry-After and answers slower than the read timeout (held before or after the
server applied the write) are survived by retrying, and afterwards the server holds
exactly one copy of each resource, because every write is a conditional create or a PUT
on a deterministic id. Each test uses its own identifiers on a wiped server.
"""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from ims_fhir.client import (
    ClientConfig,
    Clock,
    FhirClient,
    RetryPolicy,
    Timeout,
    push_requirements,
    transaction_bundles,
)
from ims_fhir.dev.hapi import DevServer
from ims_fhir.errors import (
    FhirConflictError,
    FhirNotFoundError,
    FhirServerSideError,
    FhirTransportError,
    FhirUnprocessableError,
)

from .faultproxy import Fault, FaultProxy

SYSTEM = "https://ims-fhir.github.io/fhir/sid/client-test"
LOINC = "http://loinc.org"
TYPES = ["Patient", "Practitioner", "Observation", "Procedure", "Encounter"]


class SleepRecorder:
    """A real sleep that remembers what the client asked for."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        time.sleep(seconds)


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # 127.0.0.1 only; no proxy from the environment
        yield s


@pytest.fixture
def make_client(session: requests.Session, sleeps: SleepRecorder) -> Callable[..., FhirClient]:
    """A client for ``base_url`` with quick backoff (real time, recorded sleeps)."""

    def make(base_url: str, *, read_timeout: float = 60.0, **retry: Any) -> FhirClient:
        policy = RetryPolicy(
            **{"max_attempts": 6, "total_budget": 90.0, "backoff_base": 0.05, "backoff_cap": 0.5, **retry}
        )
        config = ClientConfig(base_url, timeout=Timeout(connect=5.0, read=read_timeout), retry=policy)
        return FhirClient(config, session=session, clock=Clock(sleep=sleeps))

    return make


@pytest.fixture
def server(clean_fhir_server: DevServer) -> DevServer:
    return clean_fhir_server


@pytest.fixture
def client(server: DevServer, make_client: Callable[..., FhirClient]) -> FhirClient:
    return make_client(server.base_url)


@pytest.fixture
def proxy(server: DevServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.base_url, lifetime=300) as running:
        yield running


def key() -> str:
    return uuid.uuid4().hex[:12]


def patient(value: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}], **fields}


def observation(value: str, subject: str, score: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{value}",
        "identifier": [{"system": SYSTEM, "value": value}],
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "72514-3"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": "2024-03-01T10:00:00+01:00",
        "valueInteger": score,
    }


def idempotent_transaction(tag: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A transaction as ims-fhir builds them: conditional creates and PUTs on fixed ids.

    Returns the Bundle and {resource type: identifier value} of what it writes."""
    patient_urn = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, SYSTEM + tag)}"
    practitioner = {
        "resourceType": "Practitioner",
        "identifier": [{"system": SYSTEM, "value": f"dr-{tag}"}],
        "name": [{"family": "Gunn"}],
    }
    entries = [
        {
            "fullUrl": patient_urn,
            "resource": patient(f"pt-{tag}", gender="female"),
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|pt-{tag}"},
        },
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": practitioner,
            "request": {"method": "POST", "url": "Practitioner", "ifNoneExist": f"identifier={SYSTEM}|dr-{tag}"},
        },
        {
            "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, SYSTEM + 'ob' + tag)}",
            "resource": observation(f"ob-{tag}", patient_urn, 6),
            "request": {"method": "PUT", "url": f"Observation/obs-ob-{tag}"},
        },
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return bundle, {"Patient": f"pt-{tag}", "Practitioner": f"dr-{tag}", "Observation": f"ob-{tag}"}


def copies(client: FhirClient, resource_type: str, value: str) -> int:
    return len(list(client.search(resource_type, {"identifier": f"{SYSTEM}|{value}"}, no_cache=True)))


def assert_one_copy_each(client: FhirClient, written: dict[str, str]) -> None:
    counts = {t: copies(client, t, v) for t, v in written.items()}
    assert counts == {t: 1 for t in written}, counts


def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


# -- directly against HAPI ------------------------------------------------------------------


def test_capability_statement_is_accepted(client: FhirClient) -> None:
    capabilities = client.require(push_requirements(TYPES, conditional_update=True))
    assert capabilities.is_r4 and capabilities.fhir_version is not None
    assert capabilities.fhir_version.startswith("4.0.")


def test_create_read_update_with_if_match(client: FhirClient) -> None:
    value = key()
    created = client.create(patient(value, gender="female"), if_none_exist={"identifier": f"{SYSTEM}|{value}"})
    assert created.status == 201
    assert created.resource_id and created.version_id == "1"
    assert created.last_modified is not None
    again = client.create(patient(value, gender="female"), if_none_exist={"identifier": f"{SYSTEM}|{value}"})
    assert again.status == 200 and again.resource_id == created.resource_id

    read = client.read("Patient", created.resource_id)
    assert read.version_id == "1" and read.resource is not None

    updated = client.update({**read.resource, "gender": "male"}, if_match=read.version_id)
    assert updated.status == 200 and updated.version_id == "2"

    with pytest.raises(FhirConflictError) as info:
        client.update({**read.resource, "gender": "other"}, if_match="1")
    assert info.value.status == 412
    assert info.value.issues, "HAPI explains the conflict in an OperationOutcome"
    current = client.read("Patient", created.resource_id)
    assert current.resource is not None and current.resource["gender"] == "male"

    versions = [client.vread("Patient", created.resource_id, v).resource for v in ("1", "2")]
    assert [v["gender"] for v in versions if v] == ["female", "male"]
    history = list(client.history("Patient", created.resource_id))
    assert [e["resource"]["meta"]["versionId"] for e in history] == ["2", "1"]


def test_conditional_update_creates_then_updates(client: FhirClient) -> None:
    value = key()
    query = {"identifier": f"{SYSTEM}|{value}"}
    first = client.conditional_update("Patient", query, patient(value, gender="female"))
    second = client.conditional_update("Patient", query, patient(value, gender="male"))
    assert (first.status, second.status) == (201, 200)
    assert first.resource_id == second.resource_id and second.version_id == "2"


def test_missing_resource_is_not_found(client: FhirClient) -> None:
    with pytest.raises(FhirNotFoundError) as info:
        client.read("Patient", f"missing-{key()}")
    assert info.value.status == 404


def test_validation_errors_arrive_with_their_issues(client: FhirClient) -> None:
    with pytest.raises(FhirUnprocessableError) as info:
        client.create(patient(key(), gender="banana", birthDate="31/12/1980"))
    err = info.value
    assert err.status == 422
    errors = [i for i in err.issues if i.severity in ("error", "fatal")]
    expressions = [e for i in errors for e in i.expression]
    assert any(e.startswith("Patient.gender") for e in expressions), expressions
    assert any(e.startswith("Patient.birthDate") for e in expressions), expressions
    text = str(err)
    assert "\n" not in text and "HTTP 422" in text and "Patient.gender" in text


def test_search_pages_through_more_than_a_page(client: FhirClient) -> None:
    tag = key()
    entries = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": patient(f"{tag}-{i:02d}", gender="unknown"),
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{tag}-{i:02d}"},
        }
        for i in range(23)
    ]
    for bundle in transaction_bundles(entries, 10):
        assert all(e.status == 201 for e in client.transaction(bundle).entries())

    # One parameter with comma-separated values means OR.
    query = {"identifier": ",".join(f"{SYSTEM}|{tag}-{i:02d}" for i in range(23)), "_count": 5}
    pages = list(client.search_pages("Patient", query))
    assert len(pages) == 5 and all(len(p.matches) <= 5 for p in pages)
    values = sorted(r["identifier"][0]["value"] for p in pages for r in p.matches)
    assert values == [f"{tag}-{i:02d}" for i in range(23)]
    assert len(list(client.search("Patient", query))) == 23


def test_search_with_include(client: FhirClient) -> None:
    tag = key()
    bundle, written = idempotent_transaction(tag)
    client.transaction(bundle)
    pages = list(
        client.search_pages(
            "Observation", {"identifier": f"{SYSTEM}|{written['Observation']}", "_include": "Observation:subject"}
        )
    )
    assert [r["resourceType"] for r in pages[0].matches] == ["Observation"]
    assert [r["identifier"][0]["value"] for r in pages[0].included] == [written["Patient"]]


def test_transaction_answers_per_entry_and_is_idempotent(client: FhirClient) -> None:
    bundle, written = idempotent_transaction(key())
    first = client.transaction(bundle)
    assert [(e.status, e.resource_type) for e in first.entries()] == [
        (201, "Patient"),
        (201, "Practitioner"),
        (201, "Observation"),
    ]
    assert all(e.version_id == "1" and e.resource_id for e in first.entries())
    second = client.transaction(bundle)
    assert [e.status for e in second.entries()] == [200, 200, 200]
    assert [e.resource_id for e in second.entries()] == [e.resource_id for e in first.entries()]
    assert_one_copy_each(client, written)


# -- through the fault proxy -----------------------------------------------------------------


def test_connection_resets_are_survived(
    proxy: FaultProxy, make_client: Callable[..., FhirClient], client: FhirClient
) -> None:
    bundle, written = idempotent_transaction(key())
    proxy.inject(Fault.reset(), times=2)  # the first two requests (metadata included) are cut
    proxy.inject(Fault.reset(forward="before"), when=proxy.is_transaction)  # applied, then cut
    through = make_client(proxy.base_url)
    response = through.transaction(bundle)
    assert all(e.ok for e in response.entries())
    assert [e.action for e in proxy.log].count("reset") == 3
    assert proxy.pending() == 0
    assert_one_copy_each(client, written)


def test_500_and_503_are_retried(proxy: FaultProxy, make_client: Callable[..., FhirClient], client: FhirClient) -> None:
    bundle, written = idempotent_transaction(key())
    proxy.inject(Fault.error(500), when=proxy.is_transaction)
    proxy.inject(Fault.error(503, forward="before"), when=proxy.is_transaction)  # applied, yet "unavailable"
    proxy.inject(Fault.error(502, body=b"<html><title>502 Bad Gateway</title></html>"), when=proxy.is_transaction)
    response = make_client(proxy.base_url).transaction(bundle)
    assert all(e.ok for e in response.entries())
    assert [e.action for e in proxy.log if e.method == "POST"] == ["error", "error", "error", "pass"]
    assert_one_copy_each(client, written)


def test_429_retry_after_is_honoured(
    proxy: FaultProxy, make_client: Callable[..., FhirClient], client: FhirClient, sleeps: SleepRecorder
) -> None:
    bundle, written = idempotent_transaction(key())
    proxy.inject(Fault.error(429, retry_after="1"), when=proxy.is_transaction)
    started = time.monotonic()
    make_client(proxy.base_url).transaction(bundle)
    assert sleeps.sleeps == [1.0]
    assert time.monotonic() - started >= 1.0
    assert_one_copy_each(client, written)


def test_retries_end_when_attempts_run_out(proxy: FaultProxy, make_client: Callable[..., FhirClient]) -> None:
    proxy.inject(Fault.error(503), times=10, when=lambda request: "/Patient/" in request.path)
    with pytest.raises(FhirServerSideError) as info:
        make_client(proxy.base_url, max_attempts=3).read("Patient", "nobody")
    assert info.value.status == 503 and "after 3 attempts" in str(info.value)
    assert [e.action for e in proxy.log if "/Patient/" in e.path] == ["error"] * 3


def test_a_dead_server_is_a_transport_error(make_client: Callable[..., FhirClient], proxy: FaultProxy) -> None:
    proxy.inject(Fault.reset(), times=10)
    with pytest.raises(FhirTransportError) as info:
        make_client(proxy.base_url, max_attempts=3).capabilities()
    assert "after 3 attempts" in str(info.value)


def _warm_up(client: FhirClient) -> None:
    # HAPI validates the first resources of a type slowly; keep that out of timed tests.
    client.transaction(idempotent_transaction(key())[0])


@pytest.mark.parametrize("forward", ["after", "before"])
def test_answers_slower_than_the_read_timeout(
    forward: str, proxy: FaultProxy, make_client: Callable[..., FhirClient], client: FhirClient
) -> None:
    """``before``: HAPI applies the transaction at once, the answer is held past the client's
    timeout, the client sends it again. ``after``: the request is held, the client gives up
    and resends, and the first copy still reaches HAPI later. Either way: one copy each."""
    _warm_up(client)
    bundle, written = idempotent_transaction(key())
    proxy.inject(Fault.delay(6.0, forward=forward), when=proxy.is_transaction)  # type: ignore[arg-type]
    response = make_client(proxy.base_url, read_timeout=3.0).transaction(bundle)
    assert all(e.ok for e in response.entries())
    # The held request is logged once HAPI has answered it (late, or before the hold).
    wait_for(lambda: any(e.action == "delay" for e in proxy.log))
    posts = [(e.action, e.upstream_status) for e in proxy.log if e.method == "POST"]
    assert sorted(posts) == [("delay", 200), ("pass", 200)], posts
    assert_one_copy_each(client, written)


def test_a_slow_read_is_retried_within_the_budget(
    proxy: FaultProxy, make_client: Callable[..., FhirClient], client: FhirClient
) -> None:
    value = key()
    created = client.create(patient(value), if_none_exist={"identifier": f"{SYSTEM}|{value}"})
    assert created.resource_id
    proxy.inject(Fault.delay(5.0, forward="no"), when=lambda request: "/Patient/" in request.path)
    started = time.monotonic()
    read = make_client(proxy.base_url, read_timeout=1.0).read("Patient", created.resource_id)
    assert read.resource_id == created.resource_id
    assert time.monotonic() - started < 5.0


def test_paging_through_the_proxy_survives_a_reset(
    proxy: FaultProxy, make_client: Callable[..., FhirClient], client: FhirClient
) -> None:
    tag = key()
    entries = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": patient(f"{tag}-{i}"),
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{tag}-{i}"},
        }
        for i in range(7)
    ]
    client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    proxy.inject(Fault.reset(), when=lambda request: "_getpages" in request.path)
    query = {"identifier": ",".join(f"{SYSTEM}|{tag}-{i}" for i in range(7)), "_count": 3}
    found = list(make_client(proxy.base_url).search("Patient", query))
    assert len(found) == 7
    pages = [e for e in proxy.log if "_getpages" in e.path]
    assert [e.action for e in pages] == ["reset", "pass", "pass"]  # next links lead through the proxy


# -- the proxy itself, against a tiny local upstream -----------------------------------------


class _UpstreamServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Upstream)
        self.hits: list[str] = []


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Answers GET with JSON naming the path and Host it saw."""

    protocol_version = "HTTP/1.1"
    server: _UpstreamServer

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        body = f'{{"path": "{self.path}", "host": "{self.headers["Host"]}"}}'.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream_server() -> Iterator[_UpstreamServer]:
    server = _UpstreamServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def upstream(upstream_server: _UpstreamServer) -> str:
    return f"http://127.0.0.1:{upstream_server.server_address[1]}/fhir"


def test_proxy_scripting_by_count_predicate_and_skip(
    upstream: str, upstream_server: _UpstreamServer, session: requests.Session
) -> None:
    with FaultProxy(upstream, lifetime=30) as proxy:
        proxy.inject(Fault.error(503, retry_after="2"), times=1, skip=1, when=lambda r: r.path.endswith("/a"))
        proxy.inject(Fault.reset(), when=lambda r: r.path.endswith("/b"))
        assert session.get(f"{proxy.base_url}/a", timeout=5).status_code == 200  # skipped
        refused = session.get(f"{proxy.base_url}/a", timeout=5)
        assert (refused.status_code, refused.headers["Retry-After"]) == (503, "2")
        with pytest.raises(requests.ConnectionError):
            session.get(f"{proxy.base_url}/b", timeout=5)
        ok = session.get(f"{proxy.base_url}/b", timeout=5)
        assert ok.json() == {"path": "/fhir/b", "host": f"127.0.0.1:{proxy.port}"}
        assert [e.action for e in proxy.log] == ["pass", "error", "reset", "pass"]
    assert upstream_server.hits == ["/fhir/a", "/fhir/b"]


def test_proxy_delay_modes(upstream: str, upstream_server: _UpstreamServer, session: requests.Session) -> None:
    with FaultProxy(upstream, lifetime=30) as proxy:
        proxy.inject(Fault.delay(1.0, forward="no"))
        proxy.inject(Fault.delay(1.0, forward="before"))
        with pytest.raises(requests.ReadTimeout):
            session.get(f"{proxy.base_url}/never", timeout=(2, 0.3))
        with pytest.raises(requests.ReadTimeout):
            session.get(f"{proxy.base_url}/applied", timeout=(2, 0.3))
        assert upstream_server.hits == ["/fhir/applied"]  # reached upstream although the client timed out


def test_proxy_is_bounded(upstream: str, session: requests.Session) -> None:
    with pytest.raises(ValueError):
        FaultProxy("http://example.org:80/fhir")
    proxy = FaultProxy(upstream, lifetime=0.5, max_delay=0.2).start()
    proxy.inject(Fault.delay(60.0, forward="no"))
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        session.get(f"{proxy.base_url}/x", timeout=5)
    assert time.monotonic() - started < 2.0  # the delay was capped
    wait_for(lambda: proxy._stopped.is_set(), 5.0)  # and the proxy stopped by itself
    with pytest.raises(requests.ConnectionError):
        session.get(f"{proxy.base_url}/x", timeout=2)
    proxy.stop()
    limited = FaultProxy(upstream, max_requests=2).start()
    try:
        assert session.get(f"{limited.base_url}/1", timeout=5).status_code == 200
        assert session.get(f"{limited.base_url}/2", timeout=5).status_code == 200
        with pytest.raises(requests.ConnectionError):
            session.get(f"{limited.base_url}/3", timeout=5)
    finally:
        limited.stop()
