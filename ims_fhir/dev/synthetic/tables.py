"""The synthetic generator's tables: enumerations, clinical tables and presentation profiles.

Everything here is invented or taken from the format: family names from a small fixed
list of obviously synthetic names, identifier systems under ``example.org``. The
enumerations are the format's own (:mod:`ims_fhir.records.vocabulary`), re-exported so
that the generator and its tests name one list of each.

Terms used here:

profile
    A clinical presentation (neck and shoulder, arm, low back, leg, thoracic) that keeps
    one patient's regions, muscles, segments, movements and instruments consistent.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# ----------------------------------------------------------------- enumerations (spec)
# One list of each enumeration in the project: the format's own (records/vocabulary.py).
# tests/test_synthetic.py checks them against its own copy of the spec's lists.
from ims_fhir.records.vocabulary import (
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
from ims_fhir.records.vocabulary import VOCABULARIES as ENUMERATIONS

__all__ = [
    "ABSOLUTE_CONTRAINDICATIONS",
    "ASSESSMENT_NOTES",
    "ASSESSMENT_STATUSES",
    "AXIAL_REGIONS",
    "CONTRAINDICATIONS",
    "ENUMERATIONS",
    "EVENTS",
    "EVENT_NOTES",
    "EVENT_SEVERITIES",
    "EVENT_WEIGHTS",
    "FAMILY_NAMES",
    "FIRST_VISIT",
    "GIVEN_NAMES",
    "INSTRUMENTS",
    "INSTRUMENT_RANGES",
    "MOVEMENTS",
    "MRN_SYSTEM",
    "MUSCLES",
    "MUSCLE_INFO",
    "NEEDLES",
    "NOT_DONE_REASONS",
    "PALPATION_NOTES",
    "PHN_SYSTEM",
    "PROFILES",
    "PROFILE_WEIGHTS",
    "Profile",
    "REGIONS",
    "REGISTRATION_SYSTEM",
    "RELATIVE_CONTRAINDICATIONS",
    "ROM_NORMAL",
    "SEGMENTAL_SIGNS",
    "SEGMENTS",
    "SEVERITIES",
    "SEXES",
    "SIDES",
    "SIGNS",
    "SIGN_NOTES",
    "STOPPED_REASONS",
    "SYSTEM_BASE",
    "TREATMENT_NOTES",
    "TREATMENT_STATUSES",
    "TWITCH_RESPONSES",
    "UNSIDED_MOVEMENTS",
    "UNSUITABLE_REASON",
    "VISIT_SPAN_DAYS",
    "segment_range",
]

# ----------------------------------------------------------------- clinical tables

SYSTEM_BASE = "https://clinic.example.org/ims"
PHN_SYSTEM = "https://health.example.org/phn"
MRN_SYSTEM = "https://hospital.example.org/mrn"
REGISTRATION_SYSTEM = "https://college.example.org/physiotherapists"

FAMILY_NAMES = ("Testperson", "Example", "Sample", "Specimen", "Placeholder", "Fictional", "Demo", "Synthetic")
GIVEN_NAMES = ("Alex", "Sam", "Robin", "Jordan", "Casey", "Morgan", "Taylor", "Jamie", "Riley", "Avery", "Quinn")


def segment_range(prefix: str, first: int, last: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(first, last + 1))


# muscle -> (segments it is supplied from, needle depth class)
MUSCLE_INFO: dict[str, tuple[tuple[str, ...], str]] = {
    "suboccipitals": (("C1", "C2"), "short"),
    "splenius_capitis": (("C2", "C3", "C4"), "short"),
    "cervical_multifidus": (segment_range("C", 3, 8), "medium"),
    "scalenes": (segment_range("C", 4, 8), "short"),
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
    "thoracic_multifidus": (segment_range("T", 1, 12), "medium"),
    "lumbar_multifidus": (segment_range("L", 1, 5) + ("S1",), "long"),
    "erector_spinae": (segment_range("T", 6, 12) + segment_range("L", 1, 5), "medium"),
    "quadratus_lumborum": (("T12", "L1", "L2", "L3"), "long"),
    "iliopsoas": (segment_range("L", 1, 4), "long"),
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
NEEDLES: dict[str, tuple[tuple[float, ...], tuple[int, ...]]] = {
    "short": ((0.12, 0.16, 0.18, 0.20, 0.25), (13, 25, 30)),
    "medium": ((0.25, 0.30), (30, 40, 50)),
    "long": ((0.30, 0.35, 0.40), (60, 75, 100, 125)),
}

# Typical full range in degrees; extension of elbow and knee is measured from 0 (full
# extension), so a reading there is the lack of extension.
ROM_NORMAL: dict[str, int] = {
    "cervical_flexion": 50, "cervical_extension": 60, "cervical_rotation": 80,
    "cervical_lateral_flexion": 45, "thoracic_rotation": 40, "lumbar_flexion": 60,
    "lumbar_extension": 25, "lumbar_lateral_flexion": 25, "shoulder_flexion": 180,
    "shoulder_abduction": 180, "shoulder_external_rotation": 90, "shoulder_internal_rotation": 70,
    "elbow_extension": 0, "wrist_extension": 70, "hip_flexion": 120, "hip_internal_rotation": 35,
    "hip_external_rotation": 45, "knee_flexion": 135, "knee_extension": 0, "ankle_dorsiflexion": 20,
    "straight_leg_raise": 80,
}  # fmt: skip
UNSIDED_MOVEMENTS = frozenset({"cervical_flexion", "cervical_extension", "lumbar_flexion", "lumbar_extension"})
AXIAL_REGIONS = frozenset({"head", "neck", "upper_back", "lower_back", "chest", "abdomen"})
SEGMENTAL_SIGNS = frozenset({"trophedema", "dermatomal_hyperalgesia", "paraspinal_tenderness", "tender_motor_points"})

# Contraindications that make a patient unsuitable; the rest are relative (adapt the
# technique). Full coverage draws the relative ones first so that early patients are
# still treated and the maximal (completed) treatment comes early.
ABSOLUTE_CONTRAINDICATIONS = ("bleeding_disorder", "unable_to_consent")
RELATIVE_CONTRAINDICATIONS = tuple(c for c in CONTRAINDICATIONS if c not in ABSOLUTE_CONTRAINDICATIONS)

EVENT_SEVERITIES: dict[str, tuple[str, ...]] = {
    "post_needling_soreness": ("mild", "moderate"),
    "bruising": ("mild", "moderate"),
    "bleeding": ("mild", "moderate"),
    "vasovagal_reaction": ("mild", "moderate", "severe"),
    "fatigue": ("mild", "moderate"),
    "nausea": ("mild", "moderate"),
    "pneumothorax": ("severe",),
    "other": ("mild", "moderate", "severe"),
}
EVENT_WEIGHTS = (50, 20, 8, 5, 10, 4, 0.5, 2.5)  # in EVENTS order

SIGN_NOTES = {
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
EVENT_NOTES = {
    "post_needling_soreness": "Soreness for 24-48 hours, eased with heat",
    "bruising": "Small bruise at an insertion site",
    "bleeding": "Minor bleeding at an insertion site; pressure applied",
    "vasovagal_reaction": "Light-headed and pale; recovered lying down",
    "fatigue": "Tired for the rest of the day",
    "nausea": "Brief nausea after the session",
    "pneumothorax": "Short of breath the same evening; referred to emergency, pneumothorax confirmed",
    "other": "Headache the same evening",
}
PALPATION_NOTES = (
    "Reproduces the familiar pain",
    "Local twitch on snapping palpation",
    "Referred pain on sustained pressure",
    "Guarded; examination limited",
)
ASSESSMENT_NOTES = (
    "Home exercise programme started",
    "Explained IMS: mechanism, expected soreness and risks",
    "Imaging report reviewed: no red flags",
    "Reassess after four sessions",
)
TREATMENT_NOTES = (
    "Good twitch responses; tolerated well",
    "Heat applied after needling",
    "Home stretches reviewed",
    "Sleeping better since the last session",
)
# reason, adverse event it goes with (or None)
STOPPED_REASONS = (
    ("Patient felt faint after the first site; session stopped", "vasovagal_reaction"),
    ("Patient asked to stop: insertions too painful today", None),
    ("Stopped: patient became nauseous", "nausea"),
)
# reason, consent obtained
NOT_DONE_REASONS = (
    ("Patient declined needling today", False),
    ("New anticoagulant prescription; needling deferred until reviewed", True),
    ("Pain flare; manual therapy and exercise instead of needling", True),
)
UNSUITABLE_REASON = "Not a candidate for IMS at assessment; exercise programme instead"


@dataclass(frozen=True)
class Profile:
    complaints: tuple[str, ...]
    regions: tuple[str, ...]
    muscles: tuple[str, ...]
    segments: tuple[str, ...]
    movements: tuple[str, ...]
    instruments: tuple[str, ...]


# The union of the profiles covers every region, muscle, segment, movement and
# instrument (tests check it); full coverage visits each profile once, first.
PROFILES: tuple[Profile, ...] = (
    Profile(  # neck and shoulder
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
        segments=segment_range("C", 1, 8) + ("T1", "T2"),
        movements=(
            "cervical_flexion", "cervical_extension", "cervical_rotation", "cervical_lateral_flexion",
            "shoulder_flexion", "shoulder_abduction", "shoulder_external_rotation",
            "shoulder_internal_rotation",
        ),
        instruments=("ndi", "psfs", "promis_pi_6a"),
    ),  # fmt: skip
    Profile(  # arm
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
        segments=segment_range("C", 5, 8) + ("T1",),
        movements=("elbow_extension", "wrist_extension", "cervical_rotation", "shoulder_flexion", "shoulder_abduction"),
        instruments=("quickdash", "psfs"),
    ),  # fmt: skip
    Profile(  # low back and buttock
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
        segments=("T10", "T11", "T12") + segment_range("L", 1, 5) + segment_range("S", 1, 5),
        movements=(
            "lumbar_flexion", "lumbar_extension", "lumbar_lateral_flexion", "hip_flexion",
            "hip_internal_rotation", "hip_external_rotation", "straight_leg_raise",
        ),
        instruments=("oswestry", "psfs", "promis_pi_6a"),
    ),  # fmt: skip
    Profile(  # leg
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
        segments=segment_range("L", 2, 5) + ("S1", "S2"),
        movements=(
            "knee_flexion", "knee_extension", "ankle_dorsiflexion", "hip_flexion",
            "straight_leg_raise", "hip_internal_rotation",
        ),
        instruments=("psfs", "oswestry"),
    ),  # fmt: skip
    Profile(  # thoracic and chest wall
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
        segments=segment_range("T", 1, 12),
        movements=("thoracic_rotation", "cervical_rotation", "shoulder_flexion", "lumbar_flexion"),
        instruments=("promis_pi_6a", "psfs", "ndi"),
    ),  # fmt: skip
)
PROFILE_WEIGHTS = (30, 10, 35, 15, 10)

# The window in which first visits fall.
FIRST_VISIT = dt.date(2024, 1, 8)
VISIT_SPAN_DAYS = 630
