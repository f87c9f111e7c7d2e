"""IMS -> FHIR -> IMS is the identity up to :func:`normalise` (a law, tested over the record space).

For a coherent set (a patient, a practitioner, an assessment, treatments that refer to
them) mapped with the forward mapping and laid out as the converter does (NDJSON with
``Type/id`` references, in any order; or transaction Bundles with ``urn:uuid`` and
conditional references, including sets whose patient, practitioner or assessment were
"sent earlier" and are not there), the reverse mapping gives back exactly the
normalised records, with no reject and no report item.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ims_fhir.convert import ConvertOptions, convert
from ims_fhir.fhir.bundles import BundlePacker
from ims_fhir.importing import normalise, normalise_source, reverse_resources
from ims_fhir.mapping import MappedRecord, MappingContext, map_organization, map_record
from ims_fhir.mapping.reverse.codes import Codes
from ims_fhir.records.models import Source
from ims_fhir.records.validation import validate_record
from ims_fhir.records.vocabulary import LIST_KEYS
from ims_fhir.terminology import default_terminology
from tests.conftest import EXAMPLES, SOURCE
from tests.strategies import assessments, ids, patients, practitioners, treatments

TERM = default_terminology()
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SOURCES = [Source(clinic_id="c1", system_base="https://clinic.example.org/ims"),
           Source(clinic_id="us-1", system_base="https://us.example.org/ims", country="US", jurisdiction="US-WA"),
           Source(clinic_id="clinic 2", clinic_name="Clinic Two", system_base="urn:uuid:9d0c7a5e-3a0e-4f7e-9b7a-2f1d1d1c0b01")]


@st.composite
def clinic_sets(draw: Any) -> list[tuple[str, dict[str, Any]]]:
    """A patient, a practitioner, an assessment and 0-3 treatments that refer to them."""
    pid, prid, aid = draw(ids), draw(ids), draw(ids)
    records = [("patient", draw(patients(pid))), ("practitioner", draw(practitioners(prid))),
               ("assessment", draw(assessments(aid, pid, prid)))]
    for n in range(draw(st.integers(0, 3))):
        rec = draw(treatments(f"{aid}-T{n}", pid, prid, assessment_id=aid))
        if draw(st.booleans()):
            del rec["assessment_id"]
        records.append(("treatment", rec))
    return records


def _knowing_diagnoses(ctx: MappingContext, records: list[tuple[str, dict[str, Any]]]) -> MappingContext:
    """The context as ``convert`` gives it after its first pass over these records: a treatment
    names its assessment's diagnoses (Conditions) after the panel."""
    counts = {d["id"]: len(d["diagnoses"]) for t, d in records if t == "assessment" and d.get("diagnoses")}
    return ctx.with_diagnoses(counts.get)


def _groups(records: list[tuple[str, dict[str, Any]]], ctx: MappingContext) -> list[MappedRecord]:
    out = []
    for record_type, data in records:
        model, problems = validate_record(record_type, copy.deepcopy(data))
        assert problems == [], problems
        out.append(map_record(record_type, model, ctx))  # type: ignore[arg-type]
    return out


def _bundles(groups: list[MappedRecord], ctx: MappingContext, size: int) -> list[dict[str, Any]]:
    """Transaction Bundles exactly as ``convert --format bundle`` packs them."""
    deps: dict[str, bytes] = {}
    deferred: list[MappedRecord] = []
    out: list[dict[str, Any]] = []
    packer = BundlePacker(max_entries=size, organization=map_organization(ctx), lookup=deps.get,
                          remember=deps.__setitem__, defer=deferred.append,
                          emit=lambda body, n: out.append(orjson.loads(body)))
    for group in groups:
        packer.add(group)
    for group in deferred:
        packer.add(group, final=True)
    packer.flush()
    return out


def _check(result: Any, expected: list[tuple[str, dict[str, Any]]]) -> None:
    assert result.rejects == []
    assert result.report == []
    got = {(r.record_type, r.id): r.data for r in result.records}
    assert len(got) == len(result.records)
    assert got == {(t, d["id"]): normalise(t, d) for t, d in expected}
    counts = result.counts
    assert counts["rejected"] == 0
    assert counts["read"] == counts["mapped"] + counts["duplicate"]


@SETTINGS
@given(clinic_sets(), st.sampled_from(SOURCES), st.data())
def test_ndjson_layout_round_trips_in_any_order(records: list[tuple[str, dict[str, Any]]], source: Source, data: Any) -> None:
    ctx = _knowing_diagnoses(MappingContext(source, TERM), records)
    resources = [map_organization(ctx)] + [r for g in _groups(records, ctx) for r in g.resources]
    resources = data.draw(st.permutations(resources))
    result = reverse_resources(resources, TERM)
    _check(result, records)
    assert list(result.sources.values()) == [normalise_source(source.model_dump(exclude_none=True))]


@SETTINGS
@given(clinic_sets(), st.sampled_from(SOURCES), st.data())
def test_transaction_bundles_round_trip_with_records_sent_earlier(records: list[tuple[str, dict[str, Any]]],
                                                                  source: Source, data: Any) -> None:
    """Records left out of the set were "sent earlier": Bundles refer to them conditionally."""
    ctx = _knowing_diagnoses(MappingContext(source, TERM), records)  # the whole set: also those sent earlier
    sent = [r for r in records if r[0] in ("treatment",) or data.draw(st.booleans())]
    groups = _groups(sent, ctx)
    order = data.draw(st.permutations(range(len(groups))))
    bundles = _bundles([groups[i] for i in order], ctx, data.draw(st.integers(2, 60)))
    result = reverse_resources(bundles, TERM)
    _check(result, sent)


def test_status_tables_invert_one_to_one() -> None:
    codes = Codes(TERM)
    assert sorted(codes.assessment_status.values()) == sorted(TERM.fhir["status"]["assessment"])
    assert sorted(codes.treatment_status.values()) == sorted(TERM.fhir["status"]["treatment"])
    assert codes.assessment_status[TERM.status("assessment", "entered-in-error")] == "entered-in-error"
    assert codes.treatment_status[TERM.status("treatment", "entered-in-error")] == "entered-in-error"


def test_a_retracted_treatment_marks_every_resource_and_comes_back() -> None:
    """ims-record/1 (2026-12-01): a treatment retracted as entered-in-error marks its Procedure,
    Encounter and every Observation part of it so (never a DELETE), and comes back so."""
    ctx = MappingContext(SOURCES[0], TERM)
    rec = {"id": "T1", "patient_id": "P1", "practitioner_id": "PR1", "started_at": "2025-03-04T09:30:00Z",
           "status": "entered-in-error", "consent_obtained": True, "pain_before_nrs": 6,
           "sites": [{"muscle": "infraspinatus", "side": "left", "insertions": 3}],
           "adverse_events": [{"event": "bruising", "severity": "mild"}]}
    [group] = _groups([("treatment", rec)], ctx)
    statuses = {(r["resourceType"], r["status"]) for r in group.resources if "status" in r}
    assert statuses == {("Encounter", "entered-in-error"), ("Procedure", "entered-in-error"),
                        ("Observation", "entered-in-error"), ("Consent", "entered-in-error")}
    # R4 AdverseEvent has no status: the IG's modifier extension retracts it
    [event] = [r for r in group.resources if r["resourceType"] == "AdverseEvent"]
    assert event["modifierExtension"] == [{"url": TERM.extension_url("entered-in-error"), "valueBoolean": True}]
    # encounter, procedure, pain before, one site, its side (BodyStructure), the consent, the adverse
    # event: the same resources as a completed session, so a retraction updates every one in place
    assert sorted(r["resourceType"] for r in group.resources) == [
        "AdverseEvent", "BodyStructure", "Consent", "Encounter", "Observation", "Observation", "Procedure"]
    result = reverse_resources(group.resources, TERM)
    assert result.rejects == [] and [r.data for r in result.records] == [normalise("treatment", rec)]
    assert result.records[0].data["status"] == "entered-in-error"


def test_a_retraction_comes_back_as_entered_in_error() -> None:
    ctx = MappingContext(SOURCES[0], TERM)
    rec = {"id": "A1", "patient_id": "P1", "practitioner_id": "PR1", "performed_at": "2025-03-04T09:30:00Z",
           "status": "entered-in-error", "pain": {"nrs": 4}}
    resources = [r for g in _groups([("assessment", rec)], ctx) for r in g.resources]
    # the Patient and Practitioner are not in the set: the panel's references carry their identifiers
    result = reverse_resources(resources, TERM)
    assert result.rejects == [] and [r.data for r in result.records] == [normalise("assessment", rec)]
    bundles = _bundles(_groups([("assessment", rec)], ctx), ctx, 50)
    result = reverse_resources(bundles, TERM)
    assert [r.data for r in result.records] == [normalise("assessment", rec)]
    assert result.records[0].data["status"] == "entered-in-error"
    assert result.records[0].data["performed_at"] == "2025-03-04T09:30:00+00:00"


def test_normalise_states_its_rules() -> None:
    rec = {"id": "T1", "patient_id": "P1", "practitioner_id": "PR1", "started_at": "2025-03-04T09:30Z",
           "consent_obtained": True, "sites": [{"muscle": "deltoid", "side": "left", "insertions": 2,
                                                "needle_length_mm": 30}],
           "adverse_events": [], "notes": None}
    assert normalise("treatment", rec) == {
        "id": "T1", "patient_id": "P1", "practitioner_id": "PR1", "started_at": "2025-03-04T09:30:00+00:00",
        "status": "completed", "consent_obtained": True,
        "sites": [{"muscle": "deltoid", "side": "left", "insertions": 2, "needle_length_mm": 30.0}]}
    assert normalise("patient", {"id": "P", "family_name": "X", "given_names": [], "identifiers": []}) == {
        "id": "P", "family_name": "X"}
    with pytest.raises(ValueError):
        normalise("patient", {"id": "P"})
    assert normalise_source({"clinic_id": "c", "clinic_name": "c", "system_base": "https://x.example.org/ims/"}) == {
        "clinic_id": "c", "system_base": "https://x.example.org/ims"}


def _example_records() -> list[tuple[str, dict[str, Any]]]:
    doc = orjson.loads((EXAMPLES / "clinic.json").read_bytes())
    return [(t, normalise(t, r)) for t, key in LIST_KEYS.items() for r in doc.get(key, [])]


@pytest.mark.parametrize("form", ["clinic.json", "records.ndjson", "csv"])
@pytest.mark.parametrize("layout", ["ndjson", "bundle"])
def test_examples_round_trip_from_every_form(form: str, layout: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = convert([EXAMPLES / form], ConvertOptions(out_dir=out, output_format=layout, bundle_size=25, source=SOURCE))
    assert summary.rejected == 0
    files = sorted(out.glob("bundle-*.json")) if layout == "bundle" else sorted(
        p for p in out.glob("*.ndjson") if p.name != "rejects.ndjson")
    resources: list[Any] = []
    for path in files:
        if layout == "bundle":
            resources.append(orjson.loads(path.read_bytes()))
        else:
            resources.extend(orjson.loads(line) for line in path.read_bytes().splitlines())
    result = reverse_resources(resources, TERM)
    assert result.rejects == [] and result.report == []
    assert [(r.record_type, r.data) for r in result.records] == _example_records()
    assert result.sources == {SOURCE["system_base"]: normalise_source(SOURCE)}


def test_a_series_is_one_episode_with_a_plan_per_total_and_its_adverse_events_come_back() -> None:
    """Issue 11: the sessions of a series share one EpisodeOfCare (Encounter.episodeOfCare), each is
    basedOn the ServiceRequest of its planned total (a revised total is a new plan), an adverse
    event is an AdverseEvent naming the session; all of it reads back into the same records."""
    ctx = MappingContext(SOURCES[0], TERM)
    base = {"patient_id": "P1", "practitioner_id": "PR1", "assessment_id": "A1", "consent_obtained": True,
            "sites": [{"muscle": "infraspinatus", "side": "left", "insertions": 3}]}
    recs: list[tuple[str, dict[str, Any]]] = [
        ("treatment", {**base, "id": "T1", "started_at": "2025-03-04T09:30:00Z", "session_number": 1, "series_total": 6,
                       "adverse_events": [{"event": "bruising", "severity": "moderate", "muscle": "infraspinatus",
                                           "note": "small bruise"}, {"event": "fatigue"}]}),
        ("treatment", {**base, "id": "T2", "started_at": "2025-03-11T09:30:00Z", "session_number": 2, "series_total": 6}),
        ("treatment", {**base, "id": "T3", "started_at": "2025-03-18T09:30:00Z", "session_number": 3, "series_total": 8}),
    ]
    resources = [r for g in _groups(recs, ctx) for r in g.resources]
    by_type: dict[str, dict[str, dict[str, Any]]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], {})[r["id"]] = r
    [episode] = by_type["EpisodeOfCare"].values()
    assert {e["episodeOfCare"][0]["reference"] for e in by_type["Encounter"].values()} == {f"EpisodeOfCare/{episode['id']}"}
    plans = {f"ServiceRequest/{r['id']}": r["occurrenceTiming"]["repeat"]["count"] for r in by_type["ServiceRequest"].values()}
    assert sorted(plans.values()) == [6, 8]
    based_on = [plans[p["basedOn"][0]["reference"]] for p in by_type["Procedure"].values()]
    assert sorted(based_on) == [6, 6, 8]
    assert all("series-total" not in str(p.get("extension")) for p in by_type["Procedure"].values())
    events = list(by_type["AdverseEvent"].values())
    assert [e["severity"]["coding"][0] for e in events[:1]] == [
        {"system": "http://terminology.hl7.org/CodeSystem/adverse-event-severity", "code": "moderate", "display": "Moderate"}]
    t1 = next(p for p in by_type["Procedure"].values() if p["identifier"][0]["value"] == "T1")
    assert {e["suspectEntity"][0]["instance"]["reference"] for e in events} == {f"Procedure/{t1['id']}"}
    assert all(e["actuality"] == "actual" for e in events)
    # each series resource once, as convert writes them
    result = reverse_resources([r for rs in by_type.values() for r in rs.values()], TERM)
    assert result.rejects == []
    assert sorted((r.data for r in result.records), key=lambda d: d["id"]) == [normalise(t, rec) for t, rec in recs]
