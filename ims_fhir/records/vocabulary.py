"""The closed vocabularies of the ``ims-record/1`` format.

These tuples are the format's contract (README.md, "The record format, ims-record/1"): the models
accept exactly these slugs, and the terminology loader checks at start-up that every
slug has a row in the code tables under ``mappings/`` (and no table row names a slug
that is not here). A slug is the lower-case token a clinic writes, e.g. ``upper_trapezius``.
"""

from __future__ import annotations

FORMAT = "ims-record/1"

RECORD_TYPES: tuple[str, ...] = ("patient", "practitioner", "assessment", "treatment")
#: JSON document list key for each record type.
LIST_KEYS: dict[str, str] = {
    "patient": "patients",
    "practitioner": "practitioners",
    "assessment": "assessments",
    "treatment": "treatments",
}

#: the CSV tables of the format, in spec order: file -> columns
CSV_TABLES: dict[str, tuple[str, ...]] = {
    "patients.csv": ("id", "family_name", "given_names", "birth_date", "sex", "identifier_system",
                     "identifier_value", "phone", "email"),
    "practitioners.csv": ("id", "family_name", "given_names", "registration_system", "registration_value",
                          "ims_certified"),
    "assessments.csv": ("id", "patient_id", "practitioner_id", "performed_at", "status", "chief_complaint",
                        "pain_nrs", "pain_duration_weeks", "candidacy_suitable", "contraindications",
                        "candidacy_note", "notes"),
    "assessment_findings.csv": ("assessment_id", "kind", "code", "side", "segment", "present", "tender",
                                "taut_band", "trigger_point", "degrees", "painful", "score", "note",
                                "system"),  # system: optional last column, diagnosis rows only
    "treatments.csv": ("id", "patient_id", "practitioner_id", "assessment_id", "started_at", "ended_at", "status",
                       "status_reason", "session_number", "series_total", "consent_obtained", "pain_before_nrs",
                       "pain_after_nrs", "notes"),
    "treatment_sites.csv": ("treatment_id", "muscle", "side", "segment", "insertions", "needle_diameter_mm",
                            "needle_length_mm", "twitch_response", "estim_frequency_hz", "estim_duration_min"),
    "treatment_adverse_events.csv": ("treatment_id", "event", "severity", "muscle", "note"),
}

#: diagnoses[].system (added 2026-12-01)
DIAGNOSIS_SYSTEMS = ("icd-10-ca", "icd-10-cm", "icd-9", "snomed")
SIDES = ("left", "right", "bilateral", "midline")
SEGMENTS = (
    tuple(f"C{i}" for i in range(1, 9))
    + tuple(f"T{i}" for i in range(1, 13))
    + tuple(f"L{i}" for i in range(1, 6))
    + tuple(f"S{i}" for i in range(1, 6))
)
SEXES = ("female", "male", "other", "unknown")
ASSESSMENT_STATUSES = ("final", "preliminary", "amended", "entered-in-error")
TREATMENT_STATUSES = ("completed", "stopped", "not-done", "entered-in-error")
REGIONS = (
    "head", "neck", "upper_back", "lower_back", "shoulder", "upper_arm", "elbow", "forearm",
    "wrist_hand", "chest", "abdomen", "hip", "buttock", "groin", "thigh", "knee", "lower_leg",
    "ankle_foot",
)
SIGNS = (
    "trophedema", "pilomotor_reflex", "vasomotor_change", "sudomotor_change", "hair_loss",
    "dermatomal_hyperalgesia", "tender_motor_points", "taut_bands", "muscle_shortening",
    "paraspinal_tenderness",
)
MOVEMENTS = (
    "cervical_flexion", "cervical_extension", "cervical_rotation", "cervical_lateral_flexion",
    "thoracic_rotation", "lumbar_flexion", "lumbar_extension", "lumbar_lateral_flexion",
    "shoulder_flexion", "shoulder_abduction", "shoulder_external_rotation",
    "shoulder_internal_rotation", "elbow_extension", "wrist_extension", "hip_flexion",
    "hip_internal_rotation", "hip_external_rotation", "knee_flexion", "knee_extension",
    "ankle_dorsiflexion", "straight_leg_raise",
)
#: instrument -> inclusive score range
INSTRUMENT_RANGES: dict[str, tuple[float, float]] = {
    "oswestry": (0, 100),
    "ndi": (0, 50),
    "psfs": (0, 10),
    "quickdash": (0, 100),
    "promis_pi_6a": (20, 80),
}
INSTRUMENTS = tuple(INSTRUMENT_RANGES)
CONTRAINDICATIONS = (
    "anticoagulant_therapy", "bleeding_disorder", "pregnancy", "needle_phobia",
    "local_skin_infection", "metal_allergy", "immunocompromised", "lymphedema",
    "unable_to_consent",
)
EVENTS = (
    "post_needling_soreness", "bruising", "bleeding", "vasovagal_reaction", "fatigue", "nausea",
    "pneumothorax", "other",
)
SEVERITIES = ("mild", "moderate", "severe")
TWITCH_RESPONSES = ("none", "weak", "strong")
MUSCLES = (
    "suboccipitals", "splenius_capitis", "cervical_multifidus", "scalenes", "sternocleidomastoid",
    "upper_trapezius", "middle_trapezius", "levator_scapulae", "rhomboids", "supraspinatus",
    "infraspinatus", "teres_minor", "deltoid", "pectoralis_minor", "biceps_brachii",
    "triceps_brachii", "wrist_extensors", "wrist_flexors", "thoracic_multifidus",
    "lumbar_multifidus", "erector_spinae", "quadratus_lumborum", "iliopsoas", "gluteus_maximus",
    "gluteus_medius", "gluteus_minimus", "piriformis", "tensor_fasciae_latae", "adductors",
    "hamstrings", "rectus_femoris", "vastus_lateralis", "vastus_medialis", "gastrocnemius",
    "soleus", "tibialis_anterior", "peroneals",
)

#: vocabulary name -> slugs; the names are the ones the code tables under mappings/ use.
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "side": SIDES,
    "segment": SEGMENTS,
    "sex": SEXES,
    "assessment_status": ASSESSMENT_STATUSES,
    "treatment_status": TREATMENT_STATUSES,
    "region": REGIONS,
    "sign": SIGNS,
    "movement": MOVEMENTS,
    "instrument": INSTRUMENTS,
    "contraindication": CONTRAINDICATIONS,
    "event": EVENTS,
    "severity": SEVERITIES,
    "twitch_response": TWITCH_RESPONSES,
    "muscle": MUSCLES,
}

#: record field name -> vocabulary name, for error messages ("'foo' is not a known muscle")
FIELD_VOCABULARY: dict[str, str] = {
    "side": "side",
    "segment": "segment",
    "sex": "sex",
    "region": "region",
    "sign": "sign",
    "movement": "movement",
    "instrument": "instrument",
    "contraindications": "contraindication",
    "event": "event",
    "severity": "severity",
    "twitch_response": "twitch_response",
    "muscle": "muscle",
}
