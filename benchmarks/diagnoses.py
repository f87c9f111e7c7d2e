"""Benchmark of convert's first pass, the diagnosis counts (run on demand; not part of the test suite).

    python benchmarks/diagnoses.py [--records 200000] [--seed 7]

Generates a seeded synthetic export as NDJSON (about 1 assessment and 6 treatments per
patient; the generator gives some assessments diagnoses), then times what ``convert`` adds
for a session's diagnosis reasons (:mod:`ims_fhir.diagnoses`): the first pass over the file
into a WorkStore, and one count lookup per treatment. Prints one JSON line of figures; compare
the first pass with ``benchmarks/convert.py``'s conversion time for the same size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import orjson

from ims_fhir.dev.synthetic import generate
from ims_fhir.diagnoses import input_counts
from ims_fhir.records.writers import write_ndjson
from ims_fhir.workstore import WorkStore

SCOPE = "https://clinic.example.org/ims"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ims-fhir-bench-") as tmp:
        path = Path(tmp) / "export.ndjson"
        write_ndjson(path, generate(max(1, args.records // 8), seed=args.seed, practitioners=5))
        size = path.stat().st_size
        lines = path.read_bytes().splitlines()
        sessions = [orjson.loads(line)["assessment_id"] for line in lines if b'"record_type":"treatment"' in line
                    and b'"assessment_id"' in line]
        with WorkStore(tmp) as store:
            started = time.perf_counter()
            counts, _ = input_counts(path, "ndjson")
            store.add_diagnoses(SCOPE, counts)
            first_pass = time.perf_counter() - started
            started = time.perf_counter()
            named = sum(store.diagnoses(SCOPE, aid) or 0 for aid in sessions)
            lookups = time.perf_counter() - started
            diagnosed = store.db.execute("SELECT COUNT(*) FROM dx").fetchone()[0]
    print(json.dumps({
        "records": len(lines), "bytes": size,
        "assessments_with_diagnoses": diagnosed, "sessions": len(sessions), "condition_references": named,
        "first_pass_s": round(first_pass, 3), "first_pass_records_per_s": round(len(lines) / first_pass),
        "lookups_s": round(lookups, 3), "lookup_us": round(lookups / max(1, len(sessions)) * 1e6, 2),
    }))


if __name__ == "__main__":
    main()
