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

The tables are in :mod:`.tables`, the examples in :mod:`.examples`, the command line in
:mod:`.cli` (``python -m ims_fhir.dev.synthetic``).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .tables import (
    ABSOLUTE_CONTRAINDICATIONS,
    ASSESSMENT_NOTES,
    ASSESSMENT_STATUSES,
    AXIAL_REGIONS,
    CONTRAINDICATIONS,
    ENUMERATIONS,
    EVENT_NOTES,
    EVENT_SEVERITIES,
    EVENT_WEIGHTS,
    EVENTS,
    FAMILY_NAMES,
    FIRST_VISIT,
    GIVEN_NAMES,
    INSTRUMENT_RANGES,
    MRN_SYSTEM,
    MUSCLE_INFO,
    NEEDLES,
    NOT_DONE_REASONS,
    PALPATION_NOTES,
    PHN_SYSTEM,
    PROFILE_WEIGHTS,
    PROFILES,
    REGISTRATION_SYSTEM,
    RELATIVE_CONTRAINDICATIONS,
    ROM_NORMAL,
    SEGMENTAL_SIGNS,
    SEXES,
    SIGN_NOTES,
    SIGNS,
    STOPPED_REASONS,
    SYSTEM_BASE,
    TREATMENT_NOTES,
    TREATMENT_STATUSES,
    TWITCH_RESPONSES,
    UNSIDED_MOVEMENTS,
    UNSUITABLE_REASON,
    VISIT_SPAN_DAYS,
    Profile,
)

__all__ = ["generate", "source"]


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
            self.pending["contraindication"] = [*RELATIVE_CONTRAINDICATIONS, *ABSOLUTE_CONTRAINDICATIONS]

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



#: the statuses a charted session has; ``entered-in-error`` (a retraction, ims-record/1
#: 2026-12-01) is left out so that the generator's output, and every committed example,
#: stays what it was. Retractions are covered by the property tests' strategies instead.
_CHARTED_TREATMENT_STATUSES = tuple(s for s in TREATMENT_STATUSES if s != "entered-in-error")

@dataclass
class _Patient:
    id: str
    profile: Profile
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
        if self.full and index < len(PROFILES):
            profile = PROFILES[index]
        else:
            profile = rng.choices(PROFILES, PROFILE_WEIGHTS)[0]
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
                    axial = region in AXIAL_REGIONS
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
                segments = MUSCLE_INFO[muscle][0]
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
                    item["note"] = rng.choice(PALPATION_NOTES)
                palpation.append(item)
                if tender:
                    patient.muscles.append(muscle)

        signs: list[dict[str, Any]] = []
        if self.wanted(0.8, force=full, name="sign", allowed=SIGNS):
            for i, sign in enumerate(self.choose_distinct("sign", SIGNS, 2, 5)):
                every = full and i == 0
                item = {"sign": sign, "present": every or self.maybe(0.7)}
                if sign in SEGMENTAL_SIGNS or every:
                    if self.wanted(0.8, force=every):
                        item["segment"] = self.choose("segment", profile.segments)
                if self.wanted(0.6, force=every):
                    sides = ("left", "right", "bilateral")
                    if sign == "paraspinal_tenderness":
                        sides += ("midline",)
                    item["side"] = self.side(patient, sides)
                if self.wanted(0.2, force=every):
                    item["note"] = SIGN_NOTES[sign]
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
            sided_first = [m for m in profile.movements if m not in UNSIDED_MOVEMENTS]
            movements = self.choose_distinct("movement", profile.movements, 2, 4)
            if full:  # the maximal item needs a movement that has a side
                movements.sort(key=lambda m: m in UNSIDED_MOVEMENTS)
                if movements[0] in UNSIDED_MOVEMENTS:
                    movements.insert(0, self.choose("movement", sided_first))
            measures = []
            for i, movement in enumerate(movements):
                every = full and i == 0
                item = {"movement": movement}
                if movement not in UNSIDED_MOVEMENTS and self.wanted(0.9, force=every):
                    item["side"] = self.side(patient, ("left", "right"))
                if self.wanted(0.95, force=every):
                    normal = ROM_NORMAL[movement]
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
            relative = [c for c in eligible if c in RELATIVE_CONTRAINDICATIONS]
            waiting = self.cover.waiting("contraindication", relative) or self.cover.waiting("contraindication", eligible)
            if waiting:
                contraindications = waiting[:3]
                for c in contraindications:
                    self.cover.seen("contraindication", c)
            elif self.maybe(0.15):
                weights = [
                    1 if c in ABSOLUTE_CONTRAINDICATIONS else 3 if c == "anticoagulant_therapy" else 2 for c in eligible
                ]
                contraindications = [self.choose("contraindication", eligible, weights)]
            patient.suitable = not any(c in ABSOLUTE_CONTRAINDICATIONS for c in contraindications)
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
            record["notes"] = rng.choice(ASSESSMENT_NOTES)
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
            status = self.cover.take("treatment_status", _CHARTED_TREATMENT_STATUSES) or "completed"
        else:
            status = self.choose("treatment_status", _CHARTED_TREATMENT_STATUSES, (86, 6, 8))
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
            reason, stopped_event = rng.choice(STOPPED_REASONS)
            record["status_reason"] = reason
        elif status == "not-done":
            if patient.suitable:
                reason, consent = rng.choice(NOT_DONE_REASONS)
            else:
                reason, consent = UNSUITABLE_REASON, False
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
            record["notes"] = rng.choice(TREATMENT_NOTES)
        return record

    def site(self, patient: _Patient, muscle: str, *, every: bool) -> dict[str, Any]:
        rng = self.rng
        segments, depth = MUSCLE_INFO[muscle]
        diameters, lengths = NEEDLES[depth]
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
            names.append(self.choose("event", EVENTS, EVENT_WEIGHTS))
        events = []
        for i, name in enumerate(names):
            item: dict[str, Any] = {"event": name, "severity": self.choose("severity", EVENT_SEVERITIES[name], None)}
            if sites and self.wanted(0.7, force=every and i == 0):
                item["muscle"] = rng.choice(sites)["muscle"]
            if self.wanted(0.5, force=every and i == 0):
                item["note"] = EVENT_NOTES[name]
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
        day = _weekday(FIRST_VISIT + dt.timedelta(days=rng.randint(0, VISIT_SPAN_DAYS)))
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
