"""Benchmark of the sync service (run on demand; not part of the test suite).

    python benchmarks/service.py [--patients 150] [--batch 100] [--clients 1] [--fhir-base URL]
        [--json] [--setups sqlite:1,postgresql:2] [--repeat K] [--postgres-url URL]
        [--server-cpus 1 --service-cpus 0] [--no-drain]

For each setup ``STORAGE:WORKERS`` (default: SQLite with 1 worker, then PostgreSQL with 2;
``sqlite:0,postgresql:0`` measures intake alone, with nothing sending; ``--no-drain`` stops
when the last POST is answered, for intake beside working workers on larger samples):

1. Generates a seeded synthetic export (about 1 assessment and 6 treatments per patient)
   under a system base of its own, so the server needs no wiping.
   The local server runs at the lowest CPU priority (``--server-nice``, default 19): on a
   small machine it would otherwise take the CPU the service measured needs, as a hospital's
   server, on its own machine, does not; ``--server-nice 0`` measures them as equals.
2. Serves the app with waitress in this process (as ``ims-fhir serve`` with ``[worker]
   enabled = false``) and starts WORKERS ``ims-fhir worker`` processes beside it (and waits
   until they run, so that their start-up is not counted against intake), against
   the local HAPI FHIR server (started here, from the cached build, unless ``--fhir-base``
   names a running one). PostgreSQL: ``--postgres-url`` (an empty database), else a
   throw-away server started here like the test suite's (Debian's ``postgresql``).
3. Posts the records in batches of ``--batch`` with ``--clients`` HTTP clients at once (each
   its share of the batches, in order; the app serves with 4 threads) and reports the
   records/s accepted by ``POST /records`` (validate + convert + store, while the workers
   send), then the time until the queue is drained and the records/s delivered (synced, or
   kept: found on the server already).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import requests
import waitress

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ims_fhir.dev import hapi  # noqa: E402
from ims_fhir.dev.synthetic import generate  # noqa: E402
from ims_fhir_service import create_app  # noqa: E402
from ims_fhir_service.auth import hash_token  # noqa: E402
from ims_fhir_service.config import config_from_mapping  # noqa: E402
from tests.service.live import toml  # noqa: E402

TOKEN = "benchmark-token-not-a-secret"


def post_all(url: str, bodies: list[bytes]) -> str | None:
    """POST each body in turn with one HTTP client; the first refusal, if any."""
    with requests.Session() as http:
        http.trust_env = False
        http.headers.update({"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"})
        for body in bodies:
            answer = http.post(f"{url}/records", data=body, timeout=120)
            if answer.status_code != 202:
                return f"POST /records answered {answer.status_code}: {answer.text[:300]}"
    return None


def run(patients: int, batch: int, fhir_base: str, seed: int, batch_records: int, storage_url: str,
        workers: int, clients: int = 1, drain: bool = True) -> dict[str, Any]:
    stamp = f"{int(time.time())}-{os.getpid()}-{workers}-{storage_url.split(':')[0]}"
    records = [orjson.dumps({"record_type": t, **r}) for t, r in generate(patients, seed=seed)]
    with tempfile.TemporaryDirectory(prefix="ims-fhir-bench-") as tmp:
        if storage_url.startswith("sqlite"):
            storage_url = f"sqlite:///{Path(tmp) / 'outbox.sqlite'}"
        settings: dict[str, Any] = {
            "source": {"clinic_id": f"bench-{stamp}", "system_base": f"https://bench-{stamp}.example.org/ims"},
            "storage": {"url": storage_url},
            "server": {"max_body_bytes": 16 * 1024 * 1024},  # backpressure on, at its default depth
            "worker": {"enabled": False, "batch_records": batch_records, "bundle_size": 500, "poll_seconds": 0.1},
            "targets": [{"name": "local", "base_url": fhir_base}],
            "tokens": [{"name": "bench", "sha256": hash_token(TOKEN), "scope": "read-write"}],
        }
        config_file = Path(tmp) / "service.toml"
        config_file.write_text(toml(settings), encoding="utf-8")
        config = config_from_mapping(settings, environ={})
        app = create_app(config)
        st = app.extensions["ims_fhir"]
        server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
        url = f"http://127.0.0.1:{server.effective_port}"  # type: ignore[union-attr]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMS_FHIR_")}
        log = open(Path(tmp) / "workers.log", "wb")  # noqa: SIM115 - closed below
        procs = [subprocess.Popen([sys.executable, "-m", "ims_fhir", "worker", "--config", str(config_file)],  # noqa: S603
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT) for _ in range(workers)]
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            # the workers start (interpreter, imports: a second or two of CPU each) before the
            # clock does: intake is measured beside workers that send, not beside start-ups
            ready_by = time.monotonic() + 120
            while (Path(tmp) / "workers.log").read_bytes().count(b" started for targets ") < workers:
                if any(p.poll() is not None for p in procs) or time.monotonic() > ready_by:
                    raise SystemExit(f"a worker did not start; see {log.name}")
                time.sleep(0.05)
            bodies = [b"\n".join(records[i:i + batch]) for i in range(0, len(records), batch)]
            started = time.monotonic()
            # each client posts its own share of the batches (a client's in order), as clinics do at once
            with ThreadPoolExecutor(max_workers=clients) as pool:
                for failure in pool.map(lambda share: post_all(url, share), [bodies[c::clients] for c in range(clients)]):
                    if failure:
                        raise SystemExit(failure)
            posted = time.monotonic()
            while drain and workers and st.outbox.pending():  # no worker (intake only): nothing drains
                if any(p.poll() is not None for p in procs):
                    raise SystemExit(f"a worker exited; see {log.name}")
                time.sleep(0.05)
            drained = time.monotonic()
            depth = st.outbox.stats().depth
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
            log.close()
            server.close()
            thread.join(timeout=60)
            st.outbox.close()
    # delivered: sent, or found on the server already (a Patient the hospital owns by its health
    # number, e.g. from an earlier run of this benchmark with the same seed, is `kept`)
    synced = depth.get(("local", "synced"), 0) + depth.get(("local", "kept"), 0)
    return {
        "storage": storage_url.split(":")[0],
        "workers": workers,
        "clients": clients,
        "records": len(records),
        "synced": synced,
        "kept": depth.get(("local", "kept"), 0),
        "conflicts": depth.get(("local", "conflict"), 0),
        "failed_or_dead": depth.get(("local", "failed"), 0) + depth.get(("local", "dead"), 0),
        "post_seconds": round(posted - started, 3),
        "accepted_records_per_s": round(len(records) / (posted - started), 1),
        "drain_after_last_post_seconds": round(drained - posted, 3) if drain else None,
        "total_seconds": round(drained - started, 3) if drain else None,
        "synced_records_per_s": round(synced / (drained - started), 1) if drain else None,
    }


def cpu_list(text: str) -> set[int]:
    """The CPUs of a taskset-style list: ``0``, ``0-2``, ``0,3``."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=150)
    parser.add_argument("--batch", type=int, default=100, help="records per POST /records")
    parser.add_argument("--clients", type=int, default=1, help="HTTP clients posting at once")
    parser.add_argument("--batch-records", type=int, default=100, help="records per worker claim")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--fhir-base", help="a running FHIR server (default: start the local HAPI)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per setup only")
    parser.add_argument("--setups", default="sqlite:1,postgresql:2", help="STORAGE:WORKERS, comma-separated")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the setups this many times, alternating, and print each setup's median and best")
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database (default: start a throw-away server)")
    parser.add_argument("--server-nice", type=int, default=19,
                        help="run the local HAPI server at this lower CPU priority (0-19, default 19: it gets "
                             "the CPU the service leaves, as if it ran on the hospital's machine; 0: it competes "
                             "for the service's CPUs as an equal)")
    parser.add_argument("--server-cpus", help="run the local HAPI server on these CPUs only (taskset list, e.g. 1)")
    parser.add_argument("--service-cpus",
                        help="run the service measured (this process, its worker processes and the throw-away "
                             "PostgreSQL server) on these CPUs only (taskset list, e.g. 0); with --server-cpus on "
                             "the others, the two stand on CPUs of their own, as the service and a hospital's "
                             "server do on two machines")
    parser.add_argument("--no-drain", dest="drain", action="store_false",
                        help="stop when the last POST is answered (intake beside working workers, for samples "
                             "larger than the local server could drain in reasonable time)")
    args = parser.parse_args()
    if args.service_cpus:
        # before any thread or process starts: they inherit it (the local HAPI server is placed by --server-cpus)
        os.sched_setaffinity(0, cpu_list(args.service_cpus))
    # a SIGTERM (a stopped job, a timeout) ends the run through the finally blocks below, which
    # stop the local HAPI server and the worker processes; without this they outlived the script
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    setups = [(s.split(":")[0], int(s.split(":")[1])) for s in args.setups.split(",")] * max(args.repeat, 1)
    server = None
    postgres = None
    base = args.fhir_base
    results = []
    try:
        if base is None:
            print("starting the local HAPI FHIR server ...", file=sys.stderr)
            server = hapi.start(log_path=Path(tempfile.gettempdir()) / "ims-fhir-bench-hapi.log",
                                niceness=args.server_nice, cpus=args.server_cpus)
            base = server.base_url
        for storage, workers in setups:
            url = "sqlite"
            if storage == "postgresql":
                if args.postgres_url:
                    url = args.postgres_url
                else:
                    if postgres is None:
                        from tests.postgres import start_postgres

                        print("starting a throw-away PostgreSQL server ...", file=sys.stderr)
                        postgres = start_postgres()
                    url = postgres.create_database()
            print(f"running {storage} with {workers} worker(s) ...", file=sys.stderr)
            results.append(run(args.patients, args.batch, base, args.seed, args.batch_records, url, workers,
                               args.clients, args.drain))
    finally:
        if server is not None:
            server.stop()
        if postgres is not None:
            postgres.stop()
    for figures in results:
        if not args.json:
            width = max(len(k) for k in figures)
            for key, value in figures.items():
                print(f"{key:<{width}}  {value}")
        print(json.dumps(figures))
    if args.repeat > 1:  # one machine's noise: the runs of a setup, in the order they ran, then median and best
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for figures in results:
            runs.setdefault((figures["storage"], figures["workers"]), []).append(figures)
        for (storage, workers), group in runs.items():
            summary: dict[str, Any] = {"summary": f"{storage}:{workers}", "runs": len(group)}
            for key in ("accepted_records_per_s", "synced_records_per_s"):
                values = [f[key] for f in group if f[key] is not None]
                if values:
                    summary[key] = {"each": values, "median": statistics.median(values), "best": max(values)}
            print(json.dumps(summary))
    return 0 if all(f["synced"] == f["records"] or not f["workers"] or not args.drain for f in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
