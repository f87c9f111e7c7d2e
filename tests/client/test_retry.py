"""Retry policy: what is retried, how long the client waits, and the bounds."""

from __future__ import annotations

from collections.abc import Callable
from email.utils import formatdate

import pytest
import requests

from ims_fhir.client import ClientConfig, FhirClient, RetryPolicy, parse_retry_after
from ims_fhir.errors import (
    FhirClientSideError,
    FhirNotFoundError,
    FhirServerSideError,
    FhirTransportError,
    FhirUnprocessableError,
    UsageError,
)

from .scripted import (
    BASE,
    FakeClock,
    Reply,
    ScriptedAdapter,
    connection_refused,
    connection_reset,
    outcome,
    read_timeout,
)

PATIENT = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1"}}


def test_503_then_success_is_retried_with_jittered_backoff(
    client: FhirClient, adapter: ScriptedAdapter, clock: FakeClock
) -> None:
    adapter.queue(Reply(503), Reply(503), Reply(200, PATIENT))
    response = client.read("Patient", "p1")
    assert response.status == 200 and response.resource_id == "p1"
    assert len(adapter.calls("GET")) == 3
    # full jitter: rand 0.5 * min(cap, base * 2**(n-1)) with base 0.5
    assert clock.sleeps == [0.25, 0.5]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_every_retryable_status_is_retried(client: FhirClient, adapter: ScriptedAdapter, status: int) -> None:
    adapter.queue(Reply(status), Reply(200, PATIENT))
    assert client.read("Patient", "p1").status == 200


def test_retry_after_seconds_is_honoured(client: FhirClient, adapter: ScriptedAdapter, clock: FakeClock) -> None:
    adapter.queue(
        Reply(429, headers={"Retry-After": "7"}), Reply(503, headers={"Retry-After": "2"}), Reply(200, PATIENT)
    )
    client.read("Patient", "p1")
    assert clock.sleeps == [7.0, 2.0]


def test_retry_after_http_date_is_honoured(client: FhirClient, adapter: ScriptedAdapter, clock: FakeClock) -> None:
    when = formatdate(clock.wall + 12, usegmt=True)
    adapter.queue(Reply(503, headers={"Retry-After": when}), Reply(200, PATIENT))
    client.read("Patient", "p1")
    assert clock.sleeps == [pytest.approx(12.0, abs=1.0)]


def test_retry_after_is_capped_by_the_remaining_budget(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, clock: FakeClock
) -> None:
    client = make_client(retry=RetryPolicy(max_attempts=5, total_budget=30.0))
    adapter.queue(Reply(503, headers={"Retry-After": "3600"}), Reply(503, headers={"Retry-After": "3600"}))
    with pytest.raises(FhirServerSideError) as info:
        client.read("Patient", "p1")
    assert clock.sleeps == [30.0]  # one capped wait, one last attempt, then no budget left
    assert info.value.status == 503
    assert len(adapter.calls("GET")) == 2


def test_unreadable_retry_after_falls_back_to_backoff(
    client: FhirClient, adapter: ScriptedAdapter, clock: FakeClock
) -> None:
    adapter.queue(Reply(503, headers={"Retry-After": "soon"}), Reply(200, PATIENT))
    client.read("Patient", "p1")
    assert clock.sleeps == [0.25]


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, FhirClientSideError), (404, FhirNotFoundError), (422, FhirUnprocessableError), (405, FhirClientSideError)],
)
def test_other_4xx_are_not_retried(
    client: FhirClient, adapter: ScriptedAdapter, clock: FakeClock, status: int, error: type[Exception]
) -> None:
    adapter.queue(Reply(status, outcome(("error", "processing", "no", None))))
    with pytest.raises(error) as info:
        client.read("Patient", "p1")
    assert info.value.status == status  # type: ignore[attr-defined]
    assert len(adapter.calls("GET")) == 1
    assert clock.sleeps == []


def test_attempts_are_bounded(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, clock: FakeClock
) -> None:
    client = make_client(retry=RetryPolicy(max_attempts=3, total_budget=1000.0))
    adapter.queue(*[Reply(503, "Service Unavailable", {"Content-Type": "text/plain"}) for _ in range(10)])
    with pytest.raises(FhirServerSideError) as info:
        client.read("Patient", "p1")
    assert len(adapter.calls("GET")) == 3
    assert len(clock.sleeps) == 2
    assert "after 3 attempts" in str(info.value) and "HTTP 503" in str(info.value)


def test_total_budget_is_bounded(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, clock: FakeClock
) -> None:
    client = make_client(retry=RetryPolicy(max_attempts=100, total_budget=20.0, backoff_base=1.0, backoff_cap=4.0))
    # each failing attempt costs 3 s of server time; waits are 0.5 * min(4, 2**(n-1))
    adapter.queue(*[Reply(503, takes=3.0) for _ in range(100)])
    with pytest.raises(FhirServerSideError):
        client.read("Patient", "p1")
    attempts = len(adapter.calls("GET"))
    assert 2 < attempts < 10
    assert sum(clock.sleeps) + 3.0 * (attempts - 1) <= 20.0  # every wait ended within the budget
    assert clock.elapsed <= 20.0 + 3.0  # plus at most the last attempt


def test_connection_errors_become_transport_error_after_retries(
    client: FhirClient, adapter: ScriptedAdapter, clock: FakeClock
) -> None:
    adapter.queue(*[connection_reset() for _ in range(4)])
    with pytest.raises(FhirTransportError) as info:
        client.read("Patient", "p1")
    assert len(adapter.calls("GET")) == 4
    assert len(clock.sleeps) == 3
    message = str(info.value)
    assert "connection reset" in message and "after 4 attempts" in message
    assert "\n" not in message and "HTTPConnectionPool" not in message
    assert info.value.__cause__ is not None  # translated once, with the cause kept


def test_read_timeout_is_retried_for_idempotent_calls(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(read_timeout(), Reply(200, PATIENT))
    assert client.read("Patient", "p1").status == 200


def test_tls_errors_are_not_retried(client: FhirClient, adapter: ScriptedAdapter) -> None:
    import requests

    adapter.queue(requests.exceptions.SSLError("certificate verify failed"))
    with pytest.raises(FhirTransportError, match="TLS error"):
        client.read("Patient", "p1")
    assert len(adapter.calls("GET")) == 1


class TestPlainCreateIsNotResent:
    """A POST without If-None-Exist could create twice: resend only when provably unsent."""

    def test_not_retried_after_read_timeout(self, client: FhirClient, adapter: ScriptedAdapter) -> None:
        adapter.queue(read_timeout(), Reply(201, PATIENT))
        with pytest.raises(FhirTransportError, match="read timeout"):
            client.create({"resourceType": "Patient"})
        assert len(adapter.calls("POST")) == 1

    def test_not_retried_after_503(self, client: FhirClient, adapter: ScriptedAdapter) -> None:
        adapter.queue(Reply(503), Reply(201, PATIENT))
        with pytest.raises(FhirServerSideError):
            client.create({"resourceType": "Patient"})
        assert len(adapter.calls("POST")) == 1

    def test_retried_when_the_connection_was_refused(self, client: FhirClient, adapter: ScriptedAdapter) -> None:
        adapter.queue(connection_refused(), Reply(201, PATIENT))
        assert client.create({"resourceType": "Patient"}).status == 201

    def test_retried_after_429(self, client: FhirClient, adapter: ScriptedAdapter) -> None:
        adapter.queue(Reply(429, headers={"Retry-After": "1"}), Reply(201, PATIENT))
        assert client.create({"resourceType": "Patient"}).status == 201

    def test_conditional_create_is_retried(self, client: FhirClient, adapter: ScriptedAdapter) -> None:
        adapter.queue(read_timeout(), Reply(200, PATIENT))
        client.create({"resourceType": "Patient"}, if_none_exist={"identifier": "s|1"})
        assert len(adapter.calls("POST")) == 2


TRANSACTION = {"resourceType": "Bundle", "type": "transaction", "entry": []}
RESPONSE = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}


def test_transactions_are_retried_by_the_explicit_policy_flag(client: FhirClient, adapter: ScriptedAdapter) -> None:
    assert client.config.retry.retry_transactions is True
    adapter.queue(read_timeout(), Reply(502), Reply(200, RESPONSE))
    assert client.transaction(TRANSACTION).status == 200
    assert len(adapter.calls("POST")) == 3


def test_transaction_retry_can_be_turned_off(make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> None:
    client = make_client(retry=RetryPolicy(retry_transactions=False))
    adapter.queue(read_timeout(), Reply(200, RESPONSE))
    with pytest.raises(FhirTransportError):
        client.transaction(TRANSACTION)
    adapter.queue(read_timeout(), Reply(200, RESPONSE))
    assert client.transaction(TRANSACTION, idempotent=True).status == 200


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (" 0 ", 0.0), ("", None), (None, None), ("-5", None), ("1.5", None), ("tomorrow", None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=0.0) == expected


def test_parse_retry_after_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0, abs=1.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"total_budget": 0}, {"total_budget": float("inf")}, {"retry_statuses": frozenset({404})}],
)
def test_policy_refuses_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_a_429_pauses_every_worker_of_the_target(session: requests.Session, adapter: ScriptedAdapter,
                                                 clock: FakeClock) -> None:
    from ims_fhir.client.throttle import Throttle

    shared = Throttle()
    config = ClientConfig(BASE, retry=RetryPolicy(max_attempts=3), check_capabilities=False)
    first = FhirClient(config, session=session, clock=clock.clock(), throttle=shared)
    second = FhirClient(config, session=session, clock=clock.clock(), throttle=shared)
    adapter.queue(Reply(429, None, {"Retry-After": "7"}))
    shared_sleeps_before = len(clock.sleeps)
    # The first worker is told to wait 7 s; it holds the throttle and sleeps.
    adapter.queue(Reply(200, PATIENT))
    first.read("Patient", "p1")
    assert clock.sleeps[shared_sleeps_before:] == [7.0]
    # A second worker starting inside those 7 s waits for the rest before it sends.
    shared.hold(5, clock.clock())
    adapter.queue(Reply(200, PATIENT))
    second.read("Patient", "p1")
    assert clock.sleeps[-1] == 5.0
