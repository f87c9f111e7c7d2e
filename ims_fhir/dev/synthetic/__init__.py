"""Seeded generator of synthetic, valid IMS records (``ims-record/1``), for tests, benchmarks and examples.

Modules, by role: :mod:`.tables` (the enumerations and clinical tables the records are
drawn from), :mod:`.generator` (``generate``, ``source``), :mod:`.examples` (the committed
``examples/`` folder), :mod:`.cli` (``python -m ims_fhir.dev.synthetic``). No patient data
is involved anywhere.
"""

from __future__ import annotations

from .cli import main
from .examples import EXAMPLES_SEED, write_examples
from .generator import generate, source
from .tables import (
    ASSESSMENT_STATUSES,
    CONTRAINDICATIONS,
    ENUMERATIONS,
    EVENTS,
    INSTRUMENT_RANGES,
    INSTRUMENTS,
    MOVEMENTS,
    MUSCLES,
    REGIONS,
    SEGMENTS,
    SEVERITIES,
    SEXES,
    SIDES,
    SIGNS,
    TREATMENT_STATUSES,
    TWITCH_RESPONSES,
)

__all__ = [
    "ASSESSMENT_STATUSES",
    "CONTRAINDICATIONS",
    "ENUMERATIONS",
    "EVENTS",
    "EXAMPLES_SEED",
    "INSTRUMENTS",
    "INSTRUMENT_RANGES",
    "MOVEMENTS",
    "MUSCLES",
    "REGIONS",
    "SEGMENTS",
    "SEVERITIES",
    "SEXES",
    "SIDES",
    "SIGNS",
    "TREATMENT_STATUSES",
    "TWITCH_RESPONSES",
    "generate",
    "main",
    "source",
    "write_examples",
]
