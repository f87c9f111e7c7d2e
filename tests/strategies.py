"""Hypothesis strategies over the whole ``ims-record/1`` space (valid records only).

Every optional field may be absent or present, every enumeration value can be drawn,
and cross-field rules are respected by construction. Text is drawn from printable
characters (no ``|``, so the CSV form can carry it too).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from ims_fhir.records import vocabulary as v

ids = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789-_.", min_size=1, max_size=12).filter(
    lambda s: s.strip() and s not in (".", ".."))
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="|"),
               min_size=1, max_size=40).filter(lambda s: s.strip())
offsets = st.sampled_from([-8, -7, -5, 0, 1, 5.5, 9])


@st.composite
def datetimes(draw: Any) -> datetime:
    base = datetime(2019, 6, 1, tzinfo=UTC)
    minutes = draw(st.integers(min_value=0, max_value=60 * 24 * 365 * 6))
    off = draw(offsets)
    tz = timezone(timedelta(hours=off))
    return (base + timedelta(minutes=minutes)).astimezone(tz)


def _opt(draw: Any, rec: dict[str, Any], key: str, strategy: st.SearchStrategy[Any]) -> None:
    if draw(st.booleans()):
        rec[key] = draw(strategy)


def _opt_list(draw: Any, rec: dict[str, Any], key: str, item: st.SearchStrategy[Any], max_size: int = 4) -> None:
    if draw(st.booleans()):
        rec[key] = draw(st.lists(item, min_size=1, max_size=max_size))


sides = st.sampled_from(v.SIDES)
segments = st.sampled_from(v.SEGMENTS)
uris = st.sampled_from(["https://health.example.org/phn", "urn:oid:2.16.840.1.113883.4.1", "https://registry.example.org/pt"])
decimal2 = st.integers(min_value=0, max_value=10000).map(lambda n: n / 100)


@st.composite
def patients(draw: Any, pid: str | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": pid or draw(ids)}
    _opt_list(draw, rec, "identifiers", st.builds(lambda s, val: {"system": s, "value": val}, uris, ids), 2)
    rec["family_name"] = draw(text)
    _opt_list(draw, rec, "given_names", text, 3)
    _opt(draw, rec, "birth_date", st.dates(min_value=datetime(1920, 1, 1).date(), max_value=datetime(2020, 1, 1).date()).map(str))
    _opt(draw, rec, "sex", st.sampled_from(v.SEXES))
    _opt(draw, rec, "phone", st.from_regex(r"\+1-604-555-0[0-9]{3}", fullmatch=True))
    _opt(draw, rec, "email", st.from_regex(r"[a-z]{3,8}@example\.org", fullmatch=True))
    return rec


@st.composite
def practitioners(draw: Any, pid: str | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": pid or draw(ids), "family_name": draw(text)}
    _opt_list(draw, rec, "given_names", text, 2)
    _opt(draw, rec, "registration", st.builds(lambda s, val: {"system": s, "value": val},
                                              st.just("https://college.example.org/physio"), ids))
    _opt(draw, rec, "ims_certified", st.booleans())
    return rec


@st.composite
def _pain(draw: Any) -> dict[str, Any]:
    pain: dict[str, Any] = {"nrs": draw(st.integers(0, 10))}
    _opt(draw, pain, "duration_weeks", st.one_of(st.integers(0, 520), decimal2))
    loc = st.builds(lambda r, s: {"region": r, **({"side": s} if s else {})},
                    st.sampled_from(v.REGIONS), st.one_of(st.none(), sides))
    _opt_list(draw, pain, "locations", loc)
    return pain


def _with_optional(required: dict[str, st.SearchStrategy[Any]],
                   optional: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(required, optional=optional)


neuropathic_signs = _with_optional(
    {"sign": st.sampled_from(v.SIGNS), "present": st.booleans()},
    {"segment": segments, "side": sides, "note": text})
palpations = _with_optional(
    {"muscle": st.sampled_from(v.MUSCLES)},
    {"side": sides, "segment": segments, "tender": st.booleans(), "taut_band": st.booleans(),
     "trigger_point": st.booleans(), "note": text})
roms = _with_optional(
    {"movement": st.sampled_from(v.MOVEMENTS)},
    {"side": sides, "degrees": st.one_of(st.integers(0, 360), st.integers(0, 3600).map(lambda n: n / 10)),
     "painful": st.booleans()})


@st.composite
def outcome_measures(draw: Any) -> dict[str, Any]:
    instrument = draw(st.sampled_from(v.INSTRUMENTS))
    lo, hi = v.INSTRUMENT_RANGES[instrument]
    score = draw(st.one_of(st.integers(int(lo), int(hi)), st.integers(int(lo * 10), int(hi * 10)).map(lambda n: n / 10)))
    return {"instrument": instrument, "score": score}


candidacies = _with_optional(
    {"suitable": st.booleans()},
    {"contraindications": st.lists(st.sampled_from(v.CONTRAINDICATIONS), min_size=1, max_size=3), "note": text})


diagnoses = _with_optional(
    {"system": st.sampled_from(v.DIAGNOSIS_SYSTEMS),
     "code": st.from_regex(r"[A-Z][0-9]{2}(\.[0-9]{1,2})?", fullmatch=True)},
    {"text": text})


@st.composite
def assessments(draw: Any, aid: str | None = None, patient_id: str | None = None,
                practitioner_id: str | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "id": aid or draw(ids),
        "patient_id": patient_id or draw(ids),
        "practitioner_id": practitioner_id or draw(ids),
        "performed_at": draw(datetimes()).isoformat(),
    }
    _opt(draw, rec, "status", st.sampled_from(v.ASSESSMENT_STATUSES))
    _opt(draw, rec, "chief_complaint", text)
    _opt(draw, rec, "pain", _pain())
    _opt_list(draw, rec, "neuropathic_signs", neuropathic_signs)
    _opt_list(draw, rec, "palpation", palpations)
    _opt_list(draw, rec, "range_of_motion", roms)
    _opt_list(draw, rec, "outcome_measures", outcome_measures())
    _opt(draw, rec, "candidacy", candidacies)
    _opt_list(draw, rec, "diagnoses", diagnoses, max_size=3)
    _opt(draw, rec, "notes", text)
    return rec


sites = _with_optional(
    {"muscle": st.sampled_from(v.MUSCLES), "side": sides, "insertions": st.integers(1, 30)},
    {"segment": segments,
     "needle_diameter_mm": st.integers(12, 50).map(lambda n: n / 100),
     "needle_length_mm": st.one_of(st.integers(10, 125), st.integers(100, 1250).map(lambda n: n / 10)),
     "twitch_response": st.sampled_from(v.TWITCH_RESPONSES),
     "electrical_stimulation": st.fixed_dictionaries({"frequency_hz": st.integers(1, 100).map(lambda n: n / 2),
                                                      "duration_min": st.integers(1, 60)})})
adverse_events = _with_optional(
    {"event": st.sampled_from(v.EVENTS)},
    {"severity": st.sampled_from(v.SEVERITIES), "muscle": st.sampled_from(v.MUSCLES), "note": text})


@st.composite
def treatments(draw: Any, tid: str | None = None, patient_id: str | None = None, practitioner_id: str | None = None,
               assessment_id: str | None = None) -> dict[str, Any]:
    start = draw(datetimes())
    status = draw(st.sampled_from((None,) + v.TREATMENT_STATUSES))
    rec: dict[str, Any] = {
        "id": tid or draw(ids),
        "patient_id": patient_id or draw(ids),
        "practitioner_id": practitioner_id or draw(ids),
    }
    if assessment_id is not None:
        rec["assessment_id"] = assessment_id
    else:
        _opt(draw, rec, "assessment_id", ids)
    rec["started_at"] = start.isoformat()
    if draw(st.booleans()):
        rec["ended_at"] = (start + timedelta(minutes=draw(st.integers(0, 120)))).isoformat()
    if status is not None:
        rec["status"] = status
    effective = status or "completed"
    if effective in ("not-done", "stopped"):
        rec["status_reason"] = draw(text)
    else:
        _opt(draw, rec, "status_reason", text)
    if draw(st.booleans()):
        number = draw(st.integers(1, 12))
        rec["session_number"] = number
        _opt(draw, rec, "series_total", st.integers(number, 16))
    rec["consent_obtained"] = True if effective == "completed" else draw(st.booleans())
    if effective == "completed":
        rec["sites"] = draw(st.lists(sites, min_size=1, max_size=5))
    else:
        _opt_list(draw, rec, "sites", sites)
    _opt(draw, rec, "pain_before_nrs", st.integers(0, 10))
    _opt(draw, rec, "pain_after_nrs", st.integers(0, 10))
    _opt_list(draw, rec, "adverse_events", adverse_events, 3)
    _opt(draw, rec, "notes", text)
    return rec


RECORD_STRATEGIES = {"patient": patients, "practitioner": practitioners, "assessment": assessments, "treatment": treatments}

any_record = st.one_of(*[s().map(lambda r, t=t: (t, r)) for t, s in RECORD_STRATEGIES.items()])
