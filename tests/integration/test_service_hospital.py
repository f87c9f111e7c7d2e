"""Issue 9 through the sync service, against the real HAPI server.

- A Procedure edited at the hospital, then the same treatment edited at the clinic: the worker
  records a conflict (state ``conflict``, diff via ``GET /conflicts``), the server keeps its
  version; a person sees it on the dashboard in headless Chromium and resolves it (resend);
  the other two resolutions go through the API and do what they say; the audit trail lists it.
  An ``accept`` whose import of the server's version fails leaves the conflict open with the
  reason (an OperationOutcome, never a 500) and the identity map as it was.
- ``ims-fhir serve`` as a subprocess: a hospital Patient known by health number is ``kept``
  (never written), and the identity map, ownership and an open conflict survive a restart
  and a ``kill -9``.
- An update whose answer was lost (the fault proxy resets the connection after HAPI wrote it),
  then the record edited again at the clinic: no false conflict, the new edit is written.

Each runs on both outbox storages (``storage_url``: SQLite, PostgreSQL).
"""

from __future__ import annotations

import copy
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import requests

from ims_fhir.dev.hapi import DevServer
from tests.conftest import SOURCE
from tests.service.conftest import RW_TOKEN, rw, service_settings
from tests.service.live import free_port, start, toml, wait_healthy
from tests.service.support import artifacts

from .faultproxy import Fault, FaultProxy
from .test_service import drain, example_lines, make_app, ndjson, one_round
from .test_service_crash import _states
from .test_service_dashboard import Served, _wait, browser  # noqa: F401 (the browser fixture)

HEADERS = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
TREATMENT_SYS = f"{SOURCE['system_base']}/treatment"


def _fhir() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.headers.update(HEADERS)
    return s


def _procedure(base: str, treatment_id: str) -> dict[str, Any]:
    with _fhir() as s:
        bundle = s.get(f"{base}/Procedure", params={"identifier": f"{TREATMENT_SYS}|{treatment_id}"},
                       headers={"Cache-Control": "no-cache"}, timeout=60).json()
    (entry,) = bundle["entry"]
    return dict(entry["resource"])


def _edit_at_hospital(base: str, treatment_id: str, note: str, **changes: Any) -> dict[str, Any]:
    procedure = _procedure(base, treatment_id)
    with _fhir() as s:
        reply = s.put(f"{base}/Procedure/{procedure['id']}",
                      data=orjson.dumps({**procedure, "note": [{"text": note}], **changes}), timeout=60)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


#: a loaded 2-core machine can take tens of seconds for a Bundle of 200 entries
SLOW_TARGET = [{"name": "hospital", "timeout": 120, "retry_budget": 240, "max_attempts": 4}]
SLOW_WORKER = {"lease_seconds": 400, "batch_records": 50}


def _targets(base: str) -> list[dict[str, Any]]:
    return [{**SLOW_TARGET[0], "base_url": base}]


def _treatments(lines: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [r for r in lines if r["record_type"] == "treatment" and r.get("status", "completed") == "completed"][:n]


def test_conflict_on_the_dashboard_and_the_three_resolutions(browser: Any, clean_fhir_server: DevServer,  # noqa: F811
                                                             tmp_path: Path, storage_url: str) -> None:
    base = clean_fhir_server.base_url
    lines = example_lines()
    app = make_app(tmp_path, base, targets=_targets(base), worker=SLOW_WORKER, storage_url=storage_url)
    client = app.test_client()
    outbox = app.extensions["ims_fhir"].outbox
    shots = artifacts()
    with Served(app) as served:
        assert client.post("/records", data=ndjson(lines), headers=rw()).status_code == 202
        _wait(lambda: outbox.pending() == 0, "the first sync")
        *three, renamed = _treatments(lines, 4)
        for i, t in enumerate(three):
            _edit_at_hospital(base, t["id"], f"Hospital note {i}")
        # the fourth is given another identifier at the hospital: its record cannot be read back
        hospital_id = _procedure(base, renamed["id"])["identifier"]
        _edit_at_hospital(base, renamed["id"], "Hospital note 3",
                          identifier=[{**hospital_id[0], "value": "HOSP-" + renamed["id"]}, *hospital_id[1:]])
        edited = [{**copy.deepcopy(t), "notes": f"Clinic note {i}"} for i, t in enumerate([*three, renamed])]
        assert client.post("/records", data=ndjson(edited), headers=rw()).status_code == 202
        _wait(lambda: outbox.pending() == 0, "the edits")
        for t in [*three, renamed]:
            (delivery,) = outbox.status("treatment", t["id"]).deliveries
            assert delivery.state == "conflict", delivery
        for t in three:
            assert _procedure(base, t["id"])["meta"]["versionId"] == "2"  # the hospital's version stays
        listed = client.get("/conflicts", headers=rw()).json["conflicts"]
        by_record = {c["record_id"]: c for c in listed}
        assert set(by_record) == {t["id"] for t in [*three, renamed]}

        # accept where the server's version cannot be imported: one step, so nothing is resolved
        failed = client.post(f"/conflicts/{by_record[renamed['id']]['id']}/resolve", json={"resolution": "accept"},
                             headers=rw())
        assert failed.status_code == 502 and failed.json["resourceType"] == "OperationOutcome", failed.json
        assert "could not be read back" in failed.json["issue"][0]["diagnostics"]
        still = client.get(f"/conflicts/{by_record[renamed['id']]['id']}", headers=rw()).json
        assert still["state"] == "open" and "accept failed" in still["detail"] and "could not be read back" in still["detail"]
        assert outbox.status("treatment", renamed["id"]).deliveries[0].state == "conflict"
        assert outbox.status("treatment", renamed["id"]).revision == 2  # nothing imported
        (procedure_identity,) = [i for i in outbox.identities("hospital", resource_type="Procedure")
                                 if i.record_id == renamed["id"]]
        assert procedure_identity.version == "1"  # the base of the next If-Match stays the clinic's write
        assert client.post(f"/conflicts/{by_record[renamed['id']]['id']}/resolve", json={"resolution": "dismiss"},
                           headers=rw()).status_code == 200
        first = by_record[three[0]["id"]]
        assert {"path": "note[0].text", "clinic": "Clinic note 0", "server": "Hospital note 0"} in first["diff"]
        assert (first["base_version"], first["server_version"]) == ("1", "2")

        # the dashboard shows it; the person chooses "resend"
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(served.url + "/login")
        page.fill("#token", RW_TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("section#conflicts")
        card = page.locator(f'article.conflict[data-record="treatment/{three[0]["id"]}"]')
        assert card.count() == 1
        text = card.inner_text()
        assert "note[0].text" in text and "Clinic note 0" in text and "Hospital note 0" in text
        assert page.locator('td[data-state="conflict"]').inner_text() == "3"
        assert "kept (server-owned)" in page.locator("table.counts").inner_text().lower()  # CSS upper-cases it
        page.screenshot(path=str(shots / "dashboard-conflict.png"), full_page=True)
        card.locator("button.resolve-resend").click()
        page.wait_for_selector(f'article.conflict[data-record="treatment/{three[0]["id"]}"]', state="detached",
                               timeout=60_000)
        assert "resolved" in page.locator("ul.flash").inner_text()
        page.screenshot(path=str(shots / "dashboard-conflict-resolved.png"), full_page=True)
        resent = _procedure(base, three[0]["id"])
        assert resent["meta"]["versionId"] == "3" and resent["note"] == [{"text": "Clinic note 0"}]
        assert outbox.status("treatment", three[0]["id"]).deliveries[0].state == "synced"

        # accept: the hospital's version becomes the record's new revision
        answer = client.post(f"/conflicts/{by_record[three[1]['id']]['id']}/resolve", json={"resolution": "accept"},
                             headers=rw())
        assert answer.status_code == 200, answer.json
        assert answer.json["record"]["notes"] == "Hospital note 1" and answer.json["revision"] == 3
        _wait(lambda: outbox.pending() == 0, "the accepted revision")
        status = outbox.status("treatment", three[1]["id"])
        assert status.revision == 3 and status.deliveries[0].state == "synced"
        assert _procedure(base, three[1]["id"])["note"] == [{"text": "Hospital note 1"}]

        # dismiss: the hospital's version stays, the clinic's edit is not sent
        answer = client.post(f"/conflicts/{by_record[three[2]['id']]['id']}/resolve", json={"resolution": "dismiss"},
                             headers=rw())
        assert answer.status_code == 200, answer.json
        assert outbox.status("treatment", three[2]["id"]).deliveries[0].state == "synced"
        kept = _procedure(base, three[2]["id"])
        assert kept["meta"]["versionId"] == "2" and kept["note"] == [{"text": "Hospital note 2"}]
        again = client.post(f"/conflicts/{by_record[three[2]['id']]['id']}/resolve", json={"resolution": "resend"},
                            headers=rw())
        assert again.status_code == 409  # resolved once
        assert client.get("/conflicts", headers=rw()).json["conflicts"] == []
        assert len(client.get("/conflicts?state=resolved", headers=rw()).json["conflicts"]) == 4

        audit = client.get(f"/audit?record_type=treatment&record_id={three[0]['id']}", headers=rw()).json["audit"]
        outcomes = [a["outcome"] for a in audit]
        assert outcomes[0] == "override" and "conflict" in outcomes and "created" in outcomes
        assert any(a["transaction"] and a["transaction"].startswith("Provenance/") for a in audit)
        page.goto(served.url + "/ui/audit")
        assert page.locator("tr.audit-entry").count() > 10


def test_serve_keeps_identity_ownership_and_conflicts_across_restart_and_kill_9(
        clean_fhir_server: DevServer, tmp_path: Path, storage_url: str) -> None:
    base = clean_fhir_server.base_url
    lines = example_lines()
    patient = next(r for r in lines if r["record_type"] == "patient" and r.get("identifiers"))
    ident = patient["identifiers"][0]
    with _fhir() as s:
        created = s.post(f"{base}/Patient", data=orjson.dumps({
            "resourceType": "Patient", "identifier": [ident], "name": [{"family": "HospitalName"}]}), timeout=60)
    assert created.status_code == 201
    hospital_id = created.headers["Location"].split("/Patient/")[1].split("/")[0]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = service_settings(tmp_path, base_url=base, server={"port": port, "threads": 2,
                                                                 "max_body_bytes": 4 * 1024 * 1024},
                                targets=_targets(base), worker=SLOW_WORKER, storage_url=storage_url)
    config = tmp_path / "service.toml"
    config.write_text(toml(settings), encoding="utf-8")
    log = artifacts() / "test_service_hospital.log"
    log.write_bytes(b"")
    auth = {"Authorization": f"Bearer {RW_TOKEN}"}

    def post(records: list[dict[str, Any]]) -> None:
        answer = requests.post(f"{url}/records", data=ndjson(records),
                               headers={**auth, "Content-Type": "application/x-ndjson"}, timeout=60)
        assert answer.status_code == 202, answer.text

    def settled(expected: dict[str, int]) -> None:
        deadline = time.monotonic() + 240
        while _states(storage_url) != expected:
            assert time.monotonic() < deadline, f"not settled: {_states(storage_url)} (expected {expected})"
            time.sleep(0.3)

    def kill_9(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    proc = start(config, log)
    try:
        wait_healthy(url, proc)
        post(lines)
        settled({"synced": len(lines) - 1, "kept": 1})
        kill_9(proc)

        proc = start(config, log)
        wait_healthy(url, proc)
        treatment = {**copy.deepcopy(next(r for r in lines if r["record_type"] == "treatment"
                                          and r["patient_id"] == patient["id"])), "notes": "Edited after restart"}
        post([{**patient, "phone": "+1-604-555-0199"}, treatment])
        settled({"synced": len(lines) - 1, "kept": 1})
        procedure = _procedure(base, treatment["id"])
        assert procedure["subject"]["reference"] == f"Patient/{hospital_id}" and procedure["meta"]["versionId"] == "2"
        with _fhir() as s:
            hospital = s.get(f"{base}/Patient/{hospital_id}", timeout=60).json()
        assert hospital["meta"]["versionId"] == "1" and "telecom" not in hospital

        # a conflict, then kill -9: it is still there after the restart
        _edit_at_hospital(base, treatment["id"], "Hospital edit")
        post([{**treatment, "notes": "Clinic edit"}])
        settled({"synced": len(lines) - 2, "kept": 1, "conflict": 1})
        kill_9(proc)
        proc = start(config, log)
        wait_healthy(url, proc)
        (conflict,) = requests.get(f"{url}/conflicts", headers=auth, timeout=30).json()["conflicts"]
        assert conflict["record_id"] == treatment["id"] and conflict["server_version"] == "3"
        assert _procedure(base, treatment["id"])["note"] == [{"text": "Hospital edit"}]
        record = requests.get(f"{url}/records/patient/{patient['id']}", headers=auth, timeout=30).json()
        assert record["targets"][0]["state"] == "kept"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text and RW_TOKEN not in text


def test_an_edit_after_a_lost_answer_is_no_conflict(clean_fhir_server: DevServer, tmp_path: Path,
                                                    storage_url: str) -> None:
    base = clean_fhir_server.base_url
    lines = example_lines()
    with FaultProxy(base, lifetime=300) as proxy:
        # one attempt per send: a reset is the target's failure, the record waits for a later round
        target = {"name": "hospital", "base_url": proxy.base_url, "timeout": 20, "retry_budget": 5,
                  "max_attempts": 1}
        app = make_app(tmp_path, proxy.base_url, storage_url=storage_url, targets=[target],
                       worker={"backoff_base": 0.2, "backoff_cap": 0.5})
        client = app.test_client()
        outbox = app.extensions["ims_fhir"].outbox
        assert client.post("/records", data=ndjson(lines), headers=rw()).status_code == 202
        drain(app)
        (treatment,) = _treatments(lines, 1)
        first = _procedure(base, treatment["id"])
        assert first["meta"]["versionId"] == "1"

        # the edit reaches HAPI, its answer does not
        proxy.inject(Fault.reset(forward="before"), when=proxy.is_transaction, times=1)
        assert client.post("/records", data=ndjson([{**treatment, "notes": "Lost answer"}]),
                           headers=rw()).status_code == 202
        one_round(app)
        assert proxy.pending() == 0 and "reset" in [e.action for e in proxy.log]
        landed = _procedure(base, treatment["id"])
        assert landed["meta"]["versionId"] == "2" and landed["note"] == [{"text": "Lost answer"}]
        assert outbox.status("treatment", treatment["id"]).deliveries[0].state == "queued"

        # edited again before the retry: sent with If-Match on version 1, refused; the server's
        # version 2 is the adapter's own write, so the edit is written on top of it
        assert client.post("/records", data=ndjson([{**treatment, "notes": "Edited again"}]),
                           headers=rw()).status_code == 202
        drain(app)
    assert client.get("/conflicts?state=all", headers=rw()).json["conflicts"] == []
    status = outbox.status("treatment", treatment["id"])
    assert (status.revision, status.deliveries[0].state) == (3, "synced"), status
    final = _procedure(base, treatment["id"])
    assert final["meta"]["versionId"] == "3" and final["note"] == [{"text": "Edited again"}]
    outcomes = [a["outcome"] for a in client.get(f"/audit?record_type=treatment&record_id={treatment['id']}",
                                                 headers=rw()).json["audit"]]
    assert "conflict" not in outcomes
