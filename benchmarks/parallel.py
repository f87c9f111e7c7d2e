"""Benchmark of ``ims-fhir convert --jobs N`` and of the Spark engine (run on demand, not in the tests).

    python benchmarks/parallel.py [--records 1000000] [--jobs 1,2] [--repeat 2]
                                  [--spark-records 1000000 | --no-spark] [--seed 7] [--keep DIR]

1. Generates a seeded synthetic NDJSON export (about 1 assessment and 6 treatments per patient).
2. Runs ``ims-fhir convert INPUT --jobs N`` for each N (best of ``--repeat`` runs, as other
   work on the machine slows single runs down) and prints records/s, the speed-up over
   ``--jobs 1``, the CPU seconds of all its processes and of each (a figure the machine's load
   distorts less: --jobs N can only reach N x if it adds little CPU work), and the peak RSS of every
   process of the run (the parent and each worker, and the fork server when there is one: VmHWM from /proc,
   sampled until each process ends).
3. Runs ``ims_fhir.spark`` on ``local[2]`` (driver memory 1g) over ``--spark-records`` records
   and compares it with ``convert --jobs 2`` on the same input; Spark's start-up is
   reported apart from the conversion, wall time and CPU seconds (the driver, its JVM and
   the Python workers), beside the peak RSS of each of those processes.

The machine's load average is printed before and after each run: on a shared machine
compare figures taken under similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ARGS = ["--clinic-id", "synthetic-0", "--system-base", "https://clinic.example.org/ims"]

SPARK = r"""
import json, os, sys, time
os.environ["PYSPARK_PYTHON"] = sys.executable
TICK = os.sysconf("SC_CLK_TCK")

def cpu_tree():
    # CPU seconds of this driver, its JVM and the JVM's Python workers (+ their waited-for children)
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in stat[11:15]) / TICK
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return total

t0 = time.perf_counter()
from pyspark.sql import SparkSession
from ims_fhir.spark import SparkOptions, convert_dataset
spark = (SparkSession.builder.master("local[2]").config("spark.driver.memory", "1g")
         .config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
started = time.perf_counter() - t0
cpu0 = cpu_tree()
t1 = time.perf_counter()
result = convert_dataset(spark, SparkOptions("synthetic-0", "https://clinic.example.org/ims"), paths=[sys.argv[1]])
result.write(sys.argv[2], mode="overwrite")
converted = time.perf_counter() - t1
cpu1 = cpu_tree()
spark.stop()
print(json.dumps({"startup_s": started, "convert_s": converted, "startup_cpu_s": cpu0, "convert_cpu_s": cpu1 - cpu0}))
"""


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return found


_TICK = os.sysconf("SC_CLK_TCK")


def _hwm_kb(pid: int) -> tuple[str, int, float] | None:
    """(name, peak RSS in kB, CPU seconds so far) of a process."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / _TICK
        return fields["Name"].strip(), int(fields["VmHWM"].split()[0]), cpu
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _run(cmd: list[str]) -> tuple[float, dict[int, tuple[str, int, float]], str]:
    """Run a command; returns (seconds, {pid: (name, peak RSS kB, CPU s)} of it and its descendants, stdout)."""
    peaks: dict[int, tuple[str, int, float]] = {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for pid in _descendants(proc.pid):
                    got = _hwm_kb(pid)
                    if got is not None:
                        peaks[pid] = (got[0], max(got[1], peaks.get(pid, ("", 0, 0.0))[1]), got[2])
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        elapsed = time.perf_counter() - start
        done.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if code not in (0, 1) or "Traceback" in stderr or "ims-fhir: error" in stderr:
        sys.exit(f"benchmark step failed ({code}): {' '.join(cmd)}\n{stderr}")
    return elapsed, peaks, stdout


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _generate(path: Path, records: int, seed: int) -> int:
    patients = max(1, round(records / 8))  # patient + 1 assessment + 6 treatments
    subprocess.run([sys.executable, "-m", "ims_fhir.dev.synthetic", "export", "--patients", str(patients), "--seed", str(seed),
                    "--format", "ndjson", "--out", str(path)], check=True, capture_output=True)
    with open(path, "rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 22), b""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000, help="records of the convert runs (default 1000000)")
    ap.add_argument("--jobs", default="1,2", help="comma-separated --jobs values (default 1,2)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per setting; the best counts (default 2)")
    ap.add_argument("--spark-records", type=int, help="records of the Spark comparison (default: --records)")
    ap.add_argument("--no-spark", action="store_true", help="skip the Spark comparison")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", type=Path, help="keep inputs and outputs in this folder")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="ims-fhir-bench-parallel-"))
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    figures: dict[str, object] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}

    inp = work / "export.ndjson"
    t0 = time.perf_counter()
    n = _generate(inp, args.records, args.seed)
    print(f"input: {n:,} records ({inp.stat().st_size / 1e6:,.0f} MB) generated in {time.perf_counter() - t0:.1f} s; "
          f"{os.cpu_count()} CPUs; load average {_load()}")
    print(f"{'run':<22}{'seconds':>9}{'records/s':>11}{'speed-up':>10}{'CPU s':>8}  {'peak RSS MB per process':<30}"
          "load before -> after")
    runs: dict[str, dict[str, object]] = {}
    base = None
    for jobs in [int(j) for j in args.jobs.split(",")]:
        best: tuple[float, dict[int, tuple[str, int, float]]] | None = None
        loads = []
        for _ in range(args.repeat):
            before = _load()
            seconds, peaks, _ = _run([py, "-m", "ims_fhir", "convert", str(inp), "--out", str(work / f"out-{jobs}"),
                                      "--quiet", "--jobs", str(jobs), *SOURCE_ARGS])
            loads.append(f"{before} -> {_load()}")
            if best is None or seconds < best[0]:
                best = (seconds, peaks)
        assert best is not None
        seconds, peaks = best
        rate = n / seconds
        base = base or rate
        rss = sorted(kb // 1024 for name, kb, _ in peaks.values() if name.startswith("python"))
        cpu = sum(c for name, _, c in peaks.values() if name.startswith("python"))
        per_cpu = sorted(round(c, 1) for name, _, c in peaks.values() if name.startswith("python"))
        print(f"{'convert --jobs ' + str(jobs):<22}{seconds:>9.1f}{rate:>11,.0f}{rate / base:>9.2f}x{cpu:>8.1f}  "
              f"{', '.join(map(str, rss)):<30}{'; '.join(loads)}")
        print(f"{'':<22}CPU s per process: {', '.join(map(str, per_cpu))}; records per CPU second: {n / cpu:,.0f}")
        runs[f"jobs_{jobs}"] = {"seconds": round(seconds, 2), "records_per_s": round(rate), "speedup": round(rate / base, 2),
                                "cpu_seconds": round(cpu, 1), "peak_rss_mb_per_process": rss, "load": loads,
                                "cpu_seconds_per_process": sorted(round(c, 1) for name, _, c in peaks.values()
                                                                  if name.startswith("python"))}
    figures["convert"] = runs

    if not args.no_spark:
        sn = n
        sinp = inp
        if args.spark_records and args.spark_records != args.records:
            sinp = work / "export-spark.ndjson"
            sn = _generate(sinp, args.spark_records, args.seed)
            seconds2, _, _ = _run([py, "-m", "ims_fhir", "convert", str(sinp), "--out", str(work / "out-spark-ref"),
                                   "--quiet", "--jobs", "2", *SOURCE_ARGS])
        else:
            seconds2 = float(runs.get("jobs_2", {}).get("seconds", 0)) or _run(  # type: ignore[arg-type]
                [py, "-m", "ims_fhir", "convert", str(sinp), "--out", str(work / "out-spark-ref"), "--quiet", "--jobs", "2",
                 *SOURCE_ARGS])[0]
        before = _load()
        total, peaks, out = _run([py, "-c", SPARK, str(sinp), str(work / "out-spark")])
        timing = json.loads(out.strip().splitlines()[-1])
        ratio = timing["convert_s"] / seconds2
        rate = sn / timing["convert_s"]
        rss = sorted((name, kb // 1024) for name, kb, _ in peaks.values() if name.startswith(("java", "python")))
        print(f"spark local[2]: {sn:,} records converted in {timing['convert_s']:.1f} s ({rate:,.0f} records/s; "
              f"start-up {timing['startup_s']:.1f} s more) vs convert --jobs 2 {seconds2:.1f} s: {ratio:.2f}x the time "
              f"(target <= 2x); load {before} -> {_load()}")
        print(f"spark CPU s: conversion {timing['convert_cpu_s']:.1f} ({sn / max(timing['convert_cpu_s'], 1e-9):,.0f} "
              f"records per CPU second), start-up {timing['startup_cpu_s']:.1f}; peak RSS MB per process: "
              f"{', '.join(f'{name} {mb}' for name, mb in rss)}")
        figures["spark"] = {"records": sn, "convert_s": round(timing["convert_s"], 2), "startup_s": round(timing["startup_s"], 2),
                            "convert_cpu_s": round(timing["convert_cpu_s"], 1),
                            "startup_cpu_s": round(timing["startup_cpu_s"], 1),
                            "peak_rss_mb_per_process": [f"{name} {mb}" for name, mb in rss],
                            "convert_jobs2_s": round(seconds2, 2), "ratio": round(ratio, 2)}
    print(json.dumps(figures))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
