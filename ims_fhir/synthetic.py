"""Seeded generator of synthetic, valid IMS records (``ims-record/1``).

Everything here is invented: family names come from a small fixed list of obviously
synthetic names (``Testperson``, ``Example`` ...), health numbers start with ``00``,
phone numbers are in the fictional ``555-01xx`` range, e-mail addresses and identifier
systems are under ``example.org``. No patient data is involved anywhere.

Terms used here:

record
    A pair ``(record_type, fields)`` as consumed by :mod:`ims_fhir.records.writers`.
profile
    A clinical presentation (neck and shoulder, arm, low back, leg, thoracic) that keeps
    one patient's regions, muscles, segments, movements and instruments consistent.
full coverage
    ``generate(..., full=True)``: the first five patients take the five profiles in turn,
    and every choice prefers an enumeration value not generated yet, so that within the
    first five patients every enumeration value and every optional field appears at
    least once (given ``assessments_per_patient >= 1`` and at least two treatments per
    patient). The first record of each type, the first site and the first adverse event
    carry every optional field. Coverage trades a little clinical plausibility for
    completeness; without ``full`` choices follow rough clinical frequencies.

The same arguments always give the same records (one ``random.Random(seed)``, no clock,
no global state), and patient ``i`` does not depend on how many patients follow it.
Records come out as a stream: practitioners first, then per patient the patient, its
assessments and its treatments.

The enumerations below are copied from the format spec. The validating models hold
the same lists (``ims_fhir.records.vocabulary``); the duplication is deliberate for
now, and a test checks that the two agree with each other and with the spec.

Command line::

    python -m ims_fhir.synthetic examples [--out examples]
    python -m ims_fhir.synthetic export --patients N --seed S --format ndjson|ndjson.gz|json|csv --out PATH
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ims_fhir.records.writers import (
    RECORD_TYPES,
    iter_records_by_type,
    write_csv_folder,
    write_json_document,
    write_ndjson,
)

__all__ = [
    "ASSESSMENT_STATUSES",
    "CONTRAINDICATIONS",
    "ENUMERATIONS",
    "EVENTS",
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

# ----------------------------------------------------------------- enumerations (spec)

# One list of each enumeration in the project: the format's own (records/vocabulary.py).
# tests/test_synthetic.py checks them against its own copy of the spec's lists.
from .records.vocabulary import (  # noqa: E402
    ASSESSMENT_STATUSES,
    CONTRAINDICATIONS,
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
from .records.vocabulary import VOCABULARIES as ENUMERATIONS  # noqa: E402

# ----------------------------------------------------------------- clinical tables

SYSTEM_BASE = "https://clinic.example.org/ims"
PHN_SYSTEM = "https://health.example.org/phn"
MRN_SYSTEM = "https://hospital.example.org/mrn"
REGISTRATION_SYSTEM = "https://college.example.org/physiotherapists"

FAMILY_NAMES = ("Testperson", "Example", "Sample", "Specimen", "Placeholder", "Fictional", "Demo", "Synthetic")
GIVEN_NAMES = ("Alex", "Sam", "Robin", "Jordan", "Casey", "Morgan", "Taylor", "Jamie", "Riley", "Avery", "Quinn")


def _segments(prefix: str, first: int, last: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(first, last + 1))


# muscle -> (segments it is supplied from, needle depth class)
_MUSCLE_INFO: dict[str, tuple[tuple[str, ...], str]] = {
    "suboccipitals": (("C1", "C2"), "short"),
    "splenius_capitis": (("C2", "C3", "C4"), "short"),
    "cervical_multifidus": (_segments("C", 3, 8), "medium"),
    "scalenes": (_segments("C", 4, 8), "short"),
    "sternocleidomastoid": (("C2", "C3"), "short"),
    "upper_trapezius": (("C3", "C4"), "short"),
    "middle_trapezius": (("C3", "C4"), "short"),
    "levator_scapulae": (("C3", "C4", "C5"), "medium"),
    "rhomboids": (("C4", "C5"), "medium"),
    "supraspinatus": (("C5", "C6"), "medium"),
    "infraspinatus": (("C5", "C6"), "medium"),
    "teres_minor": (("C5", "C6"), "medium"),
    "deltoid": (("C5", "C6"), "medium"),
    "pectoralis_minor": (("C6", "C7", "C8"), "medium"),
    "biceps_brachii": (("C5", "C6"), "medium"),
    "triceps_brachii": (("C6", "C7", "C8"), "medium"),
    "wrist_extensors": (("C6", "C7", "C8"), "short"),
    "wrist_flexors": (("C6", "C7", "C8", "T1"), "short"),
    "thoracic_multifidus": (_segments("T", 1, 12), "medium"),
    "lumbar_multifidus": (_segments("L", 1, 5) + ("S1",), "long"),
    "erector_spinae": (_segments("T", 6, 12) + _segments("L", 1, 5), "medium"),
    "quadratus_lumborum": (("T12", "L1", "L2", "L3"), "long"),
    "iliopsoas": (_segments("L", 1, 4), "long"),
    "gluteus_maximus": (("L5", "S1", "S2"), "long"),
    "gluteus_medius": (("L4", "L5", "S1"), "long"),
    "gluteus_minimus": (("L4", "L5", "S1"), "long"),
    "piriformis": (("L5", "S1", "S2"), "long"),
    "tensor_fasciae_latae": (("L4", "L5", "S1"), "medium"),
    "adductors": (("L2", "L3", "L4"), "medium"),
    "hamstrings": (("L5", "S1", "S2"), "long"),
    "rectus_femoris": (("L2", "L3", "L4"), "medium"),
    "vastus_lateralis": (("L2", "L3", "L4"), "medium"),
    "vastus_medialis": (("L2", "L3", "L4"), "medium"),
    "gastrocnemius": (("S1", "S2"), "medium"),
    "soleus": (("S1", "S2"), "medium"),
    "tibialis_anterior": (("L4", "L5"), "medium"),
    "peroneals": (("L5", "S1"), "medium"),
}

# depth class -> (needle diameters in mm, needle lengths in mm); all within the spec's
# 0.12-0.50 mm (two decimals at most) and 10-125 mm.
_NEEDLES: dict[str, tuple[tuple[float, ...], tuple[int, ...]]] = {
    "short": ((0.12, 0.16, 0.18, 0.20, 0.25), (13, 25, 30)),
    "medium": ((0.25, 0.30), (30, 40, 50)),
    "long": ((0.30, 0.35, 0.40), (60, 75, 100, 125)),
}

# Typical full range in degrees; extension of elbow and knee is measured from 0 (full
# extension), so a reading there is the lack of extension.
_ROM_NORMAL: dict[str, int] = {
    "cervical_flexion": 50, "cervical_extension": 60, "cervical_rotation": 80,
    "cervical_lateral_flexion": 45, "thoracic_rotation": 40, "lumbar_flexion": 60,
    "lumbar_extension": 25, "lumbar_lateral_flexion": 25, "shoulder_flexion": 180,
    "shoulder_abduction": 180, "shoulder_external_rotation": 90, "shoulder_internal_rotation": 70,
    "elbow_extension": 0, "wrist_extension": 70, "hip_flexion": 120, "hip_internal_rotation": 35,
    "hip_external_rotation": 45, "knee_flexion": 135, "knee_extension": 0, "ankle_dorsiflexion": 20,
    "straight_leg_raise": 80,
}  # fmt: skip
_UNSIDED_MOVEMENTS = frozenset({"cervical_flexion", "cervical_extension", "lumbar_flexion", "lumbar_extension"})
_AXIAL_REGIONS = frozenset({"head", "neck", "upper_back", "lower_back", "chest", "abdomen"})
_SEGMENTAL_SIGNS = frozenset({"trophedema", "dermatomal_hyperalgesia", "paraspinal_tenderness", "tender_motor_points"})

# Contraindications that make a patient unsuitable; the rest are relative (adapt the
# technique). Full coverage draws the relative ones first so that early patients are
# still treated and the maximal (completed) treatment comes early.
_ABSOLUTE_CONTRAINDICATIONS = ("bleeding_disorder", "unable_to_consent")
_RELATIVE_CONTRAINDICATIONS = tuple(c for c in CONTRAINDICATIONS if c not in _ABSOLUTE_CONTRAINDICATIONS)

_EVENT_SEVERITIES: dict[str, tuple[str, ...]] = {
    "post_needling_soreness": ("mild", "moderate"),
    "bruising": ("mild", "moderate"),
    "bleeding": ("mild", "moderate"),
    "vasovagal_reaction": ("mild", "moderate", "severe"),
    "fatigue": ("mild", "moderate"),
    "nausea": ("mild", "moderate"),
    "pneumothorax": ("severe",),
    "other": ("mild", "moderate", "severe"),
}
_EVENT_WEIGHTS = (50, 20, 8, 5, 10, 4, 0.5, 2.5)  # in EVENTS order

_SIGN_NOTES = {
    "trophedema": "Matchstick test positive; peau d'orange over the dermatome",
    "pilomotor_reflex": "Goose flesh on scratching the skin",
    "vasomotor_change": "Skin cooler and mottled",
    "sudomotor_change": "Increased sweating over the segment",
    "hair_loss": "Sparse hair over the segment",
    "dermatomal_hyperalgesia": "Skin rolling tender over the dermatome",
    "tender_motor_points": "Motor points tender to pressure",
    "taut_bands": "Palpable taut bands",
    "muscle_shortening": "Shortened on length testing",
    "paraspinal_tenderness": "Multifidus tender at this level",
}
_EVENT_NOTES = {
    "post_needling_soreness": "Soreness for 24-48 hours, eased with heat",
    "bruising": "Small bruise at an insertion site",
    "bleeding": "Minor bleeding at an insertion site; pressure applied",
    "vasovagal_reaction": "Light-headed and pale; recovered lying down",
    "fatigue": "Tired for the rest of the day",
    "nausea": "Brief nausea after the session",
    "pneumothorax": "Short of breath the same evening; referred to emergency, pneumothorax confirmed",
    "other": "Headache the same evening",
}
_PALPATION_NOTES = (
    "Reproduces the familiar pain",
    "Local twitch on snapping palpation",
    "Referred pain on sustained pressure",
    "Guarded; examination limited",
)
_ASSESSMENT_NOTES = (
    "Home exercise programme started",
    "Explained IMS: mechanism, expected soreness and risks",
    "Imaging report reviewed: no red flags",
    "Reassess after four sessions",
)
_TREATMENT_NOTES = (
    "Good twitch responses; tolerated well",
    "Heat applied after needling",
    "Home stretches reviewed",
    "Sleeping better since the last session",
)
# reason, adverse event it goes with (or None)
_STOPPED_REASONS = (
    ("Patient felt faint after the first site; session stopped", "vasovagal_reaction"),
    ("Patient asked to stop: insertions too painful today", None),
    ("Stopped: patient became nauseous", "nausea"),
)
# reason, consent obtained
_NOT_DONE_REASONS = (
    ("Patient declined needling today", False),
    ("New anticoagulant prescription; needling deferred until reviewed", True),
    ("Pain flare; manual therapy and exercise instead of needling", True),
)
_UNSUITABLE_REASON = "Not a candidate for IMS at assessment; exercise programme instead"


@dataclass(frozen=True)
class _Profile:
    complaints: tuple[str, ...]
    regions: tuple[str, ...]
    muscles: tuple[str, ...]
    segments: tuple[str, ...]
    movements: tuple[str, ...]
    instruments: tuple[str, ...]


# The union of the profiles covers every region, muscle, segment, movement and
# instrument (tests check it); full coverage visits each profile once, first.
_PROFILES: tuple[_Profile, ...] = (
    _Profile(  # neck and shoulder
        complaints=(
            "Neck pain spreading to the shoulder blade",
            "Stiff neck with headaches at the base of the skull",
            "Shoulder pain when reaching overhead",
        ),
        regions=("neck", "head", "shoulder", "upper_arm", "upper_back"),
        muscles=(
            "suboccipitals", "splenius_capitis", "cervical_multifidus", "scalenes",
            "sternocleidomastoid", "upper_trapezius", "middle_trapezius", "levator_scapulae",
            "rhomboids", "supraspinatus", "infraspinatus", "teres_minor", "deltoid",
            "pectoralis_minor",
        ),
        segments=_segments("C", 1, 8) + ("T1", "T2"),
        movements=(
            "cervical_flexion", "cervical_extension", "cervical_rotation", "cervical_lateral_flexion",
            "shoulder_flexion", "shoulder_abduction", "shoulder_external_rotation",
            "shoulder_internal_rotation",
        ),
        instruments=("ndi", "psfs", "promis_pi_6a"),
    ),  # fmt: skip
    _Profile(  # arm
        complaints=(
            "Lateral elbow pain when gripping",
            "Forearm ache and weak grip",
            "Tingling in the thumb and index finger",
        ),
        regions=("elbow", "forearm", "wrist_hand", "upper_arm", "neck"),
        muscles=(
            "biceps_brachii", "triceps_brachii", "wrist_extensors", "wrist_flexors", "deltoid",
            "scalenes", "cervical_multifidus", "pectoralis_minor",
        ),
        segments=_segments("C", 5, 8) + ("T1",),
        movements=("elbow_extension", "wrist_extension", "cervical_rotation", "shoulder_flexion", "shoulder_abduction"),
        instruments=("quickdash", "psfs"),
    ),  # fmt: skip
    _Profile(  # low back and buttock
        complaints=(
            "Low back pain radiating into the buttock",
            "Chronic low back pain, worse with sitting",
            "Hip and groin pain after walking",
        ),
        regions=("lower_back", "buttock", "hip", "groin", "thigh", "abdomen"),
        muscles=(
            "lumbar_multifidus", "erector_spinae", "quadratus_lumborum", "iliopsoas",
            "gluteus_maximus", "gluteus_medius", "gluteus_minimus", "piriformis",
            "thoracic_multifidus",
        ),
        segments=("T10", "T11", "T12") + _segments("L", 1, 5) + _segments("S", 1, 5),
        movements=(
            "lumbar_flexion", "lumbar_extension", "lumbar_lateral_flexion", "hip_flexion",
            "hip_internal_rotation", "hip_external_rotation", "straight_leg_raise",
        ),
        instruments=("oswestry", "psfs", "promis_pi_6a"),
    ),  # fmt: skip
    _Profile(  # leg
        complaints=(
            "Knee pain on stairs",
            "Calf tightness and heel pain when running",
            "Pain down the back of the thigh",
        ),
        regions=("knee", "thigh", "lower_leg", "ankle_foot", "hip", "lower_back"),
        muscles=(
            "tensor_fasciae_latae", "adductors", "hamstrings", "rectus_femoris", "vastus_lateralis",
            "vastus_medialis", "gastrocnemius", "soleus", "tibialis_anterior", "peroneals",
            "gluteus_medius", "lumbar_multifidus",
        ),
        segments=_segments("L", 2, 5) + ("S1", "S2"),
        movements=(
            "knee_flexion", "knee_extension", "ankle_dorsiflexion", "hip_flexion",
            "straight_leg_raise", "hip_internal_rotation",
        ),
        instruments=("psfs", "oswestry"),
    ),  # fmt: skip
    _Profile(  # thoracic and chest wall
        complaints=(
            "Mid-back pain between the shoulder blades",
            "Chest wall pain since a bout of coughing",
            "Rib cage tightness when turning",
        ),
        regions=("upper_back", "chest", "abdomen", "neck", "shoulder"),
        muscles=(
            "thoracic_multifidus", "erector_spinae", "rhomboids", "middle_trapezius",
            "pectoralis_minor", "upper_trapezius", "levator_scapulae",
        ),
        segments=_segments("T", 1, 12),
        movements=("thoracic_rotation", "cervical_rotation", "shoulder_flexion", "lumbar_flexion"),
        instruments=("promis_pi_6a", "psfs", "ndi"),
    ),  # fmt: skip
)
_PROFILE_WEIGHTS = (30, 10, 35, 15, 10)

# The window in which first visits fall.
_FIRST_VISIT = dt.date(2024, 1, 8)
_VISIT_SPAN_DAYS = 630


#: diagnoses a clinic might chart (synthetic picks; ICD codes as a clinic would write them)
_DIAGNOSES: tuple[tuple[str, str, str], ...] = (
    ("icd-10-ca", "M54.2", "Cervicalgia"),
    ("icd-10-ca", "M54.5", "Low back pain"),
    ("icd-10-cm", "M79.1", "Myalgia"),
    ("icd-9", "724", "Back disorder (MSP diagnostic code)"),
    ("icd-9", "723", "Neck disorder (MSP diagnostic code)"),
    ("snomed", "247398009", "Neuropathic pain"),
)


def source(seed: int = 0) -> dict[str, str]:
    """The ``source`` object of a synthetic clinic export."""
    return {
        "clinic_id": f"synthetic-{seed}",
        "clinic_name": f"Synthetic IMS Clinic {seed}",
        "system_base": SYSTEM_BASE,
    }


# ----------------------------------------------------------------- time


def _pacific_offset(day: dt.date) -> str:
    """UTC offset of America/Vancouver on ``day`` for daytime appointments.

    Daylight time runs from the second Sunday in March to the first Sunday in November;
    appointments are in the daytime, so the 02:00 switch itself never matters.
    """
    march = dt.date(day.year, 3, 8)
    dst_start = march + dt.timedelta(days=(6 - march.weekday()) % 7)
    november = dt.date(day.year, 11, 1)
    dst_end = november + dt.timedelta(days=(6 - november.weekday()) % 7)
    return "-07:00" if dst_start <= day < dst_end else "-08:00"


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + _pacific_offset(moment.date())


def _weekday(day: dt.date) -> dt.date:
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


# ----------------------------------------------------------------- generator


class _Coverage:
    """Enumeration values not generated yet (only in full-coverage mode), in a fixed order."""

    def __init__(self, enabled: bool) -> None:
        self.pending: dict[str, list[str]] = {}
        if enabled:
            self.pending = {name: list(values) for name, values in ENUMERATIONS.items()}
            self.pending["contraindication"] = [*_RELATIVE_CONTRAINDICATIONS, *_ABSOLUTE_CONTRAINDICATIONS]

    def waiting(self, name: str, allowed: Iterable[str]) -> list[str]:
        pending = self.pending.get(name)
        if not pending:
            return []
        allowed = set(allowed)
        return [v for v in pending if v in allowed]

    def take(self, name: str, allowed: Sequence[str]) -> str | None:
        pending = self.pending.get(name)
        if pending:
            for i, value in enumerate(pending):
                if value in allowed:
                    del pending[i]
                    return value
        return None

    def seen(self, name: str, value: str) -> None:
        pending = self.pending.get(name)
        if pending and value in pending:
            pending.remove(value)


@dataclass
class _Patient:
    id: str
    profile: _Profile
    practitioner_id: str
    treating_practitioner_id: str
    main_side: str
    sex: str | None
    birth_date: dt.date | None
    pain_now: int = 6
    suitable: bool = True
    muscles: list[str] = field(default_factory=list)


class _Generator:
    def __init__(self, rng: random.Random, *, full: bool) -> None:
        self.rng = rng
        self.full = full
        self.cover = _Coverage(full)
        self.maximal_done: set[str] = set()
        self.assessment_count = 0
        self.treatment_count = 0

    # -- choices

    def maximal(self, kind: str) -> bool:
        """True once per kind in full mode: that record carries every optional field."""
        if self.full and kind not in self.maximal_done:
            self.maximal_done.add(kind)
            return True
        return False

    def maybe(self, p: float) -> bool:
        return self.rng.random() < p

    def wanted(self, p: float, *, force: bool = False, name: str | None = None, allowed: Iterable[str] = ()) -> bool:
        """Whether to give an optional field: forced, still needed for coverage, or by chance."""
        if force or (name is not None and self.cover.waiting(name, allowed)):
            return True
        return self.maybe(p)

    def choose(self, name: str, allowed: Sequence[str], weights: Sequence[float] | None = None) -> str:
        value = self.cover.take(name, allowed)
        if value is None:
            value = self.rng.choices(allowed, weights)[0] if weights else self.rng.choice(allowed)
            self.cover.seen(name, value)
        return value

    def choose_distinct(self, name: str, allowed: Sequence[str], low: int, high: int) -> list[str]:
        """Between ``low`` and ``high`` distinct values; in full mode at least every one still waiting."""
        count = max(self.rng.randint(low, high), len(self.cover.waiting(name, allowed)))
        count = min(count, len(allowed))
        chosen: list[str] = []
        for _ in range(count):
            chosen.append(self.choose(name, [v for v in allowed if v not in chosen]))
        return chosen

    def side(self, patient: _Patient, allowed: Sequence[str] = ("left", "right", "bilateral")) -> str:
        weights = [6 if s == patient.main_side else 2 for s in allowed]
        return self.choose("side", allowed, weights)

    # -- records

    def practitioner(self, index: int) -> dict[str, Any]:
        rng, full = self.rng, self.maximal("practitioner")
        record: dict[str, Any] = {"id": f"PR{index + 1:04d}", "family_name": rng.choice(FAMILY_NAMES)}
        if self.wanted(0.95, force=full):
            record["given_names"] = [rng.choice(GIVEN_NAMES)]
        if self.wanted(0.85, force=full):
            record["registration"] = {"system": REGISTRATION_SYSTEM, "value": f"PT-{index + 1:05d}"}
        if self.wanted(0.9, force=full):
            record["ims_certified"] = full or self.maybe(0.9)
        return record

    def patient(self, index: int, practitioners: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], _Patient]:
        rng, full = self.rng, self.maximal("patient")
        if self.full and index < len(_PROFILES):
            profile = _PROFILES[index]
        else:
            profile = rng.choices(_PROFILES, _PROFILE_WEIGHTS)[0]
        sex = None
        if self.wanted(0.92, force=full, name="sex", allowed=SEXES):
            sex = self.choose("sex", SEXES, (48, 48, 2, 2))
        young = sex == "female" and bool(self.cover.waiting("contraindication", ("pregnancy",)))
        birth_date = dt.date(rng.randint(1986, 2000) if young else rng.randint(1940, 2005), 1, 1) + dt.timedelta(
            days=rng.randint(0, 364)
        )
        family, given = rng.choice(FAMILY_NAMES), rng.choice(GIVEN_NAMES)
        record: dict[str, Any] = {"id": f"P{index + 1:06d}"}
        if self.wanted(0.9, force=full):
            identifiers = [{"system": PHN_SYSTEM, "value": f"00{index + 1:08d}"}]
            if self.wanted(0.1, force=full):
                identifiers.append({"system": MRN_SYSTEM, "value": f"MRN{index + 1:07d}"})
            record["identifiers"] = identifiers
        record["family_name"] = family
        if self.wanted(0.95, force=full):
            names = [given]
            if self.wanted(0.2, force=full):
                names.append(rng.choice([n for n in GIVEN_NAMES if n != given]))
            record["given_names"] = names
        if self.wanted(0.95, force=full):
            record["birth_date"] = birth_date.isoformat()
        if sex is not None:
            record["sex"] = sex
        if self.wanted(0.6, force=full):
            record["phone"] = f"+1-604-555-01{rng.randint(0, 99):02d}"
        if self.wanted(0.5, force=full):
            record["email"] = f"{given.lower()}.{family.lower()}.{index + 1}@example.org"
        practitioner = rng.choice(practitioners)
        treating = practitioner
        if practitioner.get("ims_certified") is False:
            certified = [p for p in practitioners if p.get("ims_certified") is not False]
            treating = rng.choice(certified) if certified else practitioner
        state = _Patient(
            id=record["id"],
            profile=profile,
            practitioner_id=practitioner["id"],
            treating_practitioner_id=treating["id"],
            main_side=rng.choice(("left", "right")),
            sex=sex,
            birth_date=birth_date if "birth_date" in record else None,
        )
        return record, state

    def assessment(self, patient: _Patient, when: dt.datetime) -> dict[str, Any]:
        rng, full = self.rng, self.maximal("assessment")
        profile = patient.profile
        self.assessment_count += 1
        record: dict[str, Any] = {
            "id": f"A{self.assessment_count:07d}",
            "patient_id": patient.id,
            "practitioner_id": patient.practitioner_id,
            "performed_at": _stamp(when),
        }
        if self.wanted(0.5, force=full, name="assessment_status", allowed=ASSESSMENT_STATUSES):
            record["status"] = self.choose("assessment_status", ASSESSMENT_STATUSES, (85, 5, 7, 3))
        if self.wanted(0.9, force=full):
            record["chief_complaint"] = rng.choice(profile.complaints)
        nrs = rng.choices(range(11), (1, 2, 4, 8, 12, 14, 14, 12, 9, 5, 2))[0]
        patient.pain_now = nrs
        if self.wanted(0.95, force=full, name="region", allowed=profile.regions):
            pain: dict[str, Any] = {"nrs": nrs}
            if self.wanted(0.8, force=full):
                # Mostly whole weeks; a few half weeks so that decimals occur too.
                weeks = rng.choice((2, 3, 4, 6, 8, 12, 16, 26, 52, 104, 260))
                pain["duration_weeks"] = weeks + 0.5 if weeks < 8 and self.maybe(0.3) else weeks
            if self.wanted(0.9, force=full, name="region", allowed=profile.regions):
                locations = []
                for i, region in enumerate(self.choose_distinct("region", profile.regions, 1, 3)):
                    location: dict[str, Any] = {"region": region}
                    axial = region in _AXIAL_REGIONS
                    sides = ("midline", "bilateral", "left", "right") if axial else ("left", "right", "bilateral")
                    if self.wanted(0.9, force=full and i == 0, name="side", allowed=sides):
                        location["side"] = self.side(patient, sides)
                    locations.append(location)
                pain["locations"] = locations
            record["pain"] = pain

        # Palpation first: its segments count towards coverage before the signs pad it.
        palpation: list[dict[str, Any]] = []
        if self.wanted(0.9, force=full, name="muscle", allowed=profile.muscles):
            for i, muscle in enumerate(self.choose_distinct("muscle", profile.muscles, 3, 7)):
                every = full and i == 0
                segments = _MUSCLE_INFO[muscle][0]
                item: dict[str, Any] = {"muscle": muscle}
                if self.wanted(0.9, force=every):
                    item["side"] = self.side(patient)
                if self.wanted(0.5, force=every, name="segment", allowed=segments):
                    item["segment"] = self.choose("segment", segments)
                tender = self.maybe(0.8)
                if self.wanted(0.9, force=every):
                    item["tender"] = tender
                if self.wanted(0.8, force=every):
                    item["taut_band"] = tender and self.maybe(0.7)
                if self.wanted(0.6, force=every):
                    item["trigger_point"] = tender and self.maybe(0.5)
                if self.wanted(0.15, force=every):
                    item["note"] = rng.choice(_PALPATION_NOTES)
                palpation.append(item)
                if tender:
                    patient.muscles.append(muscle)

        signs: list[dict[str, Any]] = []
        if self.wanted(0.8, force=full, name="sign", allowed=SIGNS):
            for i, sign in enumerate(self.choose_distinct("sign", SIGNS, 2, 5)):
                every = full and i == 0
                item = {"sign": sign, "present": every or self.maybe(0.7)}
                if sign in _SEGMENTAL_SIGNS or every:
                    if self.wanted(0.8, force=every):
                        item["segment"] = self.choose("segment", profile.segments)
                if self.wanted(0.6, force=every):
                    sides = ("left", "right", "bilateral")
                    if sign == "paraspinal_tenderness":
                        sides += ("midline",)
                    item["side"] = self.side(patient, sides)
                if self.wanted(0.2, force=every):
                    item["note"] = _SIGN_NOTES[sign]
                signs.append(item)
        # Segmental paraspinal tenderness is recorded level by level; full coverage
        # records the profile's levels not seen yet this way.
        for segment in self.cover.waiting("segment", profile.segments):
            self.cover.seen("segment", segment)
            side = self.side(patient, ("midline", "bilateral", "left", "right"))
            signs.append({"sign": "paraspinal_tenderness", "present": True, "segment": segment, "side": side})
        if signs:
            record["neuropathic_signs"] = signs
        if palpation:
            record["palpation"] = palpation

        if self.wanted(0.8, force=full, name="movement", allowed=profile.movements):
            sided_first = [m for m in profile.movements if m not in _UNSIDED_MOVEMENTS]
            movements = self.choose_distinct("movement", profile.movements, 2, 4)
            if full:  # the maximal item needs a movement that has a side
                movements.sort(key=lambda m: m in _UNSIDED_MOVEMENTS)
                if movements[0] in _UNSIDED_MOVEMENTS:
                    movements.insert(0, self.choose("movement", sided_first))
            measures = []
            for i, movement in enumerate(movements):
                every = full and i == 0
                item = {"movement": movement}
                if movement not in _UNSIDED_MOVEMENTS and self.wanted(0.9, force=every):
                    item["side"] = self.side(patient, ("left", "right"))
                if self.wanted(0.95, force=every):
                    normal = _ROM_NORMAL[movement]
                    item["degrees"] = rng.randint(0, 15) if normal == 0 else round(normal * rng.uniform(0.4, 1.0))
                if self.wanted(0.7, force=every):
                    item["painful"] = every or self.maybe(0.6)
                measures.append(item)
            record["range_of_motion"] = measures

        if self.wanted(0.7, force=full, name="instrument", allowed=profile.instruments):
            record["outcome_measures"] = [
                {"instrument": instrument, "score": _score(rng, instrument, nrs)}
                for instrument in self.choose_distinct("instrument", profile.instruments, 1, 2)
            ]

        may_be_pregnant = patient.sex == "female" and 18 <= _age(patient, when) <= 45
        eligible = [c for c in CONTRAINDICATIONS if c != "pregnancy" or may_be_pregnant]
        if self.wanted(0.9, force=full, name="contraindication", allowed=eligible):
            contraindications: list[str] = []
            relative = [c for c in eligible if c in _RELATIVE_CONTRAINDICATIONS]
            waiting = self.cover.waiting("contraindication", relative) or self.cover.waiting("contraindication", eligible)
            if waiting:
                contraindications = waiting[:3]
                for c in contraindications:
                    self.cover.seen("contraindication", c)
            elif self.maybe(0.15):
                weights = [
                    1 if c in _ABSOLUTE_CONTRAINDICATIONS else 3 if c == "anticoagulant_therapy" else 2 for c in eligible
                ]
                contraindications = [self.choose("contraindication", eligible, weights)]
            patient.suitable = not any(c in _ABSOLUTE_CONTRAINDICATIONS for c in contraindications)
            candidacy: dict[str, Any] = {"suitable": patient.suitable}
            if contraindications:
                candidacy["contraindications"] = contraindications
            if contraindications or self.wanted(0.3, force=full):
                if not patient.suitable:
                    candidacy["note"] = "Not suitable for IMS; referred back to the family physician"
                elif contraindications:
                    candidacy["note"] = (
                        "Relative contraindication discussed; finer needles and firm pressure after withdrawal"
                    )
                else:
                    candidacy["note"] = "Suitable; risks and expected soreness explained"
            record["candidacy"] = candidacy
        # diagnoses (added to the format later) draw from their own stream, seeded by the record id,
        # so that adding them left every other generated value as it was
        dx_rng = random.Random(f"diagnoses/{record['id']}")
        if full or dx_rng.random() < 0.35:
            picks = dx_rng.sample(range(len(_DIAGNOSES)), k=dx_rng.choice((1, 1, 2)))
            record["diagnoses"] = [dict(zip(("system", "code", "text"), _DIAGNOSES[i], strict=True)) for i in picks]
        if self.wanted(0.3, force=full):
            record["notes"] = rng.choice(_ASSESSMENT_NOTES)
        return record

    def treatment(
        self,
        patient: _Patient,
        when: dt.datetime,
        *,
        assessment_id: str | None,
        session: int,
        planned: int,
    ) -> dict[str, Any]:
        rng = self.rng
        if not patient.suitable:
            status = self.choose("treatment_status", ("not-done",))
        elif self.full and "treatment" not in self.maximal_done:
            status = self.choose("treatment_status", ("completed",))
        elif self.full and self.cover.waiting("event", EVENTS):
            # Until every adverse event has occurred, take the statuses not seen yet,
            # then needle, so that coverage does not depend on chance.
            status = self.cover.take("treatment_status", TREATMENT_STATUSES) or "completed"
        else:
            status = self.choose("treatment_status", TREATMENT_STATUSES, (86, 6, 8))
        # The maximal treatment is the first completed one, so it can carry sites,
        # pain after and adverse events.
        full = status == "completed" and self.maximal("treatment")
        self.treatment_count += 1
        record: dict[str, Any] = {
            "id": f"T{self.treatment_count:08d}",
            "patient_id": patient.id,
            "practitioner_id": patient.treating_practitioner_id,
        }
        if assessment_id is not None:
            record["assessment_id"] = assessment_id
        record["started_at"] = _stamp(when)
        needled = status != "not-done"
        if needled and self.wanted(0.85, force=full):
            record["ended_at"] = _stamp(when + dt.timedelta(minutes=rng.choice((20, 25, 30, 30, 40, 45))))
        elif not needled and self.maybe(0.3):
            record["ended_at"] = _stamp(when + dt.timedelta(minutes=rng.choice((5, 10, 15))))
        if status != "completed" or self.wanted(0.5, force=full):
            record["status"] = status
        consent = True
        stopped_event = None
        if status == "stopped":
            reason, stopped_event = rng.choice(_STOPPED_REASONS)
            record["status_reason"] = reason
        elif status == "not-done":
            if patient.suitable:
                reason, consent = rng.choice(_NOT_DONE_REASONS)
            else:
                reason, consent = _UNSUITABLE_REASON, False
            record["status_reason"] = reason
        if self.wanted(0.9, force=full):
            record["session_number"] = session
            if self.wanted(0.7, force=full):
                record["series_total"] = planned
        record["consent_obtained"] = consent

        sites: list[dict[str, Any]] = []
        if needled:
            candidates = patient.muscles or list(patient.profile.muscles)
            count = rng.randint(1, 2) if status == "stopped" else rng.randint(1, 5)
            muscles = rng.sample(candidates, min(count, len(candidates)))
            for i, muscle in enumerate(muscles):
                sites.append(self.site(patient, muscle, every=full and i == 0))
            record["sites"] = sites
        pain_before = patient.pain_now
        if self.wanted(0.85, force=full):
            record["pain_before_nrs"] = pain_before
        if status == "completed" and self.wanted(0.8, force=full):
            record["pain_after_nrs"] = max(0, pain_before - rng.choice((0, 1, 1, 2, 2, 3)))
        if needled:
            patient.pain_now = max(0, pain_before - rng.choice((0, 0, 1, 1, 2)))
            events = self.adverse_events(sites, stopped_event, every=full)
            if events:
                record["adverse_events"] = events
        if self.wanted(0.25, force=full):
            record["notes"] = rng.choice(_TREATMENT_NOTES)
        return record

    def site(self, patient: _Patient, muscle: str, *, every: bool) -> dict[str, Any]:
        rng = self.rng
        segments, depth = _MUSCLE_INFO[muscle]
        diameters, lengths = _NEEDLES[depth]
        self.cover.seen("muscle", muscle)
        site: dict[str, Any] = {"muscle": muscle, "side": self.side(patient)}
        if self.wanted(0.6, force=every, name="segment", allowed=segments):
            site["segment"] = self.choose("segment", segments)
        site["insertions"] = rng.randint(1, 12)
        if self.wanted(0.9, force=every):
            site["needle_diameter_mm"] = rng.choice(diameters)
        if self.wanted(0.9, force=every):
            site["needle_length_mm"] = rng.choice(lengths)
        if self.wanted(0.8, force=every, name="twitch_response", allowed=TWITCH_RESPONSES):
            site["twitch_response"] = self.choose("twitch_response", TWITCH_RESPONSES, (25, 45, 30))
        if self.wanted(0.12, force=every):
            site["electrical_stimulation"] = {
                "frequency_hz": rng.choice((2, 2, 4, 2.5, 10)),
                "duration_min": rng.choice((5, 10, 10, 15, 20)),
            }
        return site

    def adverse_events(
        self, sites: list[dict[str, Any]], stopped_event: str | None, *, every: bool
    ) -> list[dict[str, Any]]:
        rng = self.rng
        names: list[str] = []
        if stopped_event is not None:
            names.append(self.choose("event", (stopped_event,)))
        waiting = self.cover.waiting("event", EVENTS)
        if waiting:  # full coverage: up to three events per session
            for _ in range(min(3 - len(names), len(waiting))):
                names.append(self.choose("event", [e for e in EVENTS if e not in names]))
        elif not names and self.maybe(0.1):
            names.append(self.choose("event", EVENTS, _EVENT_WEIGHTS))
        events = []
        for i, name in enumerate(names):
            item: dict[str, Any] = {"event": name, "severity": self.choose("severity", _EVENT_SEVERITIES[name], None)}
            if sites and self.wanted(0.7, force=every and i == 0):
                item["muscle"] = rng.choice(sites)["muscle"]
            if self.wanted(0.5, force=every and i == 0):
                item["note"] = _EVENT_NOTES[name]
            events.append(item)
        return events


def _age(patient: _Patient, when: dt.datetime) -> int:
    if patient.birth_date is None:
        return -1
    born = patient.birth_date
    day = when.date()
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def _score(rng: random.Random, instrument: str, nrs: int) -> int | float:
    """A score within the instrument's range, loosely following the pain rating."""
    burden = min(1.0, max(0.0, nrs / 10 * rng.uniform(0.6, 1.2)))
    low, high = INSTRUMENT_RANGES[instrument]
    if instrument == "oswestry":  # percent of 50 points: even numbers
        score: int | float = 2 * round(burden * 35)
    elif instrument == "ndi":
        score = round(burden * 35)
    elif instrument == "psfs":  # higher is better; a mean with one decimal
        score = round(10 - burden * 8 + rng.uniform(-0.5, 0.5), 1)
    elif instrument == "quickdash":
        score = round(burden * 80, 1)
    else:  # promis_pi_6a, a T-score
        score = round(40 + burden * 35, 1)
    return min(high, max(low, score))


def generate(
    n_patients: int,
    *,
    seed: int,
    practitioners: int = 3,
    assessments_per_patient: int = 1,
    treatments_per_patient: int | tuple[int, int] = 6,
    full: bool = False,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield valid synthetic records: practitioners, then per patient the patient, its
    assessments and its treatments.

    ``treatments_per_patient`` is a count or an inclusive ``(low, high)`` range drawn per
    patient. Treatments are split into one series per assessment (each following its
    assessment); with no assessments they carry no ``assessment_id``. ``full=True``
    makes every enumeration value and optional field appear within the first five
    patients (see the module docstring).
    """
    if isinstance(treatments_per_patient, int):
        low = high = treatments_per_patient
    else:
        low, high = treatments_per_patient
    if n_patients < 0 or assessments_per_patient < 0 or low < 0 or high < low:
        raise ValueError("counts must be >= 0 and treatments_per_patient a count or a (low, high) range")
    if practitioners < 1:
        raise ValueError("at least one practitioner is needed")
    return _generate(n_patients, random.Random(seed), practitioners, assessments_per_patient, (low, high), full)


def _generate(
    n_patients: int,
    rng: random.Random,
    n_practitioners: int,
    assessments_per_patient: int,
    treatments: tuple[int, int],
    full: bool,
) -> Iterator[tuple[str, dict[str, Any]]]:
    gen = _Generator(rng, full=full)
    practitioners = []
    for k in range(n_practitioners):
        record = gen.practitioner(k)
        practitioners.append(record)
        yield "practitioner", record
    for index in range(n_patients):
        record, patient = gen.patient(index, practitioners)
        yield "patient", record
        total = rng.randint(*treatments)
        series = assessments_per_patient or 1
        sizes = [total // series + (1 if i < total % series else 0) for i in range(series)]
        day = _weekday(_FIRST_VISIT + dt.timedelta(days=rng.randint(0, _VISIT_SPAN_DAYS)))
        moment = dt.datetime.combine(day, dt.time(rng.randint(8, 15), rng.choice((0, 15, 30, 45))))
        for size in sizes:
            assessment_id = None
            if assessments_per_patient:
                assessment = gen.assessment(patient, moment)
                assessment_id = assessment["id"]
                yield "assessment", assessment
            # First session the same day after the assessment, or within a week.
            if rng.random() < 0.6:
                moment += dt.timedelta(minutes=45)
            else:
                moment = _next_visit(rng, moment, 2, 7)
            planned = size + rng.choice((0, 0, 1, 2))
            for session in range(1, size + 1):
                yield "treatment", gen.treatment(
                    patient, moment, assessment_id=assessment_id, session=session, planned=planned
                )
                moment = _next_visit(rng, moment, 5, 10)
            moment = _next_visit(rng, moment, 7, 21)  # the reassessment


def _next_visit(rng: random.Random, moment: dt.datetime, low_days: int, high_days: int) -> dt.datetime:
    day = _weekday(moment.date() + dt.timedelta(days=rng.randint(low_days, high_days)))
    return dt.datetime.combine(day, dt.time(rng.randint(8, 16), rng.choice((0, 15, 30, 45))))


# ----------------------------------------------------------------- examples and export

EXAMPLES_SEED = 7


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
    """An NDJSON file with valid records and records that each break one rule."""
    practitioner = {
        "record_type": "practitioner",
        "id": "PR0001",
        "family_name": "Example",
        "given_names": ["Robin"],
        "ims_certified": True,
    }
    patient = {
        "record_type": "patient",
        "id": "P000001",
        "family_name": "Testperson",
        "given_names": ["Alex"],
        "birth_date": "1980-05-17",
        "sex": "female",
    }

    def assessment(record_id: str, **changes: Any) -> dict[str, Any]:
        record = {
            "record_type": "assessment",
            "id": record_id,
            "patient_id": "P000001",
            "practitioner_id": "PR0001",
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
            "patient_id": "P000001",
            "practitioner_id": "PR0001",
            "assessment_id": "A0000001",
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
        json.dumps(assessment("A0000001")),
        json.dumps(assessment("A-NRS-11", pain={"nrs": 11})),
        json.dumps(assessment("A-NO-OFFSET", performed_at="2025-03-04T09:30:00")),
        json.dumps(
            assessment("A-UNKNOWN-MUSCLE", palpation=[{"muscle": "upper_trapezoid", "side": "left", "tender": True}])
        ),
        json.dumps(untyped),
        '{"record_type": "patient", "id": "P000002", "family_name": "Sample"',
        json.dumps(treatment("T00000001")),
        json.dumps(treatment("T-NO-CONSENT", consent_obtained=False)),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


_FORMATS = ("ndjson", "ndjson.gz", "json", "csv")


def _treatment_range(text: str) -> int | tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        return (int(low), int(high)) if high else int(low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a range like 2-4, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m ims_fhir.synthetic", description="Synthetic IMS records.")
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


if __name__ == "__main__":
    sys.exit(main())
