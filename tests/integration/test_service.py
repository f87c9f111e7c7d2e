"""The sync service against the real HAPI FHIR server: API -> outbox -> worker -> HAPI.

Shows: the examples posted through the API end on HAPI exactly once, each record
``synced`` with the server's id and version; posting them again changes nothing; an
edited record becomes version 2; 503s and connection resets while syncing end with one
copy of everything; a resource HAPI's validator rejects (422) ends ``failed`` with HAPI's
OperationOutcome on the API and the dashboard, and succeeds after the record is fixed.

How HAPI is made to reject a record the converter would never get wrong: the target
points at :class:`RejectingProxy`, a fault proxy that rewrites, in a transaction on its
way to HAPI, the ``status`` of any Procedure whose note holds :data:`MARKER` into a code
that is not a Procedure status. HAPI's own validator then refuses it with a real 422 and
its own OperationOutcome. "Fixing the record" is editing the note (or, for the dashboard
test, switching the rewrite off, as when a server-side rule is corrected).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask

from ims_fhir.dev.hapi import DevServer
from ims_fhir.sync import SyncWorker
from ims_fhir_service import create_app
from ims_fhir_service.config import config_from_mapping
from tests.conftest import EXAMPLES, SOURCE, output_resources
from tests.service.conftest import RW_TOKEN, rw, service_settings
from tests.service.support import captured_logs, leaks, personal_data

from .faultproxy import Fault, FaultProxy, ProxyRequest
from .test_push import counts, search

MARKER = "REJECT-AT-HAPI"


class RejectingProxy(FaultProxy):
    """A fault proxy that makes HAPI's validator refuse Procedures noted with MARKER (see above)."""

    rewrite = True

    def _forward(self, request: ProxyRequest) -> tuple[int, str, list[tuple[str, str]], bytes]:
        if self.rewrite and self.is_transaction(request) and MARKER.encode() in request.body:
            bundle = orjson.loads(request.body)
            for entry in bundle.get("entry", []):
                res = entry.get("resource", {})
                if res.get("resourceType") == "Procedure" and MARKER in orjson.dumps(res.get("note", [])).decode():
                    res["status"] = "finished-ish"
            request = replace(request, body=orjson.dumps(bundle))
        return super()._forward(request)


@pytest.fixture(scope="module", autouse=True)
def service_logs() -> Iterator[Path]:
    with captured_logs("test_service") as path:
        yield path


def make_app(tmp_path: Path, base_url: str, **sections: Any) -> Flask:
    app = create_app(config_from_mapping(service_settings(tmp_path, base_url=base_url, **sections), environ={}))
    app.config["TESTING"] = True
    return app


def one_round(app: Flask) -> bool:
    """One worker round in this thread (True when it sent something)."""
    st = app.extensions["ims_fhir"]
    worker = SyncWorker(st.outbox, list(st.config.targets), st.organization, st.config.worker)
    try:
        return worker.run_once()
    finally:
        worker.close()


def drain(app: Flask, *, timeout: float = 240.0) -> SyncWorker:
    """Run worker rounds in this thread until nothing is queued or sending."""
    st = app.extensions["ims_fhir"]
    worker = SyncWorker(st.outbox, list(st.config.targets), st.organization, st.config.worker)
    deadline = time.monotonic() + timeout
    try:
        while st.outbox.pending():
            assert time.monotonic() < deadline, f"queue not drained: {st.outbox.stats().depth}"
            if not worker.run_once():
                time.sleep(0.1)  # something is waiting for its backoff
    finally:
        worker.close()
    return worker


def expected_counts(run_cli: Callable[..., Any], tmp_path: Path, *inputs: Path) -> dict[str, int]:
    out = tmp_path / "expected"
    result = run_cli("convert", *inputs, "--out", out, "--clinic-id", SOURCE["clinic_id"], "--clinic-name",
                     SOURCE["clinic_name"], "--system-base", SOURCE["system_base"])
    assert result.code == 0, result.err
    return {t: len(rs) for t, rs in output_resources(out).items()}


def example_lines() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (EXAMPLES / "records.ndjson").read_bytes().splitlines() if line.strip()]


def ndjson(records: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def states(app: Flask) -> dict[str, int]:
    return {s: n for (t, s), n in app.extensions["ims_fhir"].outbox.stats().depth.items()}


def test_examples_sync_once_repost_changes_nothing_and_edit_makes_version_2(
        run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path, storage_url: str) -> None:
    base = clean_fhir_server.base_url
    app = make_app(tmp_path, base, storage_url=storage_url)
    client = app.test_client()
    expected = expected_counts(run_cli, tmp_path, EXAMPLES / "records.ndjson")
    body = (EXAMPLES / "records.ndjson").read_bytes()

    first = client.post("/records", data=body, headers=rw(), content_type="application/x-ndjson")
    assert first.status_code == 202, first.json
    assert first.json["accepted"] == first.json["queued"] == 26
    drain(app)
    assert states(app) == {"synced": 26}
    assert counts(base) == expected

    lines = example_lines()
    treatment = next(r for r in lines if r["record_type"] == "treatment")
    status = client.get(f"/records/treatment/{treatment['id']}", headers=rw()).json
    (target,) = status["targets"]
    assert target["state"] == "synced" and target["server_version"] == "1" and target["synced_revision"] == 1
    (procedure,) = search(base, "Procedure", identifier=f"{SOURCE['system_base']}/treatment|{treatment['id']}")
    assert procedure["id"] == target["server_id"]
    assert {r["resourceType"] for r in target["resources"]} >= {"Procedure", "Encounter"}

    again = client.post("/records", data=body, headers=rw())
    assert again.status_code == 202 and again.json["unchanged"] == 26 and again.json["queued"] == 0
    assert app.extensions["ims_fhir"].outbox.pending() == 0
    assert counts(base) == expected

    treatment["notes"] = "Edited after the session: relief reported the next day."
    edit = client.post("/records", data=orjson.dumps(treatment), headers=rw())
    assert edit.status_code == 202 and edit.json["records"][0]["revision"] == 2
    assert edit.headers["Location"] == f"/records/treatment/{treatment['id']}"
    drain(app)
    (after,) = search(base, "Procedure", identifier=f"{SOURCE['system_base']}/treatment|{treatment['id']}")
    assert after["id"] == procedure["id"] and after["meta"]["versionId"] == "2"
    (target,) = client.get(f"/records/treatment/{treatment['id']}", headers=rw()).json["targets"]
    assert target["state"] == "synced" and target["synced_revision"] == 2 and target["server_version"] == "2"
    assert counts(base) == expected
    metrics = client.get("/metrics", headers=rw()).get_data(as_text=True)
    assert 'ims_fhir_records_sent_total{target="hospital"} 27' in metrics
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.json

    pulled = client.post("/pull", json={"target": "hospital"}, headers=rw())
    assert pulled.status_code == 200, pulled.json
    back = {(r["record_type"], r["id"]): r for r in pulled.json["records"]}
    assert {(r["record_type"], r["id"]) for r in lines} <= set(back)
    assert back[("treatment", treatment["id"])]["notes"] == treatment["notes"]


def test_faults_while_syncing_end_with_every_record_synced_once(
        run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path, storage_url: str) -> None:
    base = clean_fhir_server.base_url
    expected = expected_counts(run_cli, tmp_path, EXAMPLES / "records.ndjson")
    with FaultProxy(base, lifetime=300) as proxy:
        proxy.inject(Fault.error(503, forward="before"), when=proxy.is_transaction, times=2)
        proxy.inject(Fault.reset(forward="before"), when=proxy.is_transaction, times=1)
        proxy.inject(Fault.reset(), when=proxy.is_transaction, times=1)
        proxy.inject(Fault.error(503, retry_after="1"), when=proxy.is_transaction, times=1)
        # a whole batch beyond the client's retries: the record goes back to the queue with backoff
        proxy.inject(Fault.error(503), when=proxy.is_transaction, times=4, skip=3)
        app = make_app(tmp_path, proxy.base_url, storage_url=storage_url,
                       worker={"batch_records": 8, "bundle_size": 60},
                       targets=[{"name": "hospital", "base_url": proxy.base_url, "timeout": 10, "retry_budget": 10,
                                 "max_attempts": 3}])
        client = app.test_client()
        assert client.post("/records", data=(EXAMPLES / "records.ndjson").read_bytes(), headers=rw()).status_code == 202
        drain(app)
        actions = [e.action for e in proxy.log]
        assert proxy.pending() == 0
    assert {"reset", "error"} <= set(actions)
    assert states(app) == {"synced": 26}
    assert counts(base) == expected
    history = client.get(f"/records/practitioner/{example_lines()[5]['id']}", headers=rw()).json["history"]
    assert history[0]["event"] == "synced"


class Clock:
    """An injected clock: the outbox and the worker see its time, which the test moves on."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_ten_minute_outage_leaves_nothing_dead(run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path,
                                                 storage_url: str) -> None:
    """Ten minutes of resets then 503s (on the injected clock, no sleeping): every transaction
    fails far more than ``max_attempts`` times, yet nothing is ``dead``, and all syncs after."""
    base = clean_fhir_server.base_url
    expected = expected_counts(run_cli, tmp_path, EXAMPLES / "records.ndjson")
    clock = Clock()
    outage_ends = clock.now + 600.0
    with FaultProxy(base, lifetime=300) as proxy:
        def down(request: ProxyRequest) -> bool:
            return proxy.is_transaction(request) and clock.now < outage_ends

        proxy.inject(Fault.reset(), when=lambda r: down(r) and clock.now < outage_ends - 300, times=10_000)
        proxy.inject(Fault.error(503), when=down, times=10_000)
        settings = service_settings(tmp_path, base_url=proxy.base_url, storage_url=storage_url,
                                    worker={"max_attempts": 4, "backoff_base": 5.0, "backoff_cap": 60.0},
                                    targets=[{"name": "hospital", "base_url": proxy.base_url, "timeout": 10,
                                              "retry_budget": 5, "max_attempts": 1}])
        app = create_app(config_from_mapping(settings, environ={}), clock=clock)
        st = app.extensions["ims_fhir"]
        client = app.test_client()
        assert client.post("/records", data=(EXAMPLES / "records.ndjson").read_bytes(), headers=rw()).status_code == 202
        worker = SyncWorker(st.outbox, list(st.config.targets), st.organization, st.config.worker, clock=clock)
        try:
            rounds = 0
            while st.outbox.pending():
                assert rounds < 500, f"not drained: {st.outbox.stats().depth}"
                worker.run_once()
                assert "dead" not in states(app), states(app)
                clock.now += 15.0  # a quarter of a minute between rounds
                rounds += 1
        finally:
            worker.close()
        actions = [e.action for e in proxy.log]
    assert actions.count("reset") >= 4 and actions.count("error") >= 4, actions
    assert states(app) == {"synced": 26}
    assert counts(base) == expected
    # attempts ran far past max_attempts (4) during the outage, and none of them killed a record
    (target,) = client.get(f"/records/patient/{example_lines()[0]['id']}", headers=rw()).json["targets"]
    assert target["attempts"] > 4, target
    st.outbox.close()


def _login(client: Any) -> None:
    assert client.post("/login", data={"token": RW_TOKEN}).status_code == 302


def test_rejected_resource_is_failed_with_hapis_reason_and_a_fixed_record_syncs(
        run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path, storage_url: str) -> None:
    base = clean_fhir_server.base_url
    expected = expected_counts(run_cli, tmp_path, EXAMPLES / "records.ndjson")
    lines = example_lines()
    bad = next(r for r in lines if r["record_type"] == "treatment" and r.get("status", "completed") == "completed")
    bad["notes"] = f"{MARKER}: this note makes the proxy corrupt the Procedure"
    with RejectingProxy(base, lifetime=300) as proxy:
        app = make_app(tmp_path, proxy.base_url, storage_url=storage_url)
        client = app.test_client()
        assert client.post("/records", data=ndjson(lines), headers=rw()).status_code == 202
        drain(app)
        assert states(app) == {"synced": 25, "failed": 1}
        (target,) = client.get(f"/records/treatment/{bad['id']}", headers=rw()).json["targets"]
        assert target["state"] == "failed" and target["http_status"] == 422
        assert any("finished-ish" in (i.get("diagnostics") or "") and i["severity"] == "error"
                   for i in target["outcome"]["issue"]), target["outcome"]
        assert counts(base)["Procedure"] == expected["Procedure"] - 1

        _login(client)
        page = client.get("/").get_data(as_text=True)
        assert f"treatment {bad['id']}" in page and "finished-ish" in page and "HTTP 422" in page

        bad["notes"] = "Corrected note."
        fixed = client.post("/records", data=orjson.dumps(bad), headers=rw())
        assert fixed.status_code == 202 and fixed.json["queued"] == 1
        drain(app)
    assert states(app) == {"synced": 26}
    assert counts(base) == expected
    (target,) = app.test_client().get(f"/records/treatment/{bad['id']}", headers=rw()).json["targets"]
    assert target["state"] == "synced" and target["synced_revision"] == 2


def test_logs_of_this_module_name_no_patient(service_logs: Path) -> None:
    """Runs last in this module: everything logged above (DEBUG, every logger) names nobody."""
    text = service_logs.read_text(encoding="utf-8")
    assert "records posted" in text and "synced" in text  # the capture worked
    assert leaks(text, personal_data(example_lines())) == []
    assert RW_TOKEN not in text
