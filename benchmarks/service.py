"""Benchmark of the sync service (run on demand; not part of the test suite).

    python benchmarks/service.py [--patients 150] [--batch 100] [--fhir-base URL] [--json]

1. Generates a seeded synthetic export (about 1 assessment and 6 treatments per patient)
   under a system base of its own, so the server needs no wiping.
2. Serves the app with waitress in this process and runs the sync worker beside it, the
   way ``ims-fhir serve`` does, against the local HAPI FHIR server (started here, from
   the cached build, unless ``--fhir-base`` names a running one).
3. Posts the records in batches of ``--batch`` with one HTTP client and reports the
   records/s accepted by ``POST /records`` (validate + convert + store, while the
   worker sends), then the time until the queue is drained and the records/s synced.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import requests
import waitress

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ims_fhir.dev import hapi  # noqa: E402
from ims_fhir.dev.synthetic import generate  # noqa: E402
from ims_fhir.sync import SyncWorker  # noqa: E402
from ims_fhir_service import create_app  # noqa: E402
from ims_fhir_service.auth import hash_token  # noqa: E402
from ims_fhir_service.config import config_from_mapping  # noqa: E402

TOKEN = "benchmark-token-not-a-secret"


def run(patients: int, batch: int, fhir_base: str, seed: int, batch_records: int) -> dict[str, float]:
    stamp = int(time.time())
    records = [orjson.dumps({"record_type": t, **r}) for t, r in generate(patients, seed=seed)]
    with tempfile.TemporaryDirectory(prefix="ims-fhir-bench-") as tmp:
        config = config_from_mapping({
            "source": {"clinic_id": f"bench-{stamp}", "system_base": f"https://bench-{stamp}.example.org/ims"},
            "storage": {"url": f"sqlite:///{Path(tmp) / 'outbox.sqlite'}"},
            "server": {"max_body_bytes": 16 * 1024 * 1024},
            "worker": {"batch_records": batch_records, "bundle_size": 500, "poll_seconds": 0.1},
            "targets": [{"name": "local", "base_url": fhir_base}],
            "tokens": [{"name": "bench", "sha256": hash_token(TOKEN), "scope": "read-write"}],
        }, environ={})
        app = create_app(config)
        st = app.extensions["ims_fhir"]
        server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
        url = f"http://127.0.0.1:{server.effective_port}"  # type: ignore[union-attr]
        worker = SyncWorker(st.outbox, list(config.targets), st.organization, config.worker)
        stop = threading.Event()
        threads = [threading.Thread(target=server.run, daemon=True),
                   threading.Thread(target=worker.run, args=(stop,), daemon=True)]
        for t in threads:
            t.start()
        try:
            with requests.Session() as http:
                http.trust_env = False
                http.headers.update({"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"})
                started = time.monotonic()
                for i in range(0, len(records), batch):
                    answer = http.post(f"{url}/records", data=b"\n".join(records[i:i + batch]), timeout=120)
                    if answer.status_code != 202:
                        raise SystemExit(f"POST /records answered {answer.status_code}: {answer.text[:300]}")
                posted = time.monotonic()
                while st.outbox.pending():
                    time.sleep(0.05)
                drained = time.monotonic()
            depth = st.outbox.stats().depth
        finally:
            stop.set()
            server.close()
            for t in threads:
                t.join(timeout=60)
            st.outbox.close()
    synced = depth.get(("local", "synced"), 0)
    return {
        "records": len(records),
        "synced": synced,
        "failed_or_dead": depth.get(("local", "failed"), 0) + depth.get(("local", "dead"), 0),
        "post_seconds": round(posted - started, 3),
        "accepted_records_per_s": round(len(records) / (posted - started), 1),
        "drain_after_last_post_seconds": round(drained - posted, 3),
        "total_seconds": round(drained - started, 3),
        "synced_records_per_s": round(synced / (drained - started), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=150)
    parser.add_argument("--batch", type=int, default=100, help="records per POST /records")
    parser.add_argument("--batch-records", type=int, default=100, help="records per worker claim")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--fhir-base", help="a running FHIR server (default: start the local HAPI)")
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    args = parser.parse_args()
    server = None
    base = args.fhir_base
    if base is None:
        print("starting the local HAPI FHIR server ...", file=sys.stderr)
        server = hapi.start(log_path=Path(tempfile.gettempdir()) / "ims-fhir-bench-hapi.log")
        base = server.base_url
    try:
        figures = run(args.patients, args.batch, base, args.seed, args.batch_records)
    finally:
        if server is not None:
            server.stop()
    if args.json:
        print(json.dumps(figures))
    else:
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            print(f"{key:<{width}}  {value}")
        print(json.dumps(figures))
    return 0 if figures["synced"] == figures["records"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
