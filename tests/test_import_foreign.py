"""Foreign FHIR (not written by this project) is imported as far as it maps.

``tests/fixtures/foreign/`` holds hand-written synthetic resources as a hospital and
another IMS system might send them: a Bulk-Data-style NDJSON folder, a ``searchset``
Bundle and a ``collection`` Bundle. Every resource ends mapped, rejected with its
reasons, or counted as a duplicate; every element a record cannot hold is reported.
Nothing raises, whatever the input.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ims_fhir.importer import fhir_files, read_fhir_file
from ims_fhir.importing import ImportedRecord, ImportResult, ReportItem, ReverseRun, reverse_resources
from ims_fhir.mapping import MappingContext, map_record
from ims_fhir.mapping.reverse.treatment import LEGACY_CONSENT_EXTENSION
from ims_fhir.records.models import Source
from ims_fhir.records.validation import validate_record
from ims_fhir.rejects import Rejected
from ims_fhir.terminology import default_terminology
from tests.strategies import any_record

FOREIGN = Path(__file__).parent / "fixtures" / "foreign"
TERM = default_terminology()
LOINC, SNOMED, UCUM = TERM.systems["loinc"], TERM.systems["snomed"], TERM.systems["ucum"]


def _import_folder(folder: Path) -> ImportResult:
    run = ReverseRun(TERM)
    for path in fhir_files(folder):
        for item in read_fhir_file(path):
            if item.problem is not None:
                run.add_unreadable(item.origin, item.origin, item.problem)
            else:
                run.add(item.resource, item.origin)
    result = ImportResult()
    for outcome in run.outcomes():
        if isinstance(outcome, ImportedRecord):
            result.records.append(outcome)
        elif isinstance(outcome, Rejected):
            result.rejects.append(outcome)
        else:
            result.report.append(outcome)
    result.counts = run.counts()
    return result


@pytest.fixture(scope="module")
def foreign() -> ImportResult:
    return _import_folder(FOREIGN)


def test_what_maps_becomes_valid_records(foreign: ImportResult) -> None:
    records = {(r.record_type, r.id): r.data for r in foreign.records}
    assert records == {
        # a hospital Patient: the MR identifier is the chart number (and stays among the identifiers)
        ("patient", "MRN-000123"): {
            "id": "MRN-000123",
            "identifiers": [{"system": "https://hospital.example.org/mrn", "value": "MRN-000123"},
                            {"system": "https://health.example.org/phn", "value": "0000000099"}],
            "family_name": "Testperson", "given_names": ["Kim"], "birth_date": "1961-07-02", "sex": "female",
            "phone": "+1-604-555-0199"},
        ("practitioner", "1234567893"): {"id": "1234567893", "family_name": "Fictional", "given_names": ["Ren"]},
        # a standalone LOINC pain score and an Oswestry score of one encounter: one assessment
        ("assessment", "OBS-1"): {
            "id": "OBS-1", "patient_id": "MRN-000123", "practitioner_id": "1234567893",
            "performed_at": "2025-02-03T10:05:00-08:00", "status": "final", "pain": {"nrs": 6},
            "outcome_measures": [{"instrument": "oswestry", "score": 42.0}]},
        # another IMS system: SNOMED CT coded procedure and muscle, mCODE laterality, cm, LOINC pain scores by time
        ("treatment", "S-77"): {
            "id": "S-77", "patient_id": "MRN-000123", "practitioner_id": "1234567893",
            "started_at": "2025-02-10T09:00:00-08:00", "ended_at": "2025-02-10T09:30:00-08:00", "status": "completed",
            "session_number": 2, "consent_obtained": True,
            "sites": [{"muscle": "sternocleidomastoid", "side": "right", "insertions": 3, "needle_length_mm": 30.0}],
            "pain_before_nrs": 7, "pain_after_nrs": 3},
    }
    assert all(r.system_base is None for r in foreign.records)


def test_what_does_not_map_is_rejected_with_reasons(foreign: ImportResult) -> None:
    rejects = {r.resource: r for r in foreign.rejects}
    rules = {label: sorted({p.rule for p in r.problems}) for label, r in rejects.items()}
    assert rules == {
        "Observation/hosp-bad-1": ["fhir_validation"],
        "Observation/hosp-mod-1": ["modifier_extension"],
        "Observation.ndjson:7": ["invalid_json"],
        "Patient/hosp-pt-2": ["no_chart_number"],
        "Observation/hosp-pain-2": ["required"],
        "Procedure/hosp-proc-1": ["required"],
        "Encounter/hosp-enc-2": ["not_mapped"],
        "Observation/hosp-bp-1": ["not_ims"],
        "Condition/hosp-cond-1": ["not_ims"],
        "OperationOutcome@bundle-searchset.json#entry[3]": ["not_ims"],
    }
    # a CPT-only dry needling Procedure: imported as far as it maps, the partial record in the reject
    proc = rejects["Procedure/hosp-proc-1"]
    assert proc.record_type == "treatment" and proc.record_id == "PROC-1"
    assert proc.record == {
        "id": "PROC-1", "status": "completed", "patient_id": "MRN-000123", "practitioner_id": "1234567893",
        "started_at": "2025-02-03T10:30:00-08:00", "sites": [{"muscle": "supraspinatus"}],
        "adverse_events": [{"event": "pneumothorax"}, {"event": "other", "note": "Hematoma"}]}
    assert [p.path for p in proc.problems] == ["consent_obtained", "sites[0].side", "sites[0].insertions"]
    assert "never assumed" in proc.problems[0].message
    pain = rejects["Observation/hosp-pain-2"]
    assert pain.record == {"id": "hosp-pain-2", "patient_id": "MRN-000123", "performed_at": "2025-03-10T09:00:00-07:00",
                           "status": "final", "pain": {"nrs": 4}}
    assert "no performer" in pain.problems[0].message
    assert rejects["Observation.ndjson:7"].origin == "Observation.ndjson:7"
    assert rejects["Procedure/hosp-proc-1"].origin == "bundle-searchset.json#entry[0]"


def test_every_element_not_mapped_is_reported(foreign: ImportResult) -> None:
    reported = [(i.resource, i.path, i.rule) for i in foreign.report]
    assert reported == [
        ("Patient/hosp-pt-1", "Patient.identifier[0]", "assumed"),
        ("Patient/hosp-pt-1", "Patient.name[1]", "not_mapped"),
        ("Patient/hosp-pt-1", "Patient.telecom[0].use", "not_mapped"),
        ("Patient/hosp-pt-1", "Patient.telecom[1]", "not_mapped"),
        ("Patient/hosp-pt-1", "Patient.active", "not_mapped"),
        ("Patient/hosp-pt-1", "Patient.address", "not_mapped"),
        ("Patient/hosp-pt-2", "Patient.birthDate", "not_mapped"),
        ("Practitioner/hosp-pr-1", "Practitioner.identifier[0]", "assumed"),
        ("Practitioner/hosp-pr-1", "Practitioner.name[0].prefix", "not_mapped"),
        ("Practitioner/hosp-pr-1", "Practitioner.qualification[0]", "not_mapped"),
        ("Observation/hosp-pain-1", "Observation.identifier[0]", "assumed"),
        ("Observation/hosp-pain-1", "Observation.code", "assumed"),
        ("Observation/hosp-pain-1", "Observation.interpretation", "not_mapped"),
        ("Observation/hosp-odi-1", "Observation.code", "assumed"),
        ("Observation/hosp-pain-2", "Observation.id", "assumed"),
        ("Observation/hosp-pain-2", "Observation.code", "assumed"),
        ("urn:uuid:5f0c2a52-4a7e-4a39-9a39-0d4b8f0c0a01", "Procedure.identifier[0]", "assumed"),
        ("urn:uuid:5f0c2a52-4a7e-4a39-9a39-0d4b8f0c0a01", "Procedure.code", "assumed"),
        ("urn:uuid:5f0c2a52-4a7e-4a39-9a39-0d4b8f0c0a02", "Observation.component[1].valueQuantity", "assumed"),
        ("urn:uuid:5f0c2a52-4a7e-4a39-9a39-0d4b8f0c0a03", "Observation.code", "assumed"),
        ("urn:uuid:5f0c2a52-4a7e-4a39-9a39-0d4b8f0c0a04", "Observation.code", "assumed"),
        ("Procedure/hosp-proc-1", "Procedure.identifier[0]", "assumed"),
        ("Procedure/hosp-proc-1", "Procedure.code", "assumed"),
        ("Procedure/hosp-proc-1", "Procedure.bodySite[0]", "not_mapped"),
        ("Procedure/hosp-proc-1", "Procedure.complication[1]", "assumed"),
        ("Procedure/hosp-proc-1", "Procedure.reasonCode", "not_mapped"),
        ("Procedure/hosp-proc-1", "Procedure.usedCode", "not_mapped"),
    ]
    by_path = {(i.resource, i.path): i for i in foreign.report}
    assert by_path[("Observation/hosp-pain-1", "Observation.interpretation")].record_id == "OBS-1"
    assert by_path[("Procedure/hosp-proc-1", "Procedure.usedCode")].record_type == "treatment"
    assert "without laterality" in by_path[("Procedure/hosp-proc-1", "Procedure.bodySite[0]")].message


def test_every_resource_is_accounted_for(foreign: ImportResult) -> None:
    # 20 resources and lines: 9 mapped (the Encounter of the assessment among them), 10 rejected,
    # and the Patient that the searchset repeats as an include
    assert foreign.counts == {"read": 20, "mapped": 9, "rejected": 10, "duplicate": 1}


# -- single decisions, one resource set each ----------------------------------------------

PATIENT = {"resourceType": "Patient", "id": "p", "identifier": [
    {"type": {"coding": [{"system": TERM.systems["v2-0203"], "code": "MR"}]},
     "system": "https://clinic.example.org/ims/patient", "value": "P1"}], "name": [{"family": "Doe"}]}
PRACTITIONER = {"resourceType": "Practitioner", "id": "pr", "identifier": [
    {"system": "https://clinic.example.org/ims/practitioner", "value": "PR1"}], "name": [{"family": "Roe"}]}


def _pain(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "72514-3"}]}, "subject": {"reference": "Patient/p"},
            "performer": [{"reference": "Practitioner/pr"}], "effectiveDateTime": "2025-01-02T03:04:05+01:00",
            "valueInteger": 5, **extra}


def test_a_standalone_pain_score_is_an_assessment_with_only_pain() -> None:
    result = reverse_resources([PATIENT, PRACTITIONER, _pain()], TERM)
    assert result.by_type("assessment") == [{"id": "o1", "patient_id": "P1", "practitioner_id": "PR1",
                                             "performed_at": "2025-01-02T03:04:05+01:00", "status": "final",
                                             "pain": {"nrs": 5}}]
    assert result.rejects == []


def test_standalone_findings_at_different_times_are_different_assessments() -> None:
    later = _pain(id="o2", effectiveDateTime="2025-02-02T03:04:05+01:00", valueInteger=2)
    result = reverse_resources([PATIENT, PRACTITIONER, _pain(), later], TERM)
    assert [a["pain"]["nrs"] for a in result.by_type("assessment")] == [5, 2]


def test_a_finding_of_ours_without_its_panel_is_not_rebuilt_into_a_partial_assessment() -> None:
    ctx = MappingContext(Source(clinic_id="c", system_base="https://clinic.example.org/ims"), TERM)
    rec = {"id": "A1", "patient_id": "P1", "practitioner_id": "PR1", "performed_at": "2025-01-02T03:04:05Z",
           "pain": {"nrs": 3}, "notes": "kept on the panel"}
    model, _ = validate_record("assessment", rec)
    resources = map_record("assessment", model, ctx).resources  # type: ignore[arg-type]
    members = [r for r in resources if r["resourceType"] == "Observation" and r["id"] != resources[1]["id"]]
    result = reverse_resources([PATIENT, PRACTITIONER, *members], TERM)
    assert result.records[2:] == []
    assert [(r.problems[0].rule, "A1/pain-nrs" in r.problems[0].message) for r in result.rejects] == [("orphan", True)]


def test_unresolved_patient_reference_rejects_the_record_and_says_why() -> None:
    obs = _pain(subject={"reference": "Patient/elsewhere"})
    result = reverse_resources([PRACTITIONER, obs], TERM)
    [reject] = result.rejects
    assert [(p.path, p.rule) for p in reject.problems] == [("patient_id", "unresolved_reference")]
    assert [(i.resource, i.path) for i in result.report if i.rule == "unresolved_reference"] == [
        ("Observation/o1", "Observation.subject")]
    # a logical reference that carries the chart number is enough
    obs = _pain(subject={"reference": "Patient/elsewhere", "identifier": {
        "type": {"coding": [{"system": TERM.systems["v2-0203"], "code": "MR"}]},
        "system": "https://hospital.example.org/mrn", "value": "M9"}})
    result = reverse_resources([PRACTITIONER, obs], TERM)
    assert result.by_type("assessment")[0]["patient_id"] == "M9"
    assert ("Observation.subject", "assumed") in [(i.path, i.rule) for i in result.report]


def test_performer_through_practitioner_role_or_contained_practitioner() -> None:
    role = {"resourceType": "PractitionerRole", "id": "role", "practitioner": {"reference": "Practitioner/pr"}}
    result = reverse_resources([PATIENT, PRACTITIONER, role, _pain(performer=[{"reference": "PractitionerRole/role"}])], TERM)
    assert result.by_type("assessment")[0]["practitioner_id"] == "PR1"
    assert result.rejects == []
    contained = _pain(contained=[{"resourceType": "Practitioner", "id": "c1", "identifier": [
        {"system": "https://registry.example.org/pt", "value": "X7"}]}], performer=[{"reference": "#c1"}])
    result = reverse_resources([PATIENT, contained], TERM)
    assert result.by_type("assessment")[0]["practitioner_id"] == "X7"


def _procedure(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Procedure", "id": "proc", "status": "completed",
            "extension": [{"url": LEGACY_CONSENT_EXTENSION, "valueBoolean": True}],
            "code": {"coding": [{"system": TERM.systems["cpt"], "code": "20561"}]},
            "subject": {"reference": "Patient/p"}, "performer": [{"actor": {"reference": "Practitioner/pr"}}],
            "performedDateTime": "2025-01-02T03:04:05+01:00", **extra}


def test_procedure_body_sites_in_snomed_with_laterality_still_lack_insertions() -> None:
    side = {"url": "http://example.org/laterality", "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "7771000"}]}}
    site = {"extension": [side], "coding": [{"system": SNOMED, "code": "72573008"}]}  # infraspinatus
    result = reverse_resources([PATIENT, PRACTITIONER, _procedure(bodySite=[site])], TERM)
    [reject] = result.rejects
    assert reject.record["sites"] == [{"muscle": "infraspinatus", "side": "left"}]  # type: ignore[index]
    assert [p.path for p in reject.problems] == ["sites[0].insertions"]


@pytest.mark.parametrize("status", ["in-progress", "preparation", "unknown"])
def test_a_procedure_status_without_a_treatment_status_is_rejected(status: str) -> None:
    result = reverse_resources([PATIENT, PRACTITIONER, _procedure(status=status, statusReason={"text": "x"})], TERM)
    assert [p.rule for p in result.rejects[0].problems][:1] == ["unmapped_status"]


def test_an_entered_in_error_procedure_is_a_retracted_treatment() -> None:
    # ims-record/1 (2026-12-01) allows entered-in-error for treatments: a retraction comes back as one
    result = reverse_resources([PATIENT, PRACTITIONER, _procedure(status="entered-in-error")], TERM)
    assert not result.rejects
    [treatment] = result.by_type("treatment")
    assert treatment["status"] == "entered-in-error"


def test_a_non_ims_procedure_and_its_parts_are_rejected() -> None:
    proc = _procedure(code={"coding": [{"system": SNOMED, "code": "80146002", "display": "Appendectomy"}]})
    part = _pain(id="o9", partOf=[{"reference": "Procedure/proc"}])
    result = reverse_resources([PATIENT, PRACTITIONER, proc, part], TERM)
    assert sorted((r.resource, r.problems[0].rule) for r in result.rejects) == [
        ("Observation/o9", "orphan"), ("Procedure/proc", "not_ims")]


def test_pain_duration_in_days_is_converted_and_reported() -> None:
    duration = _pain(id="o3", code={"coding": [{"system": TERM.concept_system, "code": "pain-duration"}]},
                     valueInteger=None, valueQuantity={"value": 14, "system": UCUM, "code": "d"})
    del duration["valueInteger"]
    result = reverse_resources([PATIENT, PRACTITIONER, _pain(), duration], TERM)
    assert result.by_type("assessment")[0]["pain"] == {"nrs": 5, "duration_weeks": 2.0}
    assert any(i.rule == "assumed" and "14 d" in i.message for i in result.report)


def test_a_different_resource_under_the_same_id_is_rejected_the_same_one_counted_once() -> None:
    changed = {**PATIENT, "name": [{"family": "Other"}]}
    result = reverse_resources([PATIENT, PATIENT, changed], TERM)
    assert result.counts == {"read": 3, "mapped": 1, "rejected": 1, "duplicate": 1}
    assert result.rejects[0].problems[0].rule == "duplicate_resource"


# -- never a crash ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_record, st.data())
def test_damaged_resources_never_crash_and_are_all_accounted_for(pair: tuple[str, dict[str, Any]], data: Any) -> None:
    record_type, record = pair
    ctx = MappingContext(Source(clinic_id="c", system_base="https://clinic.example.org/ims"), TERM)
    model, _ = validate_record(record_type, copy.deepcopy(record))
    resources = map_record(record_type, model, ctx).resources  # type: ignore[arg-type]
    for _ in range(data.draw(st.integers(1, 4))):
        res = resources[data.draw(st.integers(0, len(resources) - 1))]
        key = data.draw(st.sampled_from(sorted(res)))
        if data.draw(st.booleans()):
            del res[key]
        else:
            res[key] = data.draw(json_values)
    resources.append(data.draw(json_values))
    result = reverse_resources(resources, TERM)
    counts = result.counts
    assert counts["read"] == counts["mapped"] + counts["rejected"] + counts["duplicate"]
    assert counts["read"] == len(resources) - sum(
        1 for r in resources if isinstance(r, dict) and r.get("resourceType") == "Bundle")
    assert all(isinstance(i, ReportItem) for i in result.report)


def test_a_sessions_own_diagnoses_are_understood_another_assessments_are_reported() -> None:
    """reasonReference after the panel: the assessment's diagnosis Conditions derive from it (no
    report item), here not in the input (unresolved, read from the identifier and the conditional
    form); a Condition of another assessment is reported."""
    source = Source(clinic_id="c1", system_base="https://clinic.example.org/ims")
    ctx = MappingContext(source, TERM).with_diagnoses({"A1": 2}.get)
    data = {"id": "T1", "patient_id": "P1", "practitioner_id": "PR1", "assessment_id": "A1", "consent_obtained": True,
            "started_at": "2025-03-04T09:30:00-08:00", "sites": [{"muscle": "deltoid", "side": "left", "insertions": 2}]}
    people = [map_record(t, validate_record(t, {"id": i, "family_name": "Testperson"})[0], ctx).resources[0]  # type: ignore[arg-type]
              for t, i in (("patient", "P1"), ("practitioner", "PR1"))]
    resources = map_record("treatment", validate_record("treatment", data)[0], ctx).resources  # type: ignore[arg-type]
    procedure = next(r for r in resources if r["resourceType"] == "Procedure")
    reasons = procedure["reasonReference"]
    assert [r["identifier"]["value"] for r in reasons] == ["A1", "A1/0", "A1/1"]
    reasons[1] = {"reference": "Condition?identifier=https%3A%2F%2Fclinic.example.org%2Fims%2Fdiagnosis|A1%2F0"}
    reasons.append({"reference": "Condition/x", "identifier": {"system": f"{source.system_base}/diagnosis",
                                                               "value": "A9/0"}})
    result = reverse_resources([*people, *resources], TERM)
    assert not result.rejects
    assert result.by_type("treatment")[0]["assessment_id"] == "A1"
    assert [(i.path, i.rule) for i in result.report] == [("Procedure.reasonReference[3]", "not_mapped")]
    assert "'A9'" in result.report[0].message
