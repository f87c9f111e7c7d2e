"""The sync worker's state machine on the scripted transport and a real SQLite outbox.

queued -> sending -> synced | failed (the server refused the record) | queued again with
backoff (the target failed) -> dead after max_attempts; leases of a killed worker are
recovered; a record that only travelled in a part refused for another record is queued
again, never failed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from ims_fhir.client import ClientConfig, FhirClient, RetryPolicy
from ims_fhir.mapping import MappingContext, map_organization
from ims_fhir.records.models import Source
from ims_fhir.sync import SQLiteOutbox, SyncWorker, Target, WorkerOptions, parse_body, take
from ims_fhir.sync.worker import owner_is_dead
from ims_fhir.terminology import default_terminology
from tests.client.scripted import BASE, FakeClock, Reply, connection_refused
from tests.conftest import SOURCE

from .support import RECORDS, Server, has, refusal

T = "hospital"
P1, PR2, A1, T1, T2 = (("patient", "P000001"), ("practitioner", "PR0002"), ("assessment", "A0000001"),
                       ("treatment", "T00000001"), ("treatment", "T00000002"))
CTX = MappingContext(Source(**SOURCE), default_terminology())
OPTIONS = WorkerOptions(batch_records=50, lease_seconds=60, max_attempts=3, backoff_base=10, backoff_cap=100)


class Wall:
    """The worker's wall clock (the outbox's times)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[SQLiteOutbox]:
    box = SQLiteOutbox(tmp_path / "outbox.sqlite")
    yield box
    box.close()


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def worker(outbox: SQLiteOutbox, session: requests.Session, clock: FakeClock, wall: Wall) -> Iterator[SyncWorker]:
    config = ClientConfig(base_url=BASE, retry=RetryPolicy(max_attempts=1, total_budget=30.0))
    target = Target(T, config)
    w = SyncWorker(outbox, [target], map_organization(CTX), OPTIONS, clock=wall, owner="test:1:a",
                   client_factory=lambda t: FhirClient(t.client, session=session, clock=clock.clock()))
    yield w
    w.close()


def post(outbox: SQLiteOutbox, wall: Wall, *keys: tuple[str, str], **changes: Any) -> None:
    records = [{"record_type": k[0], **RECORDS[k], **changes.get(k[1], {})} for k in keys]
    raw, _ = parse_body(b"\n".join(orjson.dumps(r) for r in records) + b"\n")
    intake = take(raw, CTX)
    assert intake.rejected == []
    outbox.put(intake.accepted, [T], now=wall.now)


def state(outbox: SQLiteOutbox, key: tuple[str, str]) -> str:
    status = outbox.status(*key)
    assert status is not None
    (delivery,) = status.deliveries
    return delivery.state


def test_accepted_records_are_synced_with_the_servers_ids_and_versions(
        outbox: SQLiteOutbox, worker: SyncWorker, server: Server, wall: Wall) -> None:
    post(outbox, wall, P1, PR2, A1, T1)
    assert worker.run_once() == 4
    assert {k: state(outbox, k) for k in (P1, PR2, A1, T1)} == dict.fromkeys((P1, PR2, A1, T1), "synced")
    status = outbox.status(*T1)
    assert status is not None
    (delivery,) = status.deliveries
    assert delivery.server_version == "1" and delivery.synced_revision == 1
    assert {r["resourceType"] for r in delivery.resources} == {"Encounter", "Procedure", "Observation", "Consent",
                                                                   "BodyStructure", "AdverseEvent"}
    assert worker.run_once() == 0  # nothing due any more


def test_a_record_the_server_refuses_is_failed_with_its_outcome_and_the_others_go_through(
        outbox: SQLiteOutbox, worker: SyncWorker, server: Server, wall: Wall) -> None:
    post(outbox, wall, P1, PR2, A1, T1, T2)
    server.refuse(lambda b: refusal(422, "processing", "Procedure.status: bad", ["Procedure.status"])
                  if has(b, "Procedure", T2) else None)
    worker.run_once()
    assert {k: state(outbox, k) for k in (P1, PR2, A1, T1, T2)} == {
        P1: "synced", PR2: "synced", A1: "synced", T1: "synced", T2: "failed"}
    status = outbox.status(*T2)
    assert status is not None
    (failed,) = status.deliveries
    assert failed.http_status == 422
    assert failed.outcome == {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "processing", "diagnostics": "Procedure.status: bad",
         "expression": ["Procedure.status"]}]}
    wall.now += 10_000
    assert worker.run_once() == 0  # a refused record is not retried on its own


def test_a_target_that_fails_queues_again_with_backoff_then_dead_by_count_and_age(
        outbox: SQLiteOutbox, worker: SyncWorker, server: Server, wall: Wall) -> None:
    post(outbox, wall, P1)
    server.refuse(lambda b: Reply(503, {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "transient", "diagnostics": "maintenance"}]}))
    assert worker.run_once() == 1
    status = outbox.status(*P1)
    assert status is not None
    (d,) = status.deliveries
    assert (d.state, d.attempts, d.http_status, d.next_attempt_at) == ("queued", 1, 503, wall.now + 10)
    assert worker.run_once() == 0  # not due before its backoff
    wall.now += 10
    assert worker.run_once() == 1
    status = outbox.status(*P1)
    assert status is not None and status.deliveries[0].next_attempt_at == wall.now + 20  # doubled
    wall.now += 20
    worker.run_once()
    # three attempts (max_attempts=3) but 30 s old: an outage that short never kills a record
    assert state(outbox, P1) == "queued"
    wall.now += OPTIONS.dead_after_seconds
    worker.run_once()
    assert state(outbox, P1) == "dead"  # past max_attempts and dead_after_seconds since the first failure
    wall.now += 10_000
    assert worker.run_once() == 0


def test_a_connection_error_is_transient_too(outbox: SQLiteOutbox, worker: SyncWorker, adapter: Any,
                                             wall: Wall) -> None:
    post(outbox, wall, P1)
    adapter.route("POST", BASE, lambda request: connection_refused())
    adapter.route("GET", BASE + "/Patient", lambda request: connection_refused())  # resolving the patient first
    worker.run_once()
    status = outbox.status(*P1)
    assert status is not None
    (d,) = status.deliveries
    assert d.state == "queued" and d.http_status is None and "127.0.0.1" not in (d.error or "-")


def test_a_shared_record_that_only_travelled_with_a_refused_record_is_queued_again_not_failed(
        outbox: SQLiteOutbox, worker: SyncWorker, server: Server, wall: Wall) -> None:
    post(outbox, wall, P1, PR2, T1)  # T1's assessment is not in the outbox: it refers to it by identifier
    server.refuse(lambda b: refusal(422, "processing", "bad") if has(b, "Procedure", T1) else None)
    worker.run_once()
    assert {k: state(outbox, k) for k in (P1, PR2, T1)} == {P1: "queued", PR2: "queued", T1: "failed"}
    status = outbox.status(*P1)
    assert status is not None and "failed for another record" in (status.deliveries[0].error or "")


def test_an_edited_record_is_sent_again_as_its_next_revision(
        outbox: SQLiteOutbox, worker: SyncWorker, server: Server, wall: Wall) -> None:
    post(outbox, wall, P1)
    worker.run_once()
    post(outbox, wall, P1, **{"P000001": {"phone": "+1-604-555-0199"}})
    assert state(outbox, P1) == "queued"
    worker.run_once()
    status = outbox.status(*P1)
    assert status is not None and status.revision == 2 and status.deliveries[0].synced_revision == 2
    assert "+1-604-555-0199" in orjson.dumps(server.transactions[-1]).decode()


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_leases_of_a_killed_worker_on_this_host_are_recovered_at_once(
        outbox: SQLiteOutbox, worker: SyncWorker, server: Server, wall: Wall) -> None:
    post(outbox, wall, P1, PR2)
    dead = f"{socket.gethostname()}:{_dead_pid()}:x"
    assert owner_is_dead(dead) and not owner_is_dead(f"{socket.gethostname()}:{os.getpid()}:y")
    assert not owner_is_dead(f"another-host.example:{_dead_pid()}:z")  # not ours to judge: wait for the lease
    assert len(outbox.claim(T, owner=dead, limit=10, lease_seconds=600, now=wall.now)) == 2
    assert worker.run_once() == 0  # leased
    assert worker.recover() == 2
    assert worker.run_once() == 2
    assert state(outbox, P1) == state(outbox, PR2) == "synced"


def test_a_lease_of_a_live_worker_elsewhere_is_taken_over_only_when_it_expires(
        outbox: SQLiteOutbox, worker: SyncWorker, server: Server, wall: Wall) -> None:
    post(outbox, wall, P1)
    other = "another-host.example:4242:z"
    outbox.claim(T, owner=other, limit=10, lease_seconds=60, now=wall.now)
    assert worker.recover() == 0
    wall.now += 59
    assert worker.run_once() == 0
    wall.now += 2
    assert worker.run_once() == 1 and state(outbox, P1) == "synced"
    status = outbox.status(*P1)
    assert status is not None and status.deliveries[0].attempts == 0  # an expired lease is no attempt
    # the late worker's result no longer counts
    outbox.complete(T, [], owner=other, now=wall.now, max_attempts=3, backoff_base=1, backoff_cap=1, latency=None)
    assert state(outbox, P1) == "synced"


def test_the_worker_needs_the_clinics_organization_to_know_its_identifiers(outbox: SQLiteOutbox) -> None:
    from ims_fhir.errors import UsageError

    with pytest.raises(UsageError, match="organization"):
        SyncWorker(outbox, [], {"resourceType": "Organization", "identifier": []}, OPTIONS)
