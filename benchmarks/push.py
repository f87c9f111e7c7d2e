"""Benchmark of ``ims-fhir push`` into the local HAPI FHIR server (run on demand).

    python benchmarks/push.py [--records 10000] [--bundle-size 200] [--single 1000]

1. Generates a seeded synthetic export (about 1 assessment and 6 treatments per patient)
   and converts it to transaction Bundles.
2. Starts the local HAPI FHIR server (``ims_fhir.dev.hapi``; built once, cached).
3. On an empty server each time, measures resources/s for (rounds alternate the order of
   the first two and the best of each is kept, since the server warms up as it goes):
   - the adapter: ``ims_fhir.push.push`` (capability check, retries, outcome tally);
   - the ceiling: the same Bundle files posted by a bare ``requests`` loop;
   - one resource per request: ``PUT [base]/Type/id`` of each resource of the NDJSON output
     in dependency order, for the first ``--single`` records' worth of resources.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ims_fhir.client import ClientConfig  # noqa: E402
from ims_fhir.dev import hapi  # noqa: E402
from ims_fhir.push import PushOptions, push  # noqa: E402

HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
ORDER = ("Organization", "Practitioner", "Patient", "Encounter", "Observation", "Procedure")


def expunge(base: str) -> None:
    body = {"resourceType": "Parameters", "parameter": [{"name": "expungeEverything", "valueBoolean": True}]}
    requests.post(f"{base}/$expunge", json=body, headers=HEADERS, timeout=600).raise_for_status()


def count(base: str) -> int:
    return sum(requests.get(f"{base}/{t}", params={"_summary": "count"}, headers=HEADERS, timeout=60).json()["total"]
               for t in ORDER)


def single_order(folder: Path, limit: int) -> list[dict]:
    """Resources in an order where every reference target comes first."""
    by_type = {t: [orjson.loads(line) for line in (folder / f"{t}.ndjson").read_bytes().splitlines() if line.strip()]
               for t in ORDER if (folder / f"{t}.ndjson").exists()}
    obs = by_type.get("Observation", [])
    plain = [o for o in obs if "hasMember" not in o and "partOf" not in o]
    panels = [o for o in obs if "hasMember" in o]
    parts = [o for o in obs if "partOf" in o]
    ordered = (by_type.get("Organization", []) + by_type.get("Practitioner", []) + by_type.get("Patient", [])
               + by_type.get("Encounter", []) + plain + panels + by_type.get("Procedure", []) + parts)
    return ordered[:limit]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--bundle-size", type=int, default=200)
    ap.add_argument("--single", type=int, default=2000, help="resources to post one per request")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--java-opts", default="-Xmx1536m -XX:+UseSerialGC", help="JVM options of the HAPI server")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (bare, adapter) in alternating order; best of each")
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="ims-fhir-push-bench-") as tmp:
        work = Path(tmp)
        export = work / "export.ndjson"
        subprocess.run([py, "-m", "ims_fhir.dev.synthetic", "export", "--patients", str(max(1, args.records // 8)),
                        "--seed", str(args.seed), "--format", "ndjson", "--out", str(export)], check=True, capture_output=True)
        src = ["--clinic-id", "bench", "--system-base", "https://bench.example.org/ims"]
        subprocess.run([py, "-m", "ims_fhir", "convert", str(export), "--out", str(work / "bundles"), "--format", "bundle",
                        "--bundle-size", str(args.bundle_size), "-q", *src], check=True)
        subprocess.run([py, "-m", "ims_fhir", "convert", str(export), "--out", str(work / "ndjson"), "-q", *src], check=True)
        summary = json.loads((work / "ndjson" / "summary.json").read_text())
        n_records, n_resources = summary["converted"], sum(summary["resources"].values())
        bundles = sorted((work / "bundles").glob("bundle-*.json"))
        entries = sum(len(orjson.loads(p.read_bytes())["entry"]) for p in bundles)

        # the full JIT (C2): the test suite's default stops at C1 for a fast start, which is slow
        # for a long run of writes
        with hapi.start(log_path=work / "hapi.log", java_opts=args.java_opts.split()) as server:
            base = server.base_url
            # warm the server (JIT, caches) with one small bundle, then wipe
            requests.post(base, data=bundles[0].read_bytes(), headers=HEADERS, timeout=600).raise_for_status()

            def run_adapter() -> float:
                expunge(base)
                t0 = time.perf_counter()
                result = push([work / "bundles"], ClientConfig.from_values(base, read_timeout=600), PushOptions(),
                              report=lambda item: None)
                took = time.perf_counter() - t0
                assert result.failed_records == 0 and count(base) == n_resources, "adapter push incomplete"
                return took

            def run_bare() -> float:
                expunge(base)
                t0 = time.perf_counter()
                with requests.Session() as s:
                    for p in bundles:
                        s.post(base, data=p.read_bytes(), headers=HEADERS, timeout=600).raise_for_status()
                took = time.perf_counter() - t0
                assert count(base) == n_resources, "bare loop incomplete"
                return took

            # alternate the order each round (the server warms up as it goes) and keep the best of each
            adapter_runs, bare_runs = [], []
            for r in range(args.rounds):
                if r % 2 == 0:
                    bare_runs.append(run_bare())
                    adapter_runs.append(run_adapter())
                else:
                    adapter_runs.append(run_adapter())
                    bare_runs.append(run_bare())
            adapter, bare = min(adapter_runs), min(bare_runs)

            expunge(base)
            singles = single_order(work / "ndjson", args.single)
            t0 = time.perf_counter()
            with requests.Session() as s:
                for res in singles:
                    s.put(f"{base}/{res['resourceType']}/{res['id']}", data=orjson.dumps(res), headers=HEADERS,
                          timeout=600).raise_for_status()
            single = time.perf_counter() - t0

    print(f"{n_records:,} records -> {n_resources:,} resources; {len(bundles)} bundles, {entries:,} entries "
          f"(shared Patient/Practitioner/Organization entries repeat per bundle)")
    print(f"{'run':<34}{'seconds':>9}{'resources/s':>13}")
    rows = [("adapter (ims_fhir.push)", adapter, n_resources), ("bare requests loop, same bundles", bare, n_resources),
            (f"one resource per request ({len(singles):,})", single, len(singles))]
    for name, secs, n in rows:
        print(f"{name:<34}{secs:>9.1f}{n / secs:>13,.0f}")
    print(f"adapter / bare loop: {bare / adapter:.0%} of the ceiling (best of {args.rounds}; "
          f"adapter runs {[round(x, 1) for x in adapter_runs]}, bare runs {[round(x, 1) for x in bare_runs]})")
    print(json.dumps({"records": n_records, "resources": n_resources, "adapter_s": round(adapter, 2),
                      "bare_s": round(bare, 2), "single_s": round(single, 2), "single_resources": len(singles),
                      "adapter_vs_bare": round(bare / adapter, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
