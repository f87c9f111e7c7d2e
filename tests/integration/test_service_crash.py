"""``kill -9`` of the service's processes while they send loses nothing and duplicates nothing.

1. ``ims-fhir serve`` (waitress + worker, as in production) on each storage (SQLite,
   PostgreSQL), on a synthetic export: killed with SIGKILL while deliveries are ``sending``
   (claimed, transaction in flight), then started again. HAPI must end with exactly the
   resources of the records (one copy each: the re-send is safe because every write is
   conditional), and the ledger must say ``synced`` for every record.
2. PostgreSQL with ``serve`` (no worker) and three ``ims-fhir worker`` processes: one worker
   is killed mid-send, ``serve`` is killed while a POST is in flight, while successive
   edits of treatments keep arriving. Every record ends on HAPI once, each edited record in
   its last version, the server's history of each never goes back to an older edit, and the
   treatments of each patient reached the server in the order they were posted.

The logs of every run name no patient.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import requests

from ims_fhir.dev.hapi import DevServer
from ims_fhir.dev.synthetic import generate
from tests.conftest import SOURCE
from tests.service.conftest import RW_TOKEN, service_settings
from tests.service.live import free_port, start, stop, toml, wait_healthy
from tests.service.support import artifacts, leaks, personal_data

from .test_push import counts, search
from .test_service import expected_counts

PATIENTS = 40


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on either storage."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True, timeout=10) as db:
            return [tuple(r) for r in db.execute(sql).fetchall()]
    import psycopg

    with psycopg.connect(url) as db:
        return [tuple(r) for r in db.execute(sql).fetchall()]


def _states(url: str) -> dict[str, int]:
    return {str(s): int(n) for s, n in _query(url, "SELECT state, COUNT(*) FROM delivery GROUP BY state")}


def test_kill_9_while_sending_loses_nothing_and_duplicates_nothing(
        run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path, storage_url: str) -> None:
    records = [{"record_type": t, **r} for t, r in generate(PATIENTS, seed=20, treatments_per_patient=(3, 5))]
    export = tmp_path / "export.ndjson"
    export.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    expected = expected_counts(run_cli, tmp_path, export)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = service_settings(tmp_path, base_url=clean_fhir_server.base_url, storage_url=storage_url,
                                server={"port": port, "threads": 2, "max_body_bytes": 4 * 1024 * 1024},
                                worker={"batch_records": 10, "bundle_size": 200, "lease_seconds": 120})
    settings["targets"][0].update(timeout=60, retry_budget=30)
    config = tmp_path / "service.toml"
    config.write_text(toml(settings), encoding="utf-8")
    log = artifacts() / "test_service_crash.log"
    log.write_bytes(b"")

    proc = start(config, log)
    try:
        wait_healthy(url, proc)
        auth = {"Authorization": f"Bearer {RW_TOKEN}", "Content-Type": "application/x-ndjson"}
        for i in range(0, len(records), 100):
            body = b"".join(orjson.dumps(r) + b"\n" for r in records[i:i + 100])
            answer = requests.post(f"{url}/records", data=body, headers=auth, timeout=60)
            assert answer.status_code == 202, answer.text
        # kill -9 while a transaction is in flight, once some records are already synced
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline, f"never caught it sending: {_states(storage_url)}"
            now = _states(storage_url)
            if now.get("sending", 0) and now.get("synced", 0) >= 20:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    at_kill = _states(storage_url)
    assert at_kill.get("sending", 0) > 0 and at_kill.get("queued", 0) > 0, at_kill

    proc = start(config, log)
    try:
        wait_healthy(url, proc)
        deadline = time.monotonic() + 300
        while _states(storage_url) != {"synced": len(records)}:
            assert time.monotonic() < deadline, f"not drained after the restart: {_states(storage_url)}"
            time.sleep(0.5)
        metrics = requests.get(f"{url}/metrics", headers=auth, timeout=10).text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    assert counts(clean_fhir_server.base_url) == expected
    assert f'ims_fhir_outbox_deliveries{{target="hospital",state="synced"}} {len(records)}' in metrics
    ((recovered,),) = _query(storage_url, "SELECT COUNT(*) FROM event WHERE detail='its worker stopped mid-send'")
    assert recovered == at_kill["sending"]
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "re-queued" in text and "Traceback" not in text
    assert leaks(text, personal_data(records) | personal_data([{**SOURCE, "record_type": "x"}])) == []
    assert RW_TOKEN not in text


EDITS = 5  # revisions of each edited treatment: the server must end with the last one
EDITED = 12  # treatments edited while the workers send


def _owner_pid(owner: str) -> int:
    return int(owner.split(":")[1])


def _post(url: str, body: bytes) -> requests.Response:
    auth = {"Authorization": f"Bearer {RW_TOKEN}", "Content-Type": "application/x-ndjson"}
    return requests.post(f"{url}/records", data=body, headers=auth, timeout=60)


def test_three_workers_on_postgresql_kill_9_of_a_worker_and_of_serve_keep_every_record_once_and_in_order(
        run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path, postgres_url: str) -> None:
    base = clean_fhir_server.base_url
    records = [{"record_type": t, **r} for t, r in generate(24, seed=21, treatments_per_patient=(3, 5))]
    export = tmp_path / "export.ndjson"
    export.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    expected = expected_counts(run_cli, tmp_path, export)
    treatments = [r for r in records if r["record_type"] == "treatment"]
    edited = treatments[::max(1, len(treatments) // EDITED)][:EDITED]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = service_settings(tmp_path, base_url=base, storage_url=postgres_url,
                                server={"port": port, "threads": 2, "max_body_bytes": 4 * 1024 * 1024},
                                worker={"enabled": False, "batch_records": 6, "bundle_size": 200,
                                        "lease_seconds": 70, "poll_seconds": 0.1})
    settings["targets"][0].update(timeout=60, retry_budget=5)
    config = tmp_path / "service.toml"
    config.write_text(toml(settings), encoding="utf-8")
    log = artifacts() / "test_service_crash_workers.log"
    log.write_bytes(b"")

    serve = start(config, log)
    workers = [start(config, log, "worker") for _ in range(3)]
    procs = [serve, *workers]
    try:
        wait_healthy(url, serve)
        half = len(records) // 2
        for i in range(0, half, 50):
            batch = b"".join(orjson.dumps(r) + b"\n" for r in records[i:min(i + 50, half)])
            assert _post(url, batch).status_code == 202

        # kill -9 of a worker while it holds a lease (its transaction in flight), once some records are synced
        deadline = time.monotonic() + 180
        victim = None
        while victim is None:
            assert time.monotonic() < deadline, f"never caught a worker sending: {_states(postgres_url)}"
            if _states(postgres_url).get("synced", 0) >= 20:
                pids = {_owner_pid(o) for (o,) in _query(postgres_url, "SELECT lease_owner FROM delivery "
                                                                       "WHERE state='sending'")}
                victim = next((w for w in workers if w.pid in pids), None)
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)

        # kill -9 of serve while a POST is in flight; the client sends the batch again after the restart
        rest = b"".join(orjson.dumps(r) + b"\n" for r in records[half:])
        answers: list[Any] = []
        poster = threading.Thread(target=lambda: answers.append(_try_post(url, rest)))
        poster.start()
        time.sleep(0.15)
        serve.send_signal(signal.SIGKILL)
        serve.wait(timeout=30)
        poster.join(timeout=60)
        serve = start(config, log)
        procs.append(serve)
        wait_healthy(url, serve)
        again = _post(url, rest)
        assert again.status_code == 202, again.text

        # successive edits of some treatments while the two workers left send
        for n in range(2, EDITS + 1):
            body = b"".join(orjson.dumps({**t, "notes": f"edit {n} of {t['id']}"}) + b"\n" for t in edited)
            answer = _post(url, body)
            assert answer.status_code == 202 and answer.json()["queued"] == len(edited), answer.text
            time.sleep(0.4)

        deadline = time.monotonic() + 300
        while _states(postgres_url) != {"synced": len(records)}:
            assert time.monotonic() < deadline, f"not drained: {_states(postgres_url)}"
            time.sleep(0.5)
    finally:
        for proc in procs:
            stop(proc)

    assert counts(base) == expected  # every record once
    system = SOURCE["system_base"]
    for t in edited:  # the last edit won, and the server never went back to an older one
        (procedure,) = search(base, "Procedure", identifier=f"{system}/treatment|{t['id']}")
        assert procedure["note"][0]["text"] == f"edit {EDITS} of {t['id']}"
        with requests.Session() as s:
            history = s.get(f"{base}/Procedure/{procedure['id']}/_history", params={"_count": "100"},
                            headers={"Accept": "application/fhir+json"}, timeout=60).json()
        notes = [e["resource"].get("note", [{}])[0].get("text", "") for e in reversed(history["entry"])]
        numbers = [int(m.group(1)) if (m := re.match(r"edit (\d+) ", n)) else 1 for n in notes]
        assert numbers == sorted(numbers), notes
    # the treatments of each patient reached the server in the order they were posted
    first_seen: dict[str, str] = {}
    for p in search(base, "Procedure", _elements="identifier,meta"):
        rid = next(i["value"] for i in p["identifier"] if i["system"] == f"{system}/treatment")
        first_seen[rid] = p["meta"]["lastUpdated"] if p["meta"].get("versionId") == "1" else ""
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for t in treatments:
        by_patient.setdefault(t["patient_id"], []).append(t)
    for pid, mine in by_patient.items():
        times = [first_seen[t["id"]] for t in mine if first_seen.get(t["id"])]  # unedited: version 1 is current
        assert times == sorted(times), (pid, times)
    ((recovered,),) = _query(postgres_url, "SELECT COUNT(*) FROM event WHERE detail='its worker stopped mid-send'")
    assert recovered > 0
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text
    assert leaks(text, personal_data(records) | personal_data([{**SOURCE, "record_type": "x"}])) == []
    assert RW_TOKEN not in text


def _try_post(url: str, body: bytes) -> int | str:
    try:
        return _post(url, body).status_code
    except requests.RequestException as exc:
        return type(exc).__name__
