"""The committed examples: ``examples/clinic-small`` (one clinic in all three forms) and ``examples/bad``.

``python -m ims_fhir.dev.synthetic examples`` rewrites them; a test checks that the
committed files are exactly what it writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ims_fhir.records.writers import RECORD_TYPES, write_csv_folder, write_json_document, write_ndjson

from .generator import generate, source

__all__ = ["BAD_SOURCE", "EXAMPLES_SEED", "write_examples"]

EXAMPLES_SEED = 7
#: ``examples/bad`` is another clinic, with ids of its own: converting or pushing it after the
#: README walkthrough must not touch the records of ``examples/clinic-small``. NDJSON carries
#: no source, so these are given on the command line (``--clinic-id``, ``--system-base``).
BAD_SOURCE = {"clinic_id": "synthetic-bad", "system_base": "https://bad-clinic.example.org/ims"}


def write_examples(root: str | Path) -> None:
    """(Re)write ``root/clinic-small`` (one clinic in all three forms) and ``root/bad``."""
    root = Path(root)
    records = sorted(
        generate(5, seed=EXAMPLES_SEED, practitioners=2, treatments_per_patient=(2, 4), full=True),
        key=lambda pair: RECORD_TYPES.index(pair[0]),
    )
    clinic = {**source(EXAMPLES_SEED), "country": "CA", "jurisdiction": "CA-BC"}
    small = root / "clinic-small"
    write_json_document(small / "clinic.json", clinic, records)
    write_ndjson(small / "records.ndjson", records)
    write_csv_folder(small / "csv", clinic, records)
    _write_bad_examples(root / "bad" / "records.ndjson")


def _write_bad_examples(path: Path) -> None:
    """An NDJSON file of clinic :data:`BAD_SOURCE`: valid records and records that each break one rule."""
    practitioner = {
        "record_type": "practitioner",
        "id": "PR-BAD-1",
        "family_name": "Example",
        "given_names": ["Robin"],
        "ims_certified": True,
    }
    patient = {
        "record_type": "patient",
        "id": "P-BAD-1",
        "family_name": "Testperson",
        "given_names": ["Alex"],
        "birth_date": "1980-05-17",
        "sex": "female",
    }

    def assessment(record_id: str, **changes: Any) -> dict[str, Any]:
        record = {
            "record_type": "assessment",
            "id": record_id,
            "patient_id": "P-BAD-1",
            "practitioner_id": "PR-BAD-1",
            "performed_at": "2025-03-04T09:30:00-08:00",
            "pain": {"nrs": 6, "locations": [{"region": "neck", "side": "midline"}]},
            "palpation": [{"muscle": "upper_trapezius", "side": "left", "tender": True, "taut_band": True}],
            "candidacy": {"suitable": True},
        }
        record.update(changes)
        return record

    def treatment(record_id: str, **changes: Any) -> dict[str, Any]:
        record = {
            "record_type": "treatment",
            "id": record_id,
            "patient_id": "P-BAD-1",
            "practitioner_id": "PR-BAD-1",
            "assessment_id": "A-BAD-1",
            "started_at": "2025-03-04T10:15:00-08:00",
            "ended_at": "2025-03-04T10:45:00-08:00",
            "status": "completed",
            "consent_obtained": True,
            "sites": [
                {
                    "muscle": "upper_trapezius",
                    "side": "left",
                    "insertions": 4,
                    "needle_diameter_mm": 0.25,
                    "needle_length_mm": 30,
                }
            ],
            "pain_before_nrs": 6,
            "pain_after_nrs": 4,
        }
        record.update(changes)
        return record

    untyped = assessment("A-TYPO-FIELD")
    untyped["pian"] = untyped.pop("pain")
    lines = [
        json.dumps(practitioner),
        json.dumps(patient),
        json.dumps(assessment("A-BAD-1")),
        json.dumps(assessment("A-NRS-11", pain={"nrs": 11})),
        json.dumps(assessment("A-NO-OFFSET", performed_at="2025-03-04T09:30:00")),
        json.dumps(
            assessment("A-UNKNOWN-MUSCLE", palpation=[{"muscle": "upper_trapezoid", "side": "left", "tender": True}])
        ),
        json.dumps(untyped),
        '{"record_type": "patient", "id": "P-BAD-2", "family_name": "Sample"',
        json.dumps(treatment("T-BAD-1")),
        json.dumps(treatment("T-NO-CONSENT", consent_obtained=False)),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
