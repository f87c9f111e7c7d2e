"""Benchmark of concurrent delivery over a slow link (run on demand; prints figures).

    python benchmarks/latency.py [--records 800] [--bundle-size 40] [--latency-ms 50]
                                 [--modes transaction,batch,per-resource]

A latency-injecting proxy (the test suite's fault proxy, holding every request and every
answer ``--latency-ms`` milliseconds: one round trip costs twice that) sits in front of the
local HAPI server. For each mode, on an empty server each time, it measures
``ims_fhir.push.push`` in resources/s:

- through the proxy with ``concurrency 1`` and ``concurrency 4``;
- the zero-latency ceiling: straight to the server with ``concurrency 4``.

The ceiling and latency c4 are run ``--repeat`` times (default 3), alternating, and the best
of each is compared (printed with the run-by-run ratios): the same push straight to the local
server moves by +-20% from run to run (its garbage collector, JIT and database), more than
the effect measured.

Modes: ``transaction`` (the normal server: one transaction per Bundle), ``batch`` (the
server started with ``--ims.disable=transaction``: a few batch Bundles per Bundle, one per
dependency level) and ``per-resource`` (``--ims.disable=transaction,batch``: each resource
is its own request, in dependency order, so latency dominates). The target is that, with
latency, concurrency 4 reaches at least 80% of the zero-latency ceiling in each mode.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ims_fhir.client import ClientConfig  # noqa: E402
from ims_fhir.dev import hapi as devserver  # noqa: E402
from ims_fhir.push import PushOptions, push  # noqa: E402
from tests.integration.faultproxy import FaultProxy, ProxyRequest  # noqa: E402

HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


class LatencyProxy(FaultProxy):
    """Holds each request and each answer ``delay`` seconds (a WAN between clinic and hospital)."""

    delay = 0.05

    def _forward(self, request: ProxyRequest) -> tuple[int, str, list[tuple[str, str]], bytes]:
        time.sleep(self.delay)
        answer = super()._forward(request)
        time.sleep(self.delay)
        return answer


def expunge(base: str) -> None:
    body = {"resourceType": "Parameters", "parameter": [{"name": "expungeEverything", "valueBoolean": True}]}
    requests.post(f"{base}/$expunge", json=body, headers=HEADERS, timeout=600).raise_for_status()


def run_push(base: str, bundles: Path, concurrency: int) -> tuple[float, dict[str, Any]]:
    config = ClientConfig.from_values(base, read_timeout=300, max_attempts=3)
    report: list[dict[str, Any]] = []
    # a fresh push state each run: the server was just emptied, so the identity map of an
    # earlier run would say everything is there already and send nothing
    with tempfile.TemporaryDirectory(prefix="ims-fhir-latency-state-") as state:
        options = PushOptions(concurrency=concurrency, state_path=Path(state) / "push-state.sqlite")
        started = time.monotonic()
        summary = push([bundles], config, options, report=report.append)
        elapsed = time.monotonic() - started
    if summary.failed_records or report:
        raise SystemExit(f"push failed: {report[:3]}")
    return elapsed, summary.as_dict()


def measure(base: str, bundles: Path, n_resources: int, latency: float, repeat: int) -> dict[str, float]:
    figures: dict[str, list[float]] = {}
    # c1 once (slow); the ceiling and latency c4 ``repeat`` times, alternating, so that a drift
    # of the server (GC, JIT, its database) weighs on both alike
    runs = [("latency c1", latency, 1)]
    for _ in range(repeat):
        runs += [("ceiling c4 (no latency)", None, 4), ("latency c4", latency, 4)]
    for name, delay, concurrency in runs:
        expunge(base)
        overlap = ""
        if delay is None:
            elapsed, summary = run_push(base, bundles, concurrency)
        else:
            with LatencyProxy(base, lifetime=7200, max_requests=10_000_000) as proxy:
                proxy.delay = delay
                elapsed, summary = run_push(proxy.base_url, bundles, concurrency)
                log = proxy.log
            # how the time went: round trips, and how many were in flight on average (a push
            # that does not overlap its requests shows ~1 whatever its concurrency)
            busy = sum(e.answered - e.at for e in log)
            overlap = f"  ({len(log)} requests, {busy / elapsed:.1f} in flight on average)"
        # an entry a Bundle shares with an earlier one (the clinic's Organization, a Practitioner)
        # is sent once: the push state knows it is there already
        if summary["created"] + summary["unchanged"] == 0 or summary["conflicts"]:
            raise SystemExit(f"nothing delivered or conflicts: {summary}")
        figures.setdefault(name, []).append(n_resources / elapsed)
        print(f"  {name:26s} {elapsed:7.1f} s  {n_resources / elapsed:8.1f} resources/s{overlap}", flush=True)
    ceilings, latencies = figures["ceiling c4 (no latency)"], figures["latency c4"]
    pairs = [f"{lat / ceil:.0%}" for ceil, lat in zip(ceilings, latencies, strict=True)]
    best = max(latencies) / max(ceilings)
    print(f"  latency c4 / ceiling: {best:.0%} (best of {repeat} each; run by run: {', '.join(pairs)})   "
          f"latency c4 / c1: {max(latencies) / figures['latency c1'][0]:.1f}x", flush=True)
    return {name: max(values) for name, values in figures.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=800)
    ap.add_argument("--bundle-size", type=int, default=40)
    ap.add_argument("--latency-ms", type=float, default=50.0, help="added to each request and each answer")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--modes", default="transaction,batch,per-resource")
    ap.add_argument("--java-opts", default="-Xmx1536m -XX:+UseSerialGC")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of the ceiling and of latency c4 (alternating); the best of each is compared")
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="ims-fhir-latency-bench-") as tmp:
        work = Path(tmp)
        export = work / "export.ndjson"
        subprocess.run([py, "-m", "ims_fhir.dev.synthetic", "export", "--patients", str(max(1, args.records // 8)),
                        "--seed", str(args.seed), "--format", "ndjson", "--out", str(export)],
                       check=True, capture_output=True)
        src = ["--clinic-id", "bench", "--system-base", "https://bench.example.org/ims"]
        bundles = work / "bundles"
        subprocess.run([py, "-m", "ims_fhir", "convert", str(export), "--out", str(bundles), "--format", "bundle",
                        "--bundle-size", str(args.bundle_size), "-q", *src], check=True)
        n_resources = sum(len(__import__("orjson").loads(p.read_bytes())["entry"])
                          for p in bundles.glob("bundle-*.json"))
        print(f"{n_resources} resources in {len(list(bundles.glob('bundle-*.json')))} Bundles; "
              f"latency {args.latency_ms:g} ms each way", flush=True)
        modes = {"transaction": [], "batch": ["--ims.disable=transaction"],
                 "per-resource": ["--ims.disable=transaction,batch"]}
        for mode in args.modes.split(","):
            print(f"mode {mode}:", flush=True)
            with devserver.start(log_path=work / f"hapi-{mode}.log", java_opts=args.java_opts.split(),
                                 server_args=modes[mode]) as server:
                # warm the server (JIT, validator) with one push, then measure
                run_push(server.base_url, bundles, 4)
                measure(server.base_url, bundles, n_resources, args.latency_ms / 1000, max(1, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
