"""The per-target state (identity map, conflicts, audit trail) on both SQLite homes:
the sync service's outbox file and the push command's state file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ims_fhir.sync.push_state import PushState, default_state_path
from ims_fhir.sync.sqlite import SQLiteOutbox
from ims_fhir.sync.store import AuditEntry, Conflict, FieldChange, Identity, TargetState

SYS = "https://clinic.example.org/ims/patient"


@pytest.fixture(params=["outbox", "push-state"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TargetState]:
    store: SQLiteOutbox | PushState
    store = SQLiteOutbox(tmp_path / "outbox.db") if request.param == "outbox" else PushState(tmp_path / "s.sqlite")
    yield store
    store.close()


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
