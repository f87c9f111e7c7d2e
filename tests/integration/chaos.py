"""Chaos run of the sync service against a real FHIR server: kill -9, resets, 5xx, delays, outages.

:func:`run_chaos` starts ``ims-fhir serve`` (API only) and ``workers`` ``ims-fhir worker`` processes as
subprocesses, puts a :class:`~tests.integration.faultproxy.FaultProxy` between the worker
and the FHIR server, posts synthetic records (and keeps posting edits of them, so that
there is always traffic to disturb), and injects faults until ``faults`` have happened:

- ``kill_serve`` / ``kill_worker``: SIGKILL of a process, then a restart;
- ``reset`` / ``reset_after_write``: the proxy closes the connection with a TCP reset,
  before forwarding or after the server applied the transaction;
- ``error_500`` / ``error_503`` / ``error_429``: the proxy answers that status instead;
- ``delay``: the request is held 1-3 s, then forwarded;
- ``timeout``: the answer is held past the client's read timeout (the server applied it);
- ``outage``: every request fails (503 or reset) for a few seconds; each refused request counts.

A proxy fault counts when the proxy applied it (its log), a kill when it was delivered.
Then the faults stop, the outbox drains, and the FHIR server is read directly: every
resource of the records' final versions (by business identifier) must be there exactly
once. Bounded: ``max_seconds`` for the fault phase, ``drain_seconds`` for the drain;
everything binds to 127.0.0.1.

Terms: *arrived* = expected identifiers found on the server, *duplicated* = extra copies
of an identifier, *lost* = expected identifiers not found; per record the same, by the
record's primary resource (Patient, Practitioner, the assessment's Observation, Procedure).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests

from ims_fhir.dev.synthetic import generate
from tests.service.live import free_port, toml

from .faultproxy import LOOPBACK, Fault, FaultProxy

TOKEN = "chaos-" + "k" * 32
SOURCE = {"clinic_id": "chaos-clinic", "clinic_name": "Synthetic Chaos Clinic"}
SYSTEM_BASE = "https://chaos.clinic.example.org/ims"
PRIMARY = {"patient": "Patient", "practitioner": "Practitioner", "assessment": "Observation", "treatment": "Procedure"}
TYPES = ("Organization", "Patient", "Practitioner", "Encounter", "Observation", "Procedure")
#: fault kind -> weight
WEIGHTS = {"kill_serve": 1, "kill_worker": 3, "reset": 5, "reset_after_write": 4, "error_500": 4, "error_503": 4,
           "error_429": 3, "delay": 3, "timeout": 1, "outage": 3}
#: the client's read timeout toward the FHIR server, and how long a "timeout" fault holds the answer
READ_TIMEOUT = 10.0


@dataclass
class ChaosResult:
    faults: Counter[str] = field(default_factory=Counter)
    records_posted: int = 0
    edits_posted: int = 0
    post_retries: int = 0
    resources_expected: int = 0
    arrived: int = 0
    duplicated: int = 0
    lost: int = 0
    records_arrived: int = 0
    records_duplicated: int = 0
    records_lost: int = 0
    ledger: dict[str, int] = field(default_factory=dict)
    fault_seconds: float = 0.0
    drain_seconds: float = 0.0

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items()))
        return [f"faults injected: {self.faults_injected} ({kinds})",
                f"records posted: {self.records_posted} (+{self.edits_posted} edits; {self.post_retries} posts "
                f"repeated after a failure)",
                f"resources expected: {self.resources_expected}; arrived {self.arrived}, duplicated {self.duplicated}, "
                f"lost {self.lost}",
                f"records arrived: {self.records_arrived}, duplicated {self.records_duplicated}, "
                f"lost {self.records_lost}",
                f"ledger: {self.ledger}",
                f"time: {self.fault_seconds:.0f} s of faults, {self.drain_seconds:.0f} s to drain"]


class _Process:
    """One ``ims-fhir serve|worker`` subprocess that can be killed and started again."""

    def __init__(self, args: list[str], log: Path, ready: Callable[[], bool] | None = None) -> None:
        self.args, self.log, self.ready = args, log, ready
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMS_FHIR_")}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "ims_fhir", *self.args], stdout=out,
                                         stderr=subprocess.STDOUT, env=env)
        if self.ready is not None:
            deadline = time.monotonic() + 60
            while not self.ready():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ims-fhir {self.args[0]} did not start; see {self.log}")
                time.sleep(0.1)

    def kill9(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
            self.start()

    def stop(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=30)


def _states(db_path: Path) -> dict[str, int]:
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10) as db:
            return dict(db.execute("SELECT state, COUNT(*) FROM delivery GROUP BY state").fetchall())
    except sqlite3.Error:
        return {}


def _identifiers(resource: dict[str, Any]) -> list[str]:
    return [f"{i.get('system')}|{i.get('value')}" for i in resource.get("identifier", [])]


def expected_resources(records: list[dict[str, Any]], workdir: Path, system_base: str) -> Counter[tuple[str, str]]:
    """(type, first identifier) of every resource ``ims-fhir convert`` makes of ``records``."""
    export = workdir / "final.ndjson"
    export.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    out = workdir / "expected"
    subprocess.run([sys.executable, "-m", "ims_fhir", "convert", str(export), "--out", str(out), "--quiet",
                    "--clinic-id", SOURCE["clinic_id"], "--clinic-name", SOURCE["clinic_name"],
                    "--system-base", system_base], check=True, timeout=600)
    found: Counter[tuple[str, str]] = Counter()
    for rtype in TYPES:
        path = out / f"{rtype}.ndjson"
        if path.exists():
            for line in path.read_bytes().splitlines():
                if line.strip():
                    res = orjson.loads(line)
                    found[(rtype, _identifiers(res)[0])] += 1
    return found


def server_resources(base: str, system_base: str) -> Counter[tuple[str, str]]:
    """(type, first identifier) of every resource of ``system_base`` on the server, read directly (no proxy)."""
    found: Counter[tuple[str, str]] = Counter()
    with requests.Session() as http:
        http.trust_env = False
        for rtype in TYPES:
            url: str | None = f"{base}/{rtype}"
            params: dict[str, str] | None = {"_count": "1000", "_elements": "identifier"}
            while url:
                bundle = http.get(url, params=params, timeout=120, headers={"Accept": "application/fhir+json"}).json()
                for entry in bundle.get("entry", []):
                    ids = _identifiers(entry["resource"])
                    if ids and ids[0].startswith(system_base + "/"):
                        found[(rtype, ids[0])] += 1
                url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
                params = None
    return found


def _edit(record: dict[str, Any], n: int) -> dict[str, Any]:
    edited = dict(record)
    if record["record_type"] == "patient":
        edited["phone"] = f"+1-604-555-{n % 10000:04d}"
    elif record["record_type"] in ("assessment", "treatment"):
        edited["notes"] = f"synthetic chaos edit {n}"
    return edited


def run_chaos(hapi_base: str, workdir: Path, *, faults: int = 1000, patients: int = 60, seed: int = 13,
              max_seconds: float = 1800.0, drain_seconds: float = 600.0, system_base: str | None = None,
              workers: int = 1, log: Callable[[str], None] = print) -> ChaosResult:
    """See the module docstring. ``hapi_base``: a FHIR server on 127.0.0.1; the run's records live under
    a system base of their own (``system_base``, by default stamped with the time), so it need not be empty."""
    system_base = system_base or f"{SYSTEM_BASE}/run-{int(time.time() * 1000)}"
    source = {**SOURCE, "system_base": system_base}
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    result = ChaosResult()
    records = [{"record_type": t, **r} for t, r in generate(patients, seed=seed, treatments_per_patient=(2, 4))]
    final = {(r["record_type"], r["id"]): r for r in records}
    editable = [r for r in records if r["record_type"] != "practitioner"]

    proxy = FaultProxy(hapi_base, lifetime=max_seconds + drain_seconds + 120, max_requests=10**7, max_delay=30.0)
    proxy.start()
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    db_path = workdir / "outbox.sqlite"
    from ims_fhir_service.auth import hash_token

    settings = {
        "source": source,
        "storage": {"url": f"sqlite:///{db_path}"},
        "server": {"host": LOOPBACK, "port": port, "threads": 4, "max_body_bytes": 4 * 1024 * 1024},
        "worker": {"enabled": False, "batch_records": 5, "bundle_size": 200, "lease_seconds": 60,
                   "poll_seconds": 0.2, "max_attempts": 1000, "backoff_base": 0.2, "backoff_cap": 2.0},
        "targets": [{"name": "hospital", "base_url": proxy.base_url, "timeout": READ_TIMEOUT, "connect_timeout": 3,
                     "retry_budget": 40, "max_attempts": 3}],
        "tokens": [{"name": "chaos", "sha256": hash_token(TOKEN), "scope": "read-write"}],
    }
    config = workdir / "service.toml"
    config.write_text(toml(settings), encoding="utf-8")

    def healthy() -> bool:
        try:
            return requests.get(f"{url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    serve = _Process(["serve", "--config", str(config), "--no-worker"], workdir / "serve.log", healthy)
    pool = [_Process(["worker", "--config", str(config)], workdir / f"worker{'' if i == 0 else i + 1}.log")
            for i in range(workers)]  # several workers share the outbox through leases
    stop_posting = threading.Event()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}

    def post(batch: list[dict[str, Any]]) -> None:
        body = b"".join(orjson.dumps(r) + b"\n" for r in batch)
        for attempt in range(1000):
            try:
                answer = requests.post(f"{url}/records", data=body, headers=headers, timeout=60)
                if answer.status_code == 202:
                    return
                if answer.status_code < 500 and answer.status_code != 429:
                    raise RuntimeError(f"POST /records refused: {answer.status_code} {answer.text[:300]}")
            except requests.RequestException:
                pass
            result.post_retries += 1
            time.sleep(min(2.0, 0.1 * (attempt + 1)))
        raise RuntimeError("POST /records never succeeded")

    def poster() -> None:
        for i in range(0, len(records), 50):
            post(records[i:i + 50])
            result.records_posted += len(records[i:i + 50])
        n = 0
        while not stop_posting.wait(1.0):
            batch = []
            for record in rng.sample(editable, min(5, len(editable))):
                n += 1
                edited = _edit(record, n)
                final[(record["record_type"], record["id"])] = edited
                batch.append(edited)
            post(batch)
            result.edits_posted += len(batch)

    serve.start()
    for worker in pool:
        worker.start()
    posting = threading.Thread(target=poster, name="chaos-poster", daemon=True)
    started = time.monotonic()
    try:
        posting.start()
        kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
        deadline = started + max_seconds

        def applied() -> int:
            return sum(1 for e in proxy.log if e.action != "pass")

        kills = 0
        rounds = 0
        forced = {3: "kill_serve", 6: "kill_worker"}  # every run has both kills, however short
        while kills + applied() < faults and time.monotonic() < deadline:
            rounds += 1
            kind = forced.get(rounds) or rng.choices(kinds, weights)[0]
            if kind == "kill_serve":
                serve.kill9()
                result.faults["kill_serve"] += 1
                kills += 1
            elif kind == "kill_worker":
                time.sleep(rng.uniform(0, 1.5))  # let it get into a send
                rng.choice(pool).kill9()
                result.faults["kill_worker"] += 1
                kills += 1
            else:
                fault, times = {
                    "reset": (Fault.reset(), 1),
                    "reset_after_write": (Fault.reset(forward="before"), 1),
                    "error_500": (Fault.error(500), 1),
                    "error_503": (Fault.error(503, retry_after="1"), 1),
                    "error_429": (Fault.error(429, retry_after="1"), 1),
                    "delay": (Fault.delay(rng.uniform(1.0, 3.0), forward="after"), 1),
                    "timeout": (Fault.delay(READ_TIMEOUT + 2, forward="before"), 1),
                    "outage": (Fault.error(503) if rng.random() < 0.5 else Fault.reset(), rng.randint(5, 15)),
                }[kind]
                proxy.inject(fault, times=times, skip=rng.choice((0, 0, 0, 1)))
                wait_until = time.monotonic() + 90
                while proxy.pending() and time.monotonic() < wait_until:
                    time.sleep(0.05)
            if posting.is_alive() is False and result.records_posted < len(records):
                raise RuntimeError("the poster stopped early")
        stop_posting.set()
        posting.join(timeout=120)
        result.fault_seconds = time.monotonic() - started
        # the faults the proxy applied, by kind
        for entry in proxy.log:
            if entry.action != "pass":
                result.faults[f"proxy_{entry.action}"] += 1
        log(f"faults done ({result.faults_injected}); draining")
        drain_start = time.monotonic()
        while True:
            states = _states(db_path)
            if states and set(states) == {"synced"} and proxy.pending() == 0:
                break
            if time.monotonic() - drain_start > drain_seconds:
                log(f"not drained after {drain_seconds:.0f} s: {states}")
                break
            if states.get("dead"):
                log(f"dead deliveries: {states}")
                break
            time.sleep(0.5)
        result.drain_seconds = time.monotonic() - drain_start
        result.ledger = _states(db_path)
    finally:
        stop_posting.set()
        for worker in pool:
            worker.stop()
        serve.stop()
        proxy.stop()

    expected = expected_resources(list(final.values()), workdir, system_base)
    present = server_resources(hapi_base, system_base)
    result.resources_expected = len(expected)
    for key in expected:
        n = present.get(key, 0)
        if n:
            result.arrived += 1
            result.duplicated += n - 1
        else:
            result.lost += 1
    for (rtype, rid) in final:
        key = (PRIMARY[rtype], f"{system_base}/{rtype}|{rid}")
        n = present.get(key, 0)
        result.records_arrived += n >= 1
        result.records_duplicated += n > 1
        result.records_lost += n == 0
    unexpected = sum(n for key, n in present.items() if key not in expected)
    if unexpected:
        log(f"{unexpected} resources on the server that no record makes")
        result.duplicated += unexpected
    return result


__all__ = ["ChaosResult", "run_chaos"]
