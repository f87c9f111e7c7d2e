"""The SQLite outbox: claims and leases, ordering, revisions, recovery (no FHIR server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ims_fhir.sync import Incoming, Result, SQLiteOutbox

T = "hospital"


def rec(rtype: str, rid: str, content: str = "v1", waits: tuple[str, str] | None = None) -> Incoming:
    return Incoming(rtype, rid, content, content.encode(), waits)


@pytest.fixture
def outbox(tmp_path: Path) -> SQLiteOutbox:
    box = SQLiteOutbox(tmp_path / "o.sqlite")
    yield box
    box.close()


def done(box: SQLiteOutbox, owner: str, results: list[Result], now: float = 100.0, **kw: float) -> None:
    box.complete(T, results, owner=owner, now=now, max_attempts=int(kw.get("max_attempts", 3)),
                 backoff_base=kw.get("backoff", 10.0), backoff_cap=60.0, latency=None)


def synced(rtype: str, rid: str, revision: int = 1) -> Result:
    return Result(rtype, rid, "synced", revision, resources=[{"resourceType": "Patient", "id": "1", "version": "1"}])


def test_kinds_others_refer_to_go_first_and_a_treatment_waits_for_its_assessment(outbox: SQLiteOutbox) -> None:
    outbox.put([rec("treatment", "T1", waits=("assessment", "A1")), rec("assessment", "A1"), rec("patient", "P1")],
               [T], now=1.0)
    first = outbox.claim(T, owner="w", limit=2, lease_seconds=60, now=2.0)
    assert [(c.record_type, c.record_id) for c in first] == [("patient", "P1"), ("assessment", "A1")]
    # the assessment is still being sent: its treatment is not claimable yet
    assert outbox.claim(T, owner="w2", limit=10, lease_seconds=60, now=3.0) == []
    done(outbox, "w", [synced("patient", "P1"), synced("assessment", "A1")])
    assert [c.record_id for c in outbox.claim(T, owner="w2", limit=10, lease_seconds=60, now=4.0)] == ["T1"]


def test_a_claim_in_the_same_batch_as_its_assessment_is_fine(outbox: SQLiteOutbox) -> None:
    outbox.put([rec("assessment", "A1"), rec("treatment", "T1", waits=("assessment", "A1"))], [T], now=1.0)
    assert [c.record_id for c in outbox.claim(T, owner="w", limit=10, lease_seconds=60, now=2.0)] == ["A1", "T1"]


def test_a_lease_excludes_others_until_it_expires(outbox: SQLiteOutbox) -> None:
    outbox.put([rec("patient", "P1")], [T], now=1.0)
    assert len(outbox.claim(T, owner="a", limit=5, lease_seconds=10, now=2.0)) == 1
    assert outbox.claim(T, owner="b", limit=5, lease_seconds=10, now=5.0) == []
    (again,) = outbox.claim(T, owner="b", limit=5, lease_seconds=10, now=13.0)
    assert again.attempts == 2
    done(outbox, "a", [synced("patient", "P1")])  # the first owner lost its lease: its result is ignored
    assert outbox.status("patient", "P1").deliveries[0].state == "sending"
    done(outbox, "b", [synced("patient", "P1")])
    assert outbox.status("patient", "P1").deliveries[0].state == "synced"


def test_a_record_changed_while_it_is_sent_is_sent_again(outbox: SQLiteOutbox) -> None:
    outbox.put([rec("patient", "P1")], [T], now=1.0)
    (claimed,) = outbox.claim(T, owner="w", limit=5, lease_seconds=60, now=2.0)
    assert outbox.put([rec("patient", "P1", "v2")], [T], now=3.0)[0].revision == 2
    done(outbox, "w", [synced("patient", "P1", claimed.revision)])
    (delivery,) = outbox.status("patient", "P1").deliveries
    assert delivery.state == "queued" and delivery.synced_revision == 1
    (next_claim,) = outbox.claim(T, owner="w", limit=5, lease_seconds=60, now=200.0)
    assert next_claim.revision == 2 and next_claim.group == b"v2"


def test_transient_failures_back_off_then_die_and_a_retry_revives(outbox: SQLiteOutbox) -> None:
    outbox.put([rec("patient", "P1")], [T], now=1.0)
    for attempt, now in ((1, 2.0), (2, 20.0), (3, 60.0)):
        (c,) = outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=now)
        assert c.attempts == attempt
        done(outbox, "w", [Result("patient", "P1", "transient", 1, status=503, error="busy")], now=now)
        if attempt == 1:
            assert outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=now + 5) == []  # backing off
    assert outbox.status("patient", "P1").deliveries[0].state == "dead"
    assert [f.record_id for f in outbox.failures()] == ["P1"]
    assert outbox.retry_state("dead", now=70.0) == 1
    assert outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=70.0)[0].attempts == 1


def test_a_refused_record_fails_at_once_with_the_outcome(outbox: SQLiteOutbox) -> None:
    outbox.put([rec("patient", "P1")], [T], now=1.0)
    outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=2.0)
    oo = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}
    done(outbox, "w", [Result("patient", "P1", "rejected", 1, status=422, error="no", outcome=oo)])
    (d,) = outbox.status("patient", "P1").deliveries
    assert (d.state, d.http_status, d.outcome) == ("failed", 422, oo)
    assert outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=1e6) == []  # not retried on its own
    assert outbox.retry("patient", "P1", now=3.0) == 1


def test_leases_of_a_dead_worker_are_released_at_once(outbox: SQLiteOutbox) -> None:
    outbox.put([rec("patient", "P1"), rec("patient", "P2")], [T], now=1.0)
    outbox.claim(T, owner="host:1:dead", limit=1, lease_seconds=600, now=2.0)
    outbox.claim(T, owner="host:2:alive", limit=1, lease_seconds=600, now=2.0)
    assert outbox.release_abandoned(lambda owner: owner.endswith("dead"), now=3.0) == 1
    assert [c.record_id for c in outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=4.0)] == ["P1"]
    assert [e.detail for e in outbox.history("patient", "P1")][1] == "its worker stopped mid-send"


def test_a_new_target_gets_records_already_stored(outbox: SQLiteOutbox) -> None:
    outbox.put([rec("patient", "P1")], [T], now=1.0)
    (stored,) = outbox.put([rec("patient", "P1")], [T, "lab"], now=2.0)
    assert stored.result == "queued"
    assert outbox.pending("lab") == 1 and outbox.pending(T) == 1
    assert outbox.put([rec("patient", "P1")], [T, "lab"], now=3.0)[0].result == "unchanged"
