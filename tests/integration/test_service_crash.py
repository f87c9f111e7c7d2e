"""``kill -9`` of ``ims-fhir serve`` while it is sending loses nothing and duplicates nothing.

The service runs as a subprocess (waitress + worker, as in production) on a synthetic
export; it is killed with SIGKILL while deliveries are ``sending`` (claimed, transaction
in flight), then started again. HAPI must end with exactly the resources of the records
(one copy each: the re-send is safe because every write is conditional), and the ledger
must say ``synced`` for every record. The logs of both runs name no patient.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import requests

from ims_fhir.dev.hapi import DevServer
from ims_fhir.dev.synthetic import generate
from tests.conftest import SOURCE
from tests.service.conftest import RW_TOKEN, service_settings
from tests.service.support import artifacts, leaks, personal_data

from .test_push import counts
from .test_service import expected_counts

PATIENTS = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(data: dict[str, Any]) -> str:
    """Just enough TOML for the service's configuration (tables, arrays of tables, scalars)."""
    def value(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else orjson.dumps(v).decode()

    lines = []
    for key, section in data.items():
        for table in section if isinstance(section, list) else [section]:
            lines.append(f"[[{key}]]" if isinstance(section, list) else f"[{key}]")
            lines += [f"{k} = {value(v)}" for k, v in table.items()]
            lines.append("")
    return "\n".join(lines)


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMS_FHIR_")}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "ims_fhir", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ims-fhir serve exited"
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError("ims-fhir serve did not come up")


def _states(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10) as db:
        return dict(db.execute("SELECT state, COUNT(*) FROM delivery GROUP BY state").fetchall())


def test_kill_9_while_sending_loses_nothing_and_duplicates_nothing(
        run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path) -> None:
    records = [{"record_type": t, **r} for t, r in generate(PATIENTS, seed=20, treatments_per_patient=(3, 5))]
    export = tmp_path / "export.ndjson"
    export.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    expected = expected_counts(run_cli, tmp_path, export)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings = service_settings(tmp_path, base_url=clean_fhir_server.base_url,
                                server={"port": port, "threads": 2, "max_body_bytes": 4 * 1024 * 1024},
                                worker={"batch_records": 10, "bundle_size": 200, "lease_seconds": 120})
    settings["targets"][0].update(timeout=60, retry_budget=30)
    db_path = Path(settings["storage"]["url"].removeprefix("sqlite:///"))
    config = tmp_path / "service.toml"
    config.write_text(_toml(settings), encoding="utf-8")
    log = artifacts() / "test_service_crash.log"
    log.write_bytes(b"")

    proc = _start(config, log)
    try:
        _wait_healthy(url, proc)
        auth = {"Authorization": f"Bearer {RW_TOKEN}", "Content-Type": "application/x-ndjson"}
        for i in range(0, len(records), 100):
            body = b"".join(orjson.dumps(r) + b"\n" for r in records[i:i + 100])
            answer = requests.post(f"{url}/records", data=body, headers=auth, timeout=60)
            assert answer.status_code == 202, answer.text
        # kill -9 while a transaction is in flight, once some records are already synced
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline, f"never caught it sending: {_states(db_path)}"
            now = _states(db_path)
            if now.get("sending", 0) and now.get("synced", 0) >= 20:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    at_kill = _states(db_path)
    assert at_kill.get("sending", 0) > 0 and at_kill.get("queued", 0) > 0, at_kill

    proc = _start(config, log)
    try:
        _wait_healthy(url, proc)
        deadline = time.monotonic() + 300
        while _states(db_path) != {"synced": len(records)}:
            assert time.monotonic() < deadline, f"not drained after the restart: {_states(db_path)}"
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
    with sqlite3.connect(db_path) as db:
        recovered = db.execute("SELECT COUNT(*) FROM event WHERE detail='its worker stopped mid-send'").fetchone()[0]
    assert recovered == at_kill["sending"]
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "re-queued" in text and "Traceback" not in text
    assert leaks(text, personal_data(records) | personal_data([{**SOURCE, "record_type": "x"}])) == []
    assert RW_TOKEN not in text
