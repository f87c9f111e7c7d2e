"""Chaos run of the sync service (on demand; a CI-sized run is tests/integration/test_chaos.py).

    python benchmarks/chaos.py [--faults 1000] [--patients 60] [--seed 13] [--workers 2] [--max-seconds 1800]
                               [--drain-seconds 600] [--fhir-base URL] [--json]

Runs ``ims-fhir serve`` and ``ims-fhir worker`` as subprocesses against the local HAPI FHIR
server (started here from the cached build, unless ``--fhir-base`` names a running one on
127.0.0.1) through a fault-injecting proxy, and injects ``--faults`` faults: kill -9 of
serve and of the worker, TCP resets before and after the server applied a transaction,
500/503/429 answers, answers held past the client's timeout, and outages. It posts
synthetic records and keeps posting edits of them meanwhile. Then it lets the outbox
drain and reads the server directly. Prints the faults injected (by kind), the records
posted, and the resources and records that arrived, were duplicated or were lost (see
``tests/integration/chaos.py``). Exit code 0 only when nothing was lost or duplicated.
Bounded: ``--max-seconds`` of faults, ``--drain-seconds`` to drain; loopback only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ims_fhir.dev import hapi  # noqa: E402
from tests.integration.chaos import run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=1000)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--workers", type=int, default=2, help="ims-fhir worker processes (they share the outbox)")
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--drain-seconds", type=float, default=600.0)
    parser.add_argument("--fhir-base", help="a running FHIR R4 server on 127.0.0.1 (default: start the local HAPI)")
    parser.add_argument("--workdir", type=Path, help="keep the outbox and the logs here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()

    server = None
    base = args.fhir_base
    if base is None:
        print("starting the local HAPI FHIR server ...", file=sys.stderr)
        server = hapi.start(log_path=Path(tempfile.gettempdir()) / "ims-fhir-chaos-hapi.log",
                            artifact=hapi.build())
        base = server.base_url
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="ims-fhir-chaos-") as tmp:
            workdir = args.workdir or Path(tmp)
            result = run_chaos(base, workdir, faults=args.faults, patients=args.patients, seed=args.seed,
                               max_seconds=args.max_seconds, drain_seconds=args.drain_seconds, workers=args.workers,
                               log=lambda line: print(line, file=sys.stderr))
    finally:
        if server is not None:
            server.stop()
    if args.json:
        print(json.dumps({"faults_injected": result.faults_injected, "faults": dict(result.faults),
                          "records_posted": result.records_posted, "edits_posted": result.edits_posted,
                          "resources_expected": result.resources_expected, "arrived": result.arrived,
                          "duplicated": result.duplicated, "lost": result.lost,
                          "records_arrived": result.records_arrived, "records_duplicated": result.records_duplicated,
                          "records_lost": result.records_lost, "ledger": result.ledger,
                          "seconds": round(time.monotonic() - started, 1)}))
    else:
        for line in result.lines():
            print(line)
        print(f"total: {time.monotonic() - started:.0f} s")
    ok = result.lost == 0 and result.duplicated == 0 and result.records_lost == 0 and result.records_duplicated == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
