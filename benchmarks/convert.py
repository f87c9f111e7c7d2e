"""Benchmark of ``ims-fhir convert`` (run on demand; not part of the test suite).

    python benchmarks/convert.py [--records 200000] [--naive-records 20000] [--seed 7] [--keep DIR]

1. Generates a seeded synthetic export as NDJSON: about 1 assessment and 6 treatments per
   patient, plus a few practitioners.
2. Runs ``ims-fhir convert`` (NDJSON output, default options) in a child process pinned to
   one core (``taskset -c 0`` when available) and prints records/s, resources/s and the
   child's peak RSS.
3. The same for ``--validate`` on a second, smaller export (``--naive-records``), and for a naive
   pipeline that builds every resource as a ``fhir.resources`` model and serialises it.

Figures are printed as a table and as one JSON line (for the closing notes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ARGS = ["--clinic-id", "synthetic-0", "--system-base", "https://clinic.example.org/ims"]

NAIVE = r"""
import sys, time, orjson
from pathlib import Path
from fhir.resources.R4B import get_fhir_model_class
from ims_fhir.mapping import MappingContext, map_record
from ims_fhir.records.models import Source
from ims_fhir.records.readers import open_input
from ims_fhir.records.validation import validate_record
from ims_fhir.terminology import default_terminology
ctx = MappingContext(Source(clinic_id="synthetic-0", system_base="https://clinic.example.org/ims"), default_terminology())
out = open(sys.argv[2], "wb")
records = resources = 0
for raw in open_input(Path(sys.argv[1])).records:
    model, problems = validate_record(raw.record_type, raw.data)
    records += 1
    if model is None:
        continue
    for res in map_record(raw.record_type, model, ctx).resources:
        fhir_model = get_fhir_model_class(res["resourceType"]).model_validate(res)
        out.write(fhir_model.model_dump_json(exclude_none=True).encode() + b"\n")
        resources += 1
out.close()
print(orjson.dumps({"records": records, "resources": resources}).decode())
"""


def _pin() -> list[str]:
    return ["taskset", "-c", "0"] if shutil.which("taskset") else []


def _child(cmd: list[str]) -> tuple[float, int, str]:
    """Run a child process; returns (seconds, peak RSS in MB of that very child, stdout)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode not in (0, 1):
        sys.exit(f"benchmark step failed ({proc.returncode}): {' '.join(cmd)}\n{stderr}")
    return elapsed, usage.ru_maxrss // 1024, stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000, help="records in the main run (default 200000)")
    ap.add_argument("--naive-records", type=int, default=20_000, help="records for the --validate and naive runs")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", type=Path, help="keep the generated input and outputs in this folder")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="ims-fhir-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    patients = max(1, round(args.records / 8))  # patient + 1 assessment + 6 treatments
    big = work / "export.ndjson"
    small = work / "export-small.ndjson"
    t0 = time.perf_counter()
    subprocess.run([py, "-m", "ims_fhir.dev.synthetic", "export", "--patients", str(patients), "--seed", str(args.seed),
                    "--format", "ndjson", "--out", str(big)], check=True, capture_output=True)
    gen_seconds = time.perf_counter() - t0
    subprocess.run([py, "-m", "ims_fhir.dev.synthetic", "export", "--patients", str(max(1, round(args.naive_records / 8))),
                    "--seed", str(args.seed + 1), "--format", "ndjson", "--out", str(small)], check=True, capture_output=True)
    n_big = sum(1 for _ in big.open("rb"))
    n_small = sum(1 for _ in small.open("rb"))

    cli = [py, "-m", "ims_fhir", "convert"]
    seconds, rss, _ = _child(_pin() + cli + [str(big), "--out", str(work / "out"), "--quiet", *SOURCE_ARGS])
    summary = json.loads((work / "out" / "summary.json").read_text())
    n_resources = sum(summary["resources"].values())
    rows = [("convert (ndjson)", n_big, n_resources, seconds, rss)]

    seconds_s, rss_s, _ = _child(_pin() + cli + [str(small), "--out", str(work / "out-small"), "--quiet", *SOURCE_ARGS])
    res_small = sum(json.loads((work / "out-small" / "summary.json").read_text())["resources"].values())
    rows.append(("convert, small input", n_small, res_small, seconds_s, rss_s))
    validate_args = [str(small), "--out", str(work / "out-validate"), "--quiet", "--validate", *SOURCE_ARGS]
    seconds_v, rss_v, _ = _child(_pin() + cli + validate_args)
    rows.append(("convert --validate", n_small, res_small, seconds_v, rss_v))
    seconds_n, rss_n, out = _child(_pin() + [py, "-c", NAIVE, str(small), str(work / "naive.ndjson")])
    naive = json.loads(out.strip().splitlines()[-1])
    rows.append(("naive fhir.resources", naive["records"], naive["resources"], seconds_n, rss_n))

    print(f"input: {n_big:,} records ({patients:,} patients), generated in {gen_seconds:.1f} s; "
          f"small input: {n_small:,} records; python {sys.version.split()[0]}, pinned to one core: {bool(_pin())}")
    print(f"{'run':<24}{'records':>10}{'resources':>11}{'seconds':>9}{'records/s':>11}{'resources/s':>13}{'peak RSS MB':>13}")
    figures = {}
    for name, recs, ress, secs, mem in rows:
        print(f"{name:<24}{recs:>10,}{ress:>11,}{secs:>9.2f}{recs / secs:>11,.0f}{ress / secs:>13,.0f}{mem:>13}")
        figures[name] = {"records": recs, "resources": ress, "seconds": round(secs, 3),
                         "records_per_s": round(recs / secs), "resources_per_s": round(ress / secs)}
    speedup = (n_small / seconds_s) / (naive["records"] / seconds_n)
    cost = seconds_v / seconds_s
    print(f"default convert vs naive pipeline (same small input): {speedup:.1f}x faster; --validate costs {cost:.1f}x the time")
    print(json.dumps({"figures": figures, "speedup_vs_naive": round(speedup, 1), "validate_cost_x": round(cost, 1),
                      "peak_rss_mb_main": rss}))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
