"""The per-target state (identity map, conflicts, audit trail) in each of its homes: the sync
service's outbox (SQLite file and PostgreSQL) and the push command's state file."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ims_fhir.sync import open_outbox
from ims_fhir.sync.push_state import PushState, default_state_path
from ims_fhir.sync.sqlite import TARGET_STATE_SCHEMA, SQLiteOutbox
from ims_fhir.sync.store import AuditEntry, Conflict, FieldChange, Identity, TargetState

SYS = "https://clinic.example.org/ims/patient"


@pytest.fixture(params=["outbox", "postgresql", "push-state"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TargetState]:
    store: Any
    if request.param == "outbox":
        store = SQLiteOutbox(tmp_path / "outbox.db")
    elif request.param == "postgresql":
        store = open_outbox(str(request.getfixturevalue("postgres_url")))
    else:
        store = PushState(tmp_path / "s.sqlite")
    yield store
    store.close()


@pytest.fixture
def shared(storage_url: str) -> Iterator[Callable[[], TargetState]]:
    """Outboxes on one storage (SQLite file, PostgreSQL database), one per worker."""
    opened: list[Any] = []

    def one() -> TargetState:
        opened.append(open_outbox(storage_url))
        return opened[-1]  # type: ignore[no-any-return]

    yield one
    for box in opened:
        box.close()


def _identity(value: str, **kw: object) -> Identity:
    base: dict[str, object] = {"target": "hospital", "resource_type": "Patient", "system": SYS, "value": value,
                               "server_id": f"srv-{value}", "version": "1", "owner": "clinic"}
    return Identity(**{**base, **kw})  # type: ignore[arg-type]


def test_identity_map_is_per_target_and_business_identifier(state: TargetState) -> None:
    state.put_identities([_identity("P1", content_hash="h1", record_type="patient", record_id="P1"),
                          _identity("P2", owner="server"),
                          _identity("P1", target="other", server_id="x9")], now=10.0)
    got = state.identity("hospital", "Patient", SYS, "P1")
    assert got is not None
    assert (got.server_id, got.version, got.owner, got.content_hash) == ("srv-P1", "1", "clinic", "h1")
    assert state.identity("other", "Patient", SYS, "P1").server_id == "x9"  # type: ignore[union-attr]
    assert state.identity("hospital", "Practitioner", SYS, "P1") is None
    # a later write moves the version and keeps what it does not say
    state.put_identities([_identity("P1", version="2")], now=11.0)
    again = state.identity("hospital", "Patient", SYS, "P1")
    assert again is not None and (again.version, again.content_hash, again.record_id) == ("2", "h1", "P1")
    assert [i.value for i in state.identities("hospital", owner="server")] == ["P2"]
    assert state.forget_identities("hospital") == 2
    assert state.identities("hospital") == [] and state.identities("other")


def test_identities_of_many_keys_are_read_at_once_per_target(state: TargetState) -> None:
    state.put_identities([_identity(f"P{i}") for i in range(450)] + [_identity("P1", target="other", server_id="x")],
                         now=10.0)
    keys = [("Patient", SYS, f"P{i}") for i in range(0, 900, 2)] + [("Practitioner", SYS, "P2"), ("Patient", SYS, "P2")]
    got = state.identities_of("hospital", keys)
    assert sorted(got) == sorted({("Patient", SYS, f"P{i}") for i in range(0, 450, 2)})  # 225, past one statement's 400
    assert got[("Patient", SYS, "P2")].server_id == "srv-P2"
    assert state.identities_of("other", keys) == {} and state.identities_of("hospital", []) == {}


def test_an_unknown_owner_is_refused(state: TargetState) -> None:
    with pytest.raises(ValueError, match="owner"):
        state.put_identities([_identity("P1", owner="hospital")], now=1.0)


def _conflict(**kw: object) -> Conflict:
    base: dict[str, object] = {
        "id": 0, "target": "hospital", "resource_type": "Procedure", "server_id": "pr1", "record_type": "treatment",
        "record_id": "T1", "base_version": "1", "server_version": "2",
        "clinic_resource": {"resourceType": "Procedure", "status": "completed"},
        "server_resource": {"resourceType": "Procedure", "status": "stopped"},
        "diff": [FieldChange("status", "completed", "stopped")], "state": "open", "resolution": None,
        "detected_at": 0.0}
    return Conflict(**{**base, **kw})  # type: ignore[arg-type]


def test_conflicts_open_once_per_resource_and_resolve_once(state: TargetState) -> None:
    first = state.open_conflict(_conflict(), now=5.0)
    again = state.open_conflict(_conflict(server_version="3"), now=6.0)
    assert first == again  # still one open conflict for that resource, with the newest server version
    [open_] = state.conflicts()
    assert (open_.server_version, open_.detected_at) == ("3", 6.0)
    assert open_.diff == [FieldChange("status", "completed", "stopped")]
    assert open_.as_dict()["diff"] == [{"path": "status", "clinic": "completed", "server": "stopped"}]
    with pytest.raises(ValueError, match="resolution"):
        state.resolve_conflict(first, "ignore", now=7.0)
    assert state.resolve_conflict(first, "dismiss", now=7.0, detail="by test")
    assert not state.resolve_conflict(first, "resend", now=8.0)  # resolved once
    got = state.conflict(first)
    assert got is not None
    assert (got.state, got.resolution, got.resolved_at, got.detail) == ("resolved", "dismiss", 7.0, "by test")
    assert state.conflicts() == [] and len(state.conflicts(state=None)) == 1
    # a new conflict on the same resource after the resolution is a new one
    assert state.open_conflict(_conflict(), now=9.0) != first


def test_audit_trail_newest_first_and_filtered(state: TargetState) -> None:
    state.add_audit([
        AuditEntry(at=1.0, target="hospital", resource_type="Patient", outcome="created", server_id="p1",
                   version="1", record_type="patient", record_id="P1", transaction="prov-1"),
        AuditEntry(at=2.0, target="hospital", resource_type="Patient", outcome="kept (server-owned)",
                   server_id="p2", record_type="patient", record_id="P2"),
        AuditEntry(at=3.0, target="other", resource_type="Patient", outcome="updated", server_id="p1", version="2",
                   record_type="patient", record_id="P1"),
    ])
    assert [e.at for e in state.audit()] == [3.0, 2.0, 1.0]
    assert [e.outcome for e in state.audit(target="hospital")] == ["kept (server-owned)", "created"]
    assert [e.target for e in state.audit(record=("patient", "P1"))] == ["other", "hospital"]
    assert state.audit(server_id="p2")[0].as_dict()["outcome"] == "kept (server-owned)"
    assert state.audit(limit=1)[0].seq is not None


def test_push_state_survives_reopening_and_is_safe_to_delete(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.sqlite"
    with PushState(path) as state:
        state.put_identities([_identity("P1")], now=1.0)
    with PushState(path) as state:
        assert state.identity("hospital", "Patient", SYS, "P1") is not None
    path.unlink()
    with PushState(path) as state:
        assert state.identities("hospital") == []


def test_default_state_path_follows_xdg(tmp_path: Path) -> None:
    assert default_state_path({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "ims-fhir" / "push-state.sqlite"
    home = default_state_path({"HOME": "/home/clinic"})
    assert home == Path("/home/clinic/.local/state/ims-fhir/push-state.sqlite")
    # a relative XDG_STATE_HOME is invalid per the XDG spec and ignored
    relative = default_state_path({"XDG_STATE_HOME": "rel", "HOME": "/h"})
    assert relative == Path("/h/.local/state/ims-fhir/push-state.sqlite")


def test_a_version_never_goes_back_and_an_in_flight_write_is_kept_until_answered(state: TargetState) -> None:
    state.put_identities([_identity("P1", version="3", content_hash="h3")], now=1.0)
    # a worker that read version 2 before another one wrote version 3 puts it late: no lost update
    state.put_identities([_identity("P1", version="2", content_hash="h2")], now=2.0)
    got = state.identity("hospital", "Patient", SYS, "P1")
    assert got is not None and (got.version, got.content_hash) == ("3", "h3")
    state.put_identities([_identity("P1", version="10")], now=3.0)  # numbers, not text: 10 > 3
    assert state.identity("hospital", "Patient", SYS, "P1").version == "10"  # type: ignore[union-attr]
    # another server id (the resource was created again) or a version that is no number: taken as it is
    state.put_identities([_identity("P1", server_id="new", version="1")], now=4.0)
    assert state.identity("hospital", "Patient", SYS, "P1").version == "1"  # type: ignore[union-attr]
    state.put_identities([_identity("P1", server_id="new", version="abc")], now=5.0)
    assert state.identity("hospital", "Patient", SYS, "P1").version == "abc"  # type: ignore[union-attr]

    sent = {"resource": {"resourceType": "Patient", "id": "new", "gender": "male"}, "hash": "h9"}
    later = {"resource": {"resourceType": "Patient", "id": "new", "gender": "female"}, "hash": "h10"}
    state.set_pending("hospital", [("Patient", SYS, "P1", sent)])
    state.set_pending("hospital", [("Patient", SYS, "P1", later), ("Patient", SYS, "unknown", sent)])
    state.set_pending("hospital", [("Patient", SYS, "P1", later)])  # the same write again: kept once
    assert state.identity("hospital", "Patient", SYS, "P1").pending == [sent, later]  # type: ignore[union-attr]
    assert state.identity("hospital", "Patient", SYS, "unknown") is None
    state.put_identities([_identity("P1", server_id="new", version="2")], now=6.0)  # its answer came
    assert state.identity("hospital", "Patient", SYS, "P1").pending is None  # type: ignore[union-attr]


def test_an_open_conflict_keeps_the_reason_its_resolution_failed(state: TargetState) -> None:
    cid = state.open_conflict(_conflict(), now=1.0)
    assert state.note_conflict(cid, "accept failed: the server's version is not a valid record")
    got = state.conflict(cid)
    assert got is not None and got.state == "open" and got.detail is not None and "accept failed" in got.detail
    assert state.resolve_conflict(cid, "dismiss", now=2.0)
    assert not state.note_conflict(cid, "too late")


def test_workers_meeting_the_same_conflict_and_identities_write_one_row_each(
        shared: Callable[[], TargetState]) -> None:
    boxes = [shared() for _ in range(4)]
    ids: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(boxes))

    def work(box: TargetState, n: int) -> None:
        try:
            start.wait(timeout=30)
            for round_ in range(20):
                ids.append(box.open_conflict(_conflict(server_version=str(round_)), now=float(round_)))
                box.put_identities([_identity(f"P{k}", version=str(round_ * 4 + n)) for k in range(5)],
                                   now=float(round_))
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(box, n)) for n, box in enumerate(boxes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(set(ids)) == 1 and len(boxes[0].conflicts()) == 1
    # every identity ends at the highest version any worker wrote (19 * 4 + 3), none went back
    assert {i.version for i in boxes[0].identities("hospital")} == {"79"}


def test_a_push_state_file_of_an_earlier_version_is_brought_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(TARGET_STATE_SCHEMA)
        db.execute("INSERT INTO identity (target, resource_type, system, value, server_id, version, owner, "
                   "updated_at) VALUES ('hospital', 'Patient', ?, 'P1', 'srv-P1', '4', 'clinic', 0)", (SYS,))
    db.close()
    with PushState(path) as state:
        state.put_identities([_identity("P1", version="5")], now=1.0)
        state.set_pending("hospital", [("Patient", SYS, "P1", {"resource": {}, "hash": "h"})])
        got = state.identity("hospital", "Patient", SYS, "P1")
        assert got is not None and got.version == "5" and got.pending == [{"resource": {}, "hash": "h"}]
