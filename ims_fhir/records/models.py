"""Validating models of the ``ims-record/1`` format.

Each record type (patient, practitioner, assessment, treatment) is a frozen pydantic
model with ``extra="forbid"`` and strict types: a string where a number belongs, an
unknown field or an unknown slug is a problem, never a silent coercion. Rules that
involve several fields (``ended_at`` not before ``started_at``, consent for a completed
session, ...) live in :mod:`ims_fhir.records.validation` so that they are reported
together with the field errors of the same record.

Date-times are kept as normalised ISO 8601 strings with an offset; a date-time without
an offset is accepted only when a default time zone is passed in the validation
context (``{"default_tz": "America/Vancouver"}``).

Plausibility (a target server would refuse the rest, or worse, store nonsense): clinical
date-times lie between 1900-01-01 and one year from now, a birth date between 1900-01-01
and today (``{"now": datetime}`` in the context fixes "now" for reproducible runs). Every
string has a length limit (:data:`MAX_NAME`, :data:`MAX_NOTE`, :data:`MAX_URI`), and ids
match :data:`ID_PATTERN` (one URL path segment: printable ASCII, no / ? # %): the JSON
Schema of ``ims-fhir schema`` states them all.
"""

from __future__ import annotations

import copy
import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, WithJsonSchema
from pydantic_core import PydanticCustomError

from . import vocabulary as v

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)

#: a record id (and every reference to one): 1-64 printable ASCII characters, no space and none of / \\ ? # %
#: (so that it is one path segment of a URL: GET /records/patient/<id>), and not "." or ".."
ID_SCHEMA_PATTERN = r"^(?!\.\.?$)(?:(?![/\\?#%])[!-~]){1,64}$"
ID_PATTERN = re.compile(r"(?!\.\.?\Z)(?:(?![/\\?#%])[!-~]){1,64}")
MAX_ID = 64
#: names, phone numbers, e-mail addresses, identifier values
MAX_NAME = 200
#: free text: notes, complaints, reasons
MAX_NOTE = 10000
MAX_URI = 1000
MAX_DATETIME = 40
#: the earliest plausible date of anything in a record
EARLIEST = date(1900, 1, 1)
#: how far in the future a clinical date-time may lie (an appointment booked ahead, clocks that drift)
FUTURE_SLACK = timedelta(days=366)


def _now(info: ValidationInfo | None) -> datetime:
    now = (info.context or {}).get("now") if info is not None else None
    return now if isinstance(now, datetime) else datetime.now(UTC)

# ---------------------------------------------------------------------------------------
# scalar types


def _check_datetime(value: str, info: ValidationInfo) -> str:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError(
            "datetime_format",
            "'{value}' is not an ISO 8601 date-time (expected e.g. 2025-03-04T09:30:00-08:00)",
            {"value": value[:40]},
        ) from None
    if "T" not in value and " " not in value:
        raise PydanticCustomError(
            "datetime_format",
            "'{value}' is a date, not a date-time (expected e.g. 2025-03-04T09:30:00-08:00)",
            {"value": value[:40]},
        )
    if parsed.tzinfo is None:
        tz_name = (info.context or {}).get("default_tz")
        if not tz_name:
            raise PydanticCustomError(
                "offset_required",
                "date-time '{value}' has no UTC offset; add one (e.g. -08:00) or configure a default time zone",
                {"value": value[:40]},
            )
    if parsed.date() < EARLIEST:
        # checked before a zone is applied: zoneinfo gives such years odd local-mean-time offsets
        raise PydanticCustomError("date_range", "'{value}' is before {earliest}",
                                  {"value": value[:40], "earliest": EARLIEST.isoformat()})
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo((info.context or {})["default_tz"]))
    if parsed > _now(info) + FUTURE_SLACK:
        raise PydanticCustomError("date_range", "'{value}' is more than a year in the future", {"value": value[:40]})
    return parsed.isoformat()


def _check_date(value: str) -> str:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise PydanticCustomError("date_format", "'{value}' is not a date in the form YYYY-MM-DD", {"value": value[:40]})
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError("date_format", "'{value}' is not a calendar date", {"value": value}) from None
    if day < EARLIEST:
        raise PydanticCustomError("date_range", "'{value}' is before {earliest}",
                                  {"value": value, "earliest": EARLIEST.isoformat()})
    return value


def _check_birth_date(value: str, info: ValidationInfo) -> str:
    if date.fromisoformat(value) > _now(info).date():
        raise PydanticCustomError("date_range", "birth date '{value}' is in the future", {"value": value})
    return value


def _check_id(value: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise PydanticCustomError(
            "id_format", "'{value}' is not a record id (1-64 printable ASCII characters without spaces and without "
                         "/ \\ ? # %; not '.' or '..')",
            {"value": value[:40]})
    return value


def _check_uri(value: str) -> str:
    parts = urlsplit(value)
    if not parts.scheme or not (parts.netloc or parts.scheme in ("urn",)) or any(c.isspace() for c in value):
        raise PydanticCustomError("absolute_uri", "'{value}' is not an absolute URI", {"value": value[:80]})
    return value


def _check_text(value: str) -> str:
    """A text must have a visible character; whitespace at its ends is dropped (FHIR strings
    should not start or end with whitespace, and validators warn about it)."""
    stripped = value.strip()
    if not stripped:
        raise PydanticCustomError("non_empty", "must not be empty or blank", {})
    return stripped


def _check_clinic_id(value: str) -> str:
    """Like a text, but kept exactly as given: the clinic id is part of every identity."""
    if not value.strip():
        raise PydanticCustomError("non_empty", "must not be empty or blank", {})
    return value


DateTime = Annotated[str, Field(max_length=MAX_DATETIME), AfterValidator(_check_datetime), WithJsonSchema({
    "type": "string", "format": "date-time", "maxLength": MAX_DATETIME,
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$",
    "description": "ISO 8601 date-time with a UTC offset, e.g. 2025-03-04T09:30:00-08:00 "
                   "(without an offset only when a default time zone is configured); "
                   "from 1900-01-01 to at most one year after the time of validation"})]
Date = Annotated[str, Field(max_length=10), AfterValidator(_check_date), WithJsonSchema(
    {"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$", "maxLength": 10,
     "description": "a calendar date, 1900-01-01 or later"})]
BirthDate = Annotated[str, Field(max_length=10), AfterValidator(_check_date), AfterValidator(_check_birth_date),
                      WithJsonSchema({"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$",
                                      "maxLength": 10, "description": "from 1900-01-01 to today, never in the future"})]
Uri = Annotated[str, Field(max_length=MAX_URI), AfterValidator(_check_uri), WithJsonSchema(
    {"type": "string", "format": "uri", "maxLength": MAX_URI})]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID), AfterValidator(_check_id), WithJsonSchema(
    {"type": "string", "minLength": 1, "maxLength": MAX_ID, "pattern": ID_SCHEMA_PATTERN,
     "description": "printable ASCII without spaces and without / \\ ? # % (one URL path segment); "
                    "not '.' or '..'"})]
Text = Annotated[str, Field(max_length=MAX_NAME), AfterValidator(_check_text)]
#: a clinic's own id: any text (it only ever appears inside identifiers and names), but bounded
ClinicId = Annotated[str, Field(min_length=1, max_length=MAX_NAME), AfterValidator(_check_clinic_id)]
Note = Annotated[str, Field(max_length=MAX_NOTE), AfterValidator(_check_text)]
Nrs = Annotated[int, Field(ge=0, le=10)]

Side = Literal[v.SIDES]  # type: ignore[valid-type]
Segment = Literal[v.SEGMENTS]  # type: ignore[valid-type]
Region = Literal[v.REGIONS]  # type: ignore[valid-type]
Sign = Literal[v.SIGNS]  # type: ignore[valid-type]
Movement = Literal[v.MOVEMENTS]  # type: ignore[valid-type]
Instrument = Literal[v.INSTRUMENTS]  # type: ignore[valid-type]
Contraindication = Literal[v.CONTRAINDICATIONS]  # type: ignore[valid-type]
Event = Literal[v.EVENTS]  # type: ignore[valid-type]
Severity = Literal[v.SEVERITIES]  # type: ignore[valid-type]
TwitchResponse = Literal[v.TWITCH_RESPONSES]  # type: ignore[valid-type]
Muscle = Literal[v.MUSCLES]  # type: ignore[valid-type]
Sex = Literal[v.SEXES]  # type: ignore[valid-type]
AssessmentStatus = Literal[v.ASSESSMENT_STATUSES]  # type: ignore[valid-type]
TreatmentStatus = Literal[v.TREATMENT_STATUSES]  # type: ignore[valid-type]


def check_time_zone(name: str) -> str:
    """Raise ValueError unless ``name`` is an IANA time zone this machine knows."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc
    return name


# ---------------------------------------------------------------------------------------
# source and shared parts


class Source(BaseModel):
    """Who exported the records; the base of every business identifier."""

    model_config = _STRICT

    clinic_id: ClinicId
    clinic_name: Text | None = None
    #: the base of the clinic's identifier systems (see :mod:`ims_fhir.identifiers`)
    system_base: Uri
    #: ISO 3166-1 alpha-2 country where the clinic practises (decides e.g. US billing codes)
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    #: ISO 3166-2 subdivision, e.g. CA-BC: the assigner of provincial/state health numbers
    jurisdiction: Annotated[str, Field(pattern=r"^[A-Z]{2}-[A-Z0-9]{1,3}$")] | None = None


class Identifier(BaseModel):
    model_config = _STRICT

    system: Uri
    value: Text


# ---------------------------------------------------------------------------------------
# patient and practitioner


class Patient(BaseModel):
    model_config = _STRICT

    id: Id
    identifiers: list[Identifier] | None = None
    family_name: Text
    given_names: list[Text] | None = None
    birth_date: BirthDate | None = None
    sex: Sex | None = None
    phone: Text | None = None
    email: Text | None = None


class Practitioner(BaseModel):
    model_config = _STRICT

    id: Id
    family_name: Text
    given_names: list[Text] | None = None
    registration: Identifier | None = None
    ims_certified: bool | None = None


# ---------------------------------------------------------------------------------------
# assessment


class PainLocation(BaseModel):
    model_config = _STRICT

    region: Region
    side: Side | None = None


class Pain(BaseModel):
    model_config = _STRICT

    nrs: Nrs
    duration_weeks: Annotated[float, Field(ge=0)] | None = None
    locations: list[PainLocation] | None = None


class NeuropathicSign(BaseModel):
    model_config = _STRICT

    sign: Sign
    present: bool
    segment: Segment | None = None
    side: Side | None = None
    note: Note | None = None


class Palpation(BaseModel):
    model_config = _STRICT

    muscle: Muscle
    side: Side | None = None
    segment: Segment | None = None
    tender: bool | None = None
    taut_band: bool | None = None
    trigger_point: bool | None = None
    note: Note | None = None


class RangeOfMotion(BaseModel):
    model_config = _STRICT

    movement: Movement
    side: Side | None = None
    degrees: Annotated[float, Field(ge=0, le=360)] | None = None
    painful: bool | None = None


class OutcomeMeasure(BaseModel):
    model_config = _STRICT

    instrument: Instrument
    score: float


class Candidacy(BaseModel):
    model_config = _STRICT

    suitable: bool
    contraindications: list[Contraindication] | None = None
    note: Note | None = None


class Diagnosis(BaseModel):
    """A diagnosis charted at the assessment (added 2026-12-01, optional)."""

    model_config = _STRICT

    system: Literal[v.DIAGNOSIS_SYSTEMS]  # type: ignore[valid-type]
    code: Annotated[str, Field(min_length=1, max_length=40), AfterValidator(_check_text)]
    text: Text | None = None


class Assessment(BaseModel):
    model_config = _STRICT

    id: Id
    patient_id: Id
    practitioner_id: Id
    performed_at: DateTime
    status: AssessmentStatus = "final"
    chief_complaint: Note | None = None
    pain: Pain | None = None
    neuropathic_signs: list[NeuropathicSign] | None = None
    palpation: list[Palpation] | None = None
    range_of_motion: list[RangeOfMotion] | None = None
    outcome_measures: list[OutcomeMeasure] | None = None
    candidacy: Candidacy | None = None
    diagnoses: list[Diagnosis] | None = None
    notes: Note | None = None


# ---------------------------------------------------------------------------------------
# treatment


class ElectricalStimulation(BaseModel):
    model_config = _STRICT

    frequency_hz: Annotated[float, Field(gt=0)]
    duration_min: Annotated[float, Field(gt=0)]


class Site(BaseModel):
    model_config = _STRICT

    muscle: Muscle
    side: Side
    segment: Segment | None = None
    insertions: Annotated[int, Field(ge=1)]
    needle_diameter_mm: Annotated[float, Field(ge=0.12, le=0.5)] | None = None
    needle_length_mm: Annotated[float, Field(ge=10, le=125)] | None = None
    twitch_response: TwitchResponse | None = None
    electrical_stimulation: ElectricalStimulation | None = None


class AdverseEvent(BaseModel):
    model_config = _STRICT

    event: Event
    severity: Severity | None = None
    muscle: Muscle | None = None
    note: Note | None = None


class Treatment(BaseModel):
    model_config = _STRICT

    id: Id
    patient_id: Id
    practitioner_id: Id
    assessment_id: Id | None = None
    started_at: DateTime
    ended_at: DateTime | None = None
    status: TreatmentStatus = "completed"
    status_reason: Note | None = None
    session_number: Annotated[int, Field(ge=1)] | None = None
    series_total: Annotated[int, Field(ge=1)] | None = None
    consent_obtained: bool
    sites: list[Site] | None = None
    pain_before_nrs: Nrs | None = None
    pain_after_nrs: Nrs | None = None
    adverse_events: list[AdverseEvent] | None = None
    notes: Note | None = None


MODELS: dict[str, type[BaseModel]] = {
    "patient": Patient,
    "practitioner": Practitioner,
    "assessment": Assessment,
    "treatment": Treatment,
}

Record = Patient | Practitioner | Assessment | Treatment


def record_dict(record: BaseModel) -> dict[str, Any]:
    """The record in the JSON-document shape: unrecorded optional fields left out."""
    return record.model_dump(exclude_none=True)


class Document(BaseModel):
    """The JSON document form: one object holding every list (each optional)."""

    model_config = _STRICT

    format: Literal["ims-record/1"]
    source: Source
    patients: list[Patient] | None = None
    practitioners: list[Practitioner] | None = None
    assessments: list[Assessment] | None = None
    treatments: list[Treatment] | None = None


_RULES_TEXT = {
    "Assessment": "Also: outcome_measures[].score within the instrument's range (oswestry 0-100, ndi 0-50, "
                  "psfs 0-10, quickdash 0-100, promis_pi_6a 20-80).",
    "Treatment": "Also: ended_at not before started_at; status not-done or stopped needs status_reason; "
                 "status completed (the default) needs consent_obtained true and at least one site; "
                 "series_total not less than session_number.",
}


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of the JSON document form, generated from the models.

    ``$defs`` also holds one schema per NDJSON line (``PatientLine``...): the record with
    ``record_type``. Rules that involve several fields are stated in descriptions.
    """
    schema = Document.model_json_schema(ref_template="#/$defs/{model}")
    defs = schema.setdefault("$defs", {})
    for name, text in _RULES_TEXT.items():
        defs[name]["description"] = text
    for record_type, model in MODELS.items():
        name = model.__name__
        line = copy.deepcopy(defs[name])
        line["title"] = f"{name}Line"
        line["description"] = f"One NDJSON line holding a {record_type} record. " + line.get("description", "")
        line["properties"] = {"record_type": {"const": record_type}, **line["properties"]}
        line["required"] = ["record_type", *line.get("required", [])]
        defs[f"{name}Line"] = line
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://ims-fhir.github.io/schema/ims-record-1.json",
        **schema,
        "title": "IMS record format, version 1 (ims-record/1): JSON document",
    }
