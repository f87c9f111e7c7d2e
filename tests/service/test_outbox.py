"""The outbox on both storages (SQLite, PostgreSQL): claims and leases, ordering, revisions,
recovery, attempts and dead-lettering, migrations, concurrent workers (no FHIR server)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ims_fhir.sync import Incoming, Outbox, Result, SQLiteOutbox, open_outbox
from ims_fhir.sync.sqlite import MIGRATIONS
from ims_fhir.sync.store import DeliveryStatus

T = "hospital"


def rec(rtype: str, rid: str, content: str = "v1", waits: tuple[str, str] | None = None,
        patient: str | None = None) -> Incoming:
    return Incoming(rtype, rid, content, content.encode(), waits, patient=patient)


@pytest.fixture
def outbox(storage_url: str) -> Iterator[Outbox]:
    box = open_outbox(storage_url)
    yield box
    box.close()


def done(box: Outbox, owner: str, results: list[Result], now: float = 100.0, **kw: float) -> None:
    box.complete(T, results, owner=owner, now=now, max_attempts=int(kw.get("max_attempts", 3)),
                 backoff_base=kw.get("backoff", 10.0), backoff_cap=60.0, latency=None,
                 dead_after=kw.get("dead_after", 3600.0))


def delivery(box: Outbox, rtype: str, rid: str) -> DeliveryStatus:
    status = box.status(rtype, rid)
    assert status is not None
    return status.deliveries[0]


def synced(rtype: str, rid: str, revision: int = 1) -> Result:
    return Result(rtype, rid, "synced", revision, resources=[{"resourceType": "Patient", "id": "1", "version": "1"}])


def test_kinds_others_refer_to_go_first_and_a_treatment_waits_for_its_assessment(outbox: Outbox) -> None:
    outbox.put([rec("treatment", "T1", waits=("assessment", "A1")), rec("assessment", "A1"), rec("patient", "P1")],
               [T], now=1.0)
    first = outbox.claim(T, owner="w", limit=2, lease_seconds=60, now=2.0)
    assert [(c.record_type, c.record_id) for c in first] == [("patient", "P1"), ("assessment", "A1")]
    # the assessment is still being sent: its treatment is not claimable yet
    assert outbox.claim(T, owner="w2", limit=10, lease_seconds=60, now=3.0) == []
    done(outbox, "w", [synced("patient", "P1"), synced("assessment", "A1")])
    assert [c.record_id for c in outbox.claim(T, owner="w2", limit=10, lease_seconds=60, now=4.0)] == ["T1"]


def test_the_stored_group_of_a_record_is_its_latest_revision(outbox: Outbox) -> None:
    """What the intake reads an assessment's diagnoses from (a session posted after it)."""
    assert outbox.record_group("assessment", "A1") is None
    outbox.put([rec("assessment", "A1", "v1")], [T], now=1.0)
    outbox.put([rec("assessment", "A1", "v2"), rec("treatment", "A1", "t")], [T], now=2.0)
    assert outbox.record_group("assessment", "A1") == b"v2"


def test_a_claim_in_the_same_batch_as_its_assessment_is_fine(outbox: Outbox) -> None:
    outbox.put([rec("assessment", "A1"), rec("treatment", "T1", waits=("assessment", "A1"))], [T], now=1.0)
    assert [c.record_id for c in outbox.claim(T, owner="w", limit=10, lease_seconds=60, now=2.0)] == ["A1", "T1"]


def test_a_lease_excludes_others_until_it_expires(outbox: Outbox) -> None:
    outbox.put([rec("patient", "P1")], [T], now=1.0)
    assert len(outbox.claim(T, owner="a", limit=5, lease_seconds=10, now=2.0)) == 1
    assert outbox.claim(T, owner="b", limit=5, lease_seconds=10, now=5.0) == []
    (again,) = outbox.claim(T, owner="b", limit=5, lease_seconds=10, now=13.0)
    assert again.attempts == 0  # a send cut short by an expired lease is no attempt
    done(outbox, "a", [synced("patient", "P1")])  # the first owner lost its lease: its result is ignored
    assert delivery(outbox, "patient", "P1").state == "sending"
    done(outbox, "b", [synced("patient", "P1")])
    assert delivery(outbox, "patient", "P1").state == "synced"


def test_a_record_changed_while_it_is_sent_is_sent_again(outbox: Outbox) -> None:
    outbox.put([rec("patient", "P1")], [T], now=1.0)
    (claimed,) = outbox.claim(T, owner="w", limit=5, lease_seconds=60, now=2.0)
    assert outbox.put([rec("patient", "P1", "v2")], [T], now=3.0)[0].revision == 2
    done(outbox, "w", [synced("patient", "P1", claimed.revision)])
    current = delivery(outbox, "patient", "P1")
    assert current.state == "queued" and current.synced_revision == 1
    (next_claim,) = outbox.claim(T, owner="w", limit=5, lease_seconds=60, now=200.0)
    assert next_claim.revision == 2 and next_claim.group == b"v2"


def test_transient_failures_back_off_and_die_only_after_the_attempts_and_the_age(outbox: Outbox) -> None:
    outbox.put([rec("patient", "P1")], [T], now=1.0)
    busy = [Result("patient", "P1", "transient", 1, status=503, error="busy")]
    for attempt, now in ((1, 2.0), (2, 20.0), (3, 60.0), (4, 200.0)):
        (c,) = outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=now)
        assert c.attempts == attempt - 1
        done(outbox, "w", busy, now=now, dead_after=300.0)
        if attempt == 1:
            assert outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=now + 5) == []  # backing off
    # past max_attempts (3) but not 300 s since the first failure (at 2.0): still queued
    d = delivery(outbox, "patient", "P1")
    assert (d.state, d.attempts) == ("queued", 4)
    outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=400.0)
    done(outbox, "w", busy, now=400.0, dead_after=300.0)
    assert delivery(outbox, "patient", "P1").state == "dead"
    assert [f.record_id for f in outbox.failures()] == ["P1"]
    assert outbox.retry_state("dead", now=410.0) == 1
    assert outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=410.0)[0].attempts == 0


def test_a_success_ends_the_failure_streak(outbox: Outbox) -> None:
    outbox.put([rec("patient", "P1")], [T], now=1.0)
    outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=2.0)
    done(outbox, "w", [Result("patient", "P1", "transient", 1, error="reset")], now=2.0, dead_after=100.0)
    outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=50.0)
    done(outbox, "w", [synced("patient", "P1")], now=50.0)
    outbox.put([rec("patient", "P1", "v2")], [T], now=500.0)
    outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=501.0)
    done(outbox, "w", [Result("patient", "P1", "transient", 2, error="reset")], now=501.0, dead_after=100.0,
         max_attempts=1)
    assert delivery(outbox, "patient", "P1").state == "queued"  # a new streak began at 501


def test_one_patients_records_go_in_order_whoever_claims_them(outbox: Outbox) -> None:
    outbox.put([rec("treatment", "T1", patient="P1"), rec("treatment", "T2", patient="P1"),
                rec("treatment", "T3", patient="P2"), rec("practitioner", "D1")], [T], now=1.0)
    assert [c.record_id for c in outbox.claim(T, owner="a", limit=1, lease_seconds=60, now=2.0)] == ["D1"]
    assert [c.record_id for c in outbox.claim(T, owner="a", limit=1, lease_seconds=60, now=2.0)] == ["T1"]
    # T2 waits while T1 (same patient) is being sent: b gets P2's record only
    assert [c.record_id for c in outbox.claim(T, owner="b", limit=5, lease_seconds=60, now=3.0)] == ["T3"]
    assert outbox.claim(T, owner="b", limit=5, lease_seconds=60, now=3.0) == []
    done(outbox, "a", [synced("treatment", "T1")], now=4.0)
    assert [c.record_id for c in outbox.claim(T, owner="b", limit=5, lease_seconds=60, now=5.0)] == ["T2"]


def test_a_patients_record_waits_for_an_earlier_one_in_backoff_or_changed_later(outbox: Outbox) -> None:
    outbox.put([rec("treatment", "T1", patient="P1"), rec("treatment", "T2", patient="P1")], [T], now=1.0)
    (t1,) = outbox.claim(T, owner="a", limit=1, lease_seconds=60, now=2.0)
    done(outbox, "a", [Result("treatment", "T1", "transient", 1, error="reset")], now=3.0)
    assert outbox.claim(T, owner="b", limit=5, lease_seconds=60, now=4.0) == []  # T1 backs off, T2 waits
    assert [c.record_id for c in outbox.claim(T, owner="b", limit=5, lease_seconds=60, now=100.0)] == ["T1", "T2"]
    done(outbox, "b", [synced("treatment", "T1"), synced("treatment", "T2")], now=101.0)
    # edits go in the order they were posted: T2 (posted first) before T1
    outbox.put([rec("treatment", "T2", "v2", patient="P1")], [T], now=110.0)
    outbox.put([rec("treatment", "T1", "v2", patient="P1")], [T], now=111.0)
    assert [c.record_id for c in outbox.claim(T, owner="a", limit=1, lease_seconds=60, now=112.0)] == ["T2"]
    assert outbox.claim(T, owner="b", limit=5, lease_seconds=60, now=112.0) == []


def test_an_expired_lease_is_taken_over_without_counting_an_attempt(outbox: Outbox) -> None:
    outbox.put([rec("treatment", "T1", patient="P1"), rec("treatment", "T2", patient="P1")], [T], now=1.0)
    assert len(outbox.claim(T, owner="crashed", limit=1, lease_seconds=10, now=2.0)) == 1
    assert outbox.claim(T, owner="b", limit=5, lease_seconds=10, now=5.0) == []  # T2 waits for T1
    (t1,) = outbox.claim(T, owner="b", limit=1, lease_seconds=10, now=13.0)
    assert (t1.record_id, t1.attempts) == ("T1", 0)
    done(outbox, "b", [synced("treatment", "T1")], now=14.0)
    assert delivery(outbox, "treatment", "T1").attempts == 0


def test_workers_in_threads_share_the_queue_once_each_and_in_patient_order(storage_url: str) -> None:
    boxes = [open_outbox(storage_url) for _ in range(4)]
    records = [rec("treatment", f"T{p:02d}-{i}", patient=f"P{p:02d}") for i in range(6) for p in range(15)]
    boxes[0].put(records, [T], now=1.0)
    log: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(box: Outbox, name: str) -> None:
        try:
            idle = 0
            while idle < 30:
                got = box.claim(T, owner=name, limit=7, lease_seconds=600, now=10.0)
                if not got:
                    idle += 1
                    threading.Event().wait(0.01)
                    continue
                idle = 0
                with lock:
                    log.extend(c.record_id for c in got)
                box.complete(T, [synced("treatment", c.record_id) for c in got], owner=name, now=11.0,
                             max_attempts=3, backoff_base=1, backoff_cap=1, latency=None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(b, f"w{i}")) for i, b in enumerate(boxes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for b in boxes:
        b.close()
    assert not errors, errors
    assert sorted(log) == sorted(r.record_id for r in records)  # each once
    for p in range(15):
        mine = [rid for rid in log if rid.startswith(f"T{p:02d}-")]
        assert mine == [f"T{p:02d}-{i}" for i in range(6)], mine  # claimed in the order they were posted


def test_schema_version_and_an_outbox_of_the_unversioned_schema_is_migrated(tmp_path: Path,
                                                                             storage_url: str) -> None:
    box = open_outbox(storage_url)
    assert box.schema_version() >= 1  # type: ignore[attr-defined]
    box.close()
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:  # what a version before schema_version wrote
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("INSERT INTO record VALUES ('patient','P1',1,'h',x'00',NULL,NULL,1,1)")
        db.execute("INSERT INTO delivery (target, record_type, record_id, rank, seq, state, next_attempt_at) "
                   "VALUES ('hospital','patient','P1',0,1,'queued',1)")
    migrated = SQLiteOutbox(old)
    try:
        assert migrated.schema_version() == len(MIGRATIONS)
        (c,) = migrated.claim(T, owner="w", limit=5, lease_seconds=5, now=2.0)
        assert c.record_id == "P1"
    finally:
        migrated.close()
    again = SQLiteOutbox(old)  # opening again applies nothing twice
    assert again.schema_version() == len(MIGRATIONS)
    again.close()


def test_a_refused_record_fails_at_once_with_the_outcome(outbox: Outbox) -> None:
    outbox.put([rec("patient", "P1")], [T], now=1.0)
    outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=2.0)
    oo = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]}
    done(outbox, "w", [Result("patient", "P1", "rejected", 1, status=422, error="no", outcome=oo)])
    d = delivery(outbox, "patient", "P1")
    assert (d.state, d.http_status, d.outcome) == ("failed", 422, oo)
    assert outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=1e6) == []  # not retried on its own
    assert outbox.retry("patient", "P1", now=3.0) == 1


def test_leases_of_a_dead_worker_are_released_at_once(outbox: Outbox) -> None:
    outbox.put([rec("patient", "P1"), rec("patient", "P2")], [T], now=1.0)
    outbox.claim(T, owner="host:1:dead", limit=1, lease_seconds=600, now=2.0)
    outbox.claim(T, owner="host:2:alive", limit=1, lease_seconds=600, now=2.0)
    assert outbox.release_abandoned(lambda owner: owner.endswith("dead"), now=3.0) == 1
    assert [c.record_id for c in outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=4.0)] == ["P1"]
    assert [e.detail for e in outbox.history("patient", "P1")][1] == "its worker stopped mid-send"


def test_a_new_target_gets_records_already_stored(outbox: Outbox) -> None:
    outbox.put([rec("patient", "P1")], [T], now=1.0)
    (stored,) = outbox.put([rec("patient", "P1")], [T, "lab"], now=2.0)
    assert stored.result == "queued"
    assert outbox.pending("lab") == 1 and outbox.pending(T) == 1
    assert outbox.put([rec("patient", "P1")], [T, "lab"], now=3.0)[0].result == "unchanged"


def test_a_conflict_is_retried_and_dead_after_the_attempts_whatever_its_age(outbox: Outbox) -> None:
    outbox.put([rec("patient", "P1")], [T], now=1.0)
    clash = [Result("patient", "P1", "conflict", 1, status=409, error="concurrent write")]
    for now in (2.0, 100.0):
        outbox.claim(T, owner="w", limit=5, lease_seconds=5, now=now)
        done(outbox, "w", clash, now=now, max_attempts=2, dead_after=1e9)
        if now == 2.0:
            assert delivery(outbox, "patient", "P1").state == "queued"  # retried, unlike a refusal
    d = delivery(outbox, "patient", "P1")
    assert (d.state, d.attempts, d.http_status) == ("dead", 2, 409)


def test_expired_leases_and_queued_deliveries_are_claimed_together_in_arrival_order(outbox: Outbox) -> None:
    outbox.put([rec("treatment", "T1", patient="P1")], [T], now=1.0)
    outbox.put([rec("treatment", "T2", patient="P2"), rec("treatment", "T3", patient="P3")], [T], now=2.0)
    assert [c.record_id for c in outbox.claim(T, owner="crashed", limit=1, lease_seconds=10, now=3.0)] == ["T1"]
    assert [c.record_id for c in outbox.claim(T, owner="b", limit=2, lease_seconds=10, now=20.0)] == ["T1", "T2"]
    assert [c.record_id for c in outbox.claim(T, owner="c", limit=5, lease_seconds=10, now=21.0)] == ["T3"]


def test_a_claim_reads_the_due_deliveries_in_index_order_without_sorting_the_queue(outbox: Outbox) -> None:
    """A claim's cost does not grow with the queue: neither storage sorts the queued deliveries
    (a query that did sorted every queued row with its record's body at every claim)."""
    from ims_fhir.sync.sql import CLAIM_DUE, CLAIM_EXPIRED

    outbox.put([rec("treatment", f"T{i}", patient=f"P{i % 7}") for i in range(300)], [T], now=1.0)
    box: Any = outbox  # the storage's own connection and SQL, as its claim uses them
    for query in (CLAIM_DUE, CLAIM_EXPIRED):
        sql = box._q(query + box.lock_clause)
        with box._tx() as db:
            if box.claim_prelude:
                db.execute(box.claim_prelude)
            if isinstance(outbox, SQLiteOutbox):
                plan = " ".join(str(row[-1]) for row in db.execute("EXPLAIN QUERY PLAN " + sql, (T, 2.0, 40)))
                assert "delivery_due" in plan and "TEMP B-TREE" not in plan, plan
            else:  # a table this new has no statistics: the planner would sort if it were let
                plan = " ".join(row[0] for row in db.execute("EXPLAIN " + sql, (T, 2.0, 40)))
                assert "delivery_due" in plan and "Sort" not in plan, plan


def test_pending_counts_up_to_at_most_when_asked(outbox: Outbox) -> None:
    outbox.put([rec("patient", f"P{i}") for i in range(7)], [T], now=1.0)
    assert outbox.pending(T) == 7 and outbox.pending() == 7
    assert outbox.pending(T, at_most=3) == 3 and outbox.pending(T, at_most=50) == 7
    assert outbox.pending("elsewhere", at_most=3) == 0


def test_shared_entries_are_read_at_once_and_the_latest_wins(outbox: Outbox) -> None:
    p1 = Incoming("patient", "P1", "h1", b"g1", shared={"pat-1": b"entry-1"}, patient="P1")
    p2 = Incoming("patient", "P2", "h2", b"g2", shared={"pat-2": b"entry-2", "doc-1": b"entry-d"}, patient="P2")
    outbox.put([p1, p2], [T], now=1.0)
    outbox.put([Incoming("patient", "P1", "h1b", b"g1b", shared={"pat-1": b"entry-1b"}, patient="P1")], [T], now=2.0)
    wanted = ["pat-1", "doc-1", "unknown", "pat-1"] + [f"many-{i}" for i in range(900)]  # past one statement's ids
    assert outbox.shared_entries(iter(wanted)) == {"pat-1": b"entry-1b", "doc-1": b"entry-d"}
    assert outbox.shared_entries([]) == {}


def test_records_stored_part_by_part_are_one_transaction(outbox: Outbox) -> None:
    """Intake hands records over as it converts them (PostgreSQL writes each part at once)."""
    with outbox.storing([T], now=1.0) as batch:
        batch.add([rec("patient", "P1"), rec("patient", "P2")])
        batch.add([])
        batch.add([rec("patient", "P1", "v2"), rec("patient", "P3")])  # P1 again, changed, in a later part
    assert [(s.record_id, s.result, s.revision) for s in batch.stored] == [
        ("P1", "queued", 1), ("P2", "queued", 1), ("P1", "queued", 2), ("P3", "queued", 1)]
    assert outbox.record_group("patient", "P1") == b"v2" and outbox.pending(T) == 3
    with pytest.raises(RuntimeError), outbox.storing([T], now=2.0) as failed:
        failed.add([rec("patient", "P4")])
        raise RuntimeError("the request failed after its first part")
    assert outbox.record_group("patient", "P4") is None and outbox.pending(T) == 3  # nothing of it stayed


def test_two_intakes_of_the_same_new_records_at_once_store_them_once(storage_url: str) -> None:
    boxes = [open_outbox(storage_url) for _ in range(2)]
    try:
        first = boxes[0].storing([T], now=1.0)
        a = first.__enter__()
        a.add([rec("patient", "P1"), rec("patient", "P2")])  # written, not committed
        results: list[Any] = []

        def second() -> None:
            with boxes[1].storing([T], now=2.0) as b:
                b.add([rec("patient", "P2"), rec("patient", "P3")])
            results.extend(b.stored)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)  # waits for the first intake's P2 (PostgreSQL: row lock; SQLite: the write lock)
        first.__exit__(None, None, None)
        thread.join(30)
        assert not thread.is_alive()
        assert [s.record_id for s in results] == ["P2", "P3"] and results[1].result == "queued"
        # P2 is queued by one intake and unchanged for the other (which one: the storage's locking decides)
        assert sorted(s.result for s in [*a.stored, *results] if s.record_id == "P2") == ["queued", "unchanged"]
        assert boxes[0].pending(T) == 3 and boxes[0].status("patient", "P2").revision == 1  # type: ignore[union-attr]
    finally:
        for box in boxes:
            box.close()
