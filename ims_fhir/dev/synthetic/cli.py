"""``python -m ims_fhir.dev.synthetic examples|export``: the generator's command line.

    python -m ims_fhir.dev.synthetic examples [--out examples]
    python -m ims_fhir.dev.synthetic export --patients N --seed S --format ndjson|ndjson.gz|json|csv --out PATH
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ims_fhir.records.writers import RECORD_TYPES, iter_records_by_type, write_csv_folder, write_json_document, write_ndjson

from .examples import write_examples
from .generator import generate, source

__all__ = ["main"]

_FORMATS = ("ndjson", "ndjson.gz", "json", "csv")


def _treatment_range(text: str) -> int | tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        return (int(low), int(high)) if high else int(low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a range like 2-4, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m ims_fhir.dev.synthetic", description="Synthetic IMS records.")
    commands = parser.add_subparsers(dest="command", required=True)
    examples = commands.add_parser("examples", help="regenerate examples/clinic-small and examples/bad")
    examples.add_argument("--out", default="examples", type=Path, help="examples folder (default: examples)")
    export = commands.add_parser("export", help="write a synthetic clinic export")
    export.add_argument("--patients", type=int, required=True)
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--format", choices=_FORMATS, required=True)
    export.add_argument("--out", type=Path, required=True, help="file, or folder for csv")
    export.add_argument("--practitioners", type=int, default=3)
    export.add_argument("--assessments-per-patient", type=int, default=1)
    export.add_argument(
        "--treatments-per-patient", type=_treatment_range, default=6, help="a count or a range like 2-4"
    )
    export.add_argument("--full", action="store_true", help="cover every enumeration value and optional field")
    args = parser.parse_args(argv)

    if args.command == "examples":
        write_examples(args.out)
        print(f"wrote {args.out / 'clinic-small'} and {args.out / 'bad'}")
        return 0

    gzipped = args.out.suffix.lower() == ".gz"
    if args.format.startswith("ndjson") and gzipped != (args.format == "ndjson.gz"):
        parser.error(f"--format {args.format} does not match the file name {args.out.name}")
    try:
        records = generate(
            args.patients,
            seed=args.seed,
            practitioners=args.practitioners,
            assessments_per_patient=args.assessments_per_patient,
            treatments_per_patient=args.treatments_per_patient,
            full=args.full,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.format == "json":
        counts = write_json_document(args.out, source(args.seed), records, indent=None)
    elif args.format == "csv":
        counts = write_csv_folder(args.out, source(args.seed), records)
    else:
        # Same record order as the JSON and CSV forms: grouped by type.
        counts = write_ndjson(args.out, iter_records_by_type(records))
    summary = ", ".join(f"{counts[t]} {t}s" for t in RECORD_TYPES)
    print(f"wrote {summary} to {args.out}")
    return 0
