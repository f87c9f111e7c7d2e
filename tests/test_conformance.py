"""What a hospital's integration team checks in the output (issue 11): profiles, narrative,
typed identifiers, coded statuses, consent, laterality, diagnoses, CPT only where it applies."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ims_fhir.mapping import (
    MappingContext,
    MappingOptions,
    map_organization,
    map_record,
)
from ims_fhir.records.models import Source
from ims_fhir.records.validation import validate_record
from ims_fhir.terminology import default_terminology

TERM = default_terminology()
CA = Source(clinic_id="c1", system_base="https://clinic.example.org/ims", country="CA", jurisdiction="CA-BC")
US = Source(clinic_id="u1", system_base="https://us.example.org/ims", country="US", jurisdiction="US-WA")
V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"

TREATMENT = {"id": "T1", "patient_id": "P1", "practitioner_id": "PR1", "assessment_id": "A1",
             "started_at": "2025-03-04T09:30:00-08:00", "ended_at": "2025-03-04T09:50:00-08:00",
             "consent_obtained": True, "pain_before_nrs": 6, "pain_after_nrs": 3,
             "sites": [{"muscle": "deltoid", "side": "left", "insertions": 2},
                       {"muscle": "infraspinatus", "side": "left", "insertions": 1},
                       {"muscle": "deltoid", "side": "left", "insertions": 1}]}


def _map(record_type: str, data: dict[str, Any], source: Source = CA, cpt: bool | None = None) -> list[dict[str, Any]]:
    model, problems = validate_record(record_type, copy.deepcopy(data))
    assert problems == []
    return map_record(record_type, model, MappingContext(source, TERM, MappingOptions(cpt=cpt))).resources  # type: ignore[arg-type]


def _codes(cc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in cc.get("coding", [])}


def test_every_resource_names_its_profile_and_has_an_escaped_narrative() -> None:
    data = {**TREATMENT, "notes": "<script>alert(1)</script> & more"}
    resources = _map("treatment", data) + [map_organization(MappingContext(CA, TERM))]
    profiles = {f"{TERM.base}/StructureDefinition/{row['id']}" for row in TERM.profiles.values()}
    for res in resources:
        assert list(res)[:4] == ["resourceType", "id", "meta", "text"]
        assert res["meta"]["profile"][0] in profiles
        assert res["text"]["status"] == "generated"
        assert res["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
    procedure = next(r for r in resources if r["resourceType"] == "Procedure")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in procedure["text"]["div"]
    assert "<script>" not in procedure["text"]["div"]


def test_patient_and_practitioner_identifiers_are_typed() -> None:
    patient = _map("patient", {"id": "P1", "family_name": "Specimen", "identifiers": [
        {"system": "https://health.example.org/phn", "value": "9"},
        {"system": "https://hospital.example.org/mrn", "value": "M1"}]})[0]
    types = [i["type"]["coding"][0]["code"] for i in patient["identifier"]]
    assert types == ["MR", "JHN", "MR"]
    assert patient["identifier"][1]["assigner"] == {"display": "CA-BC"}
    assert "assigner" not in patient["identifier"][2]
    practitioner = _map("practitioner", {"id": "PR1", "family_name": "X",
                                         "registration": {"system": "https://college.example.org", "value": "1"}})[0]
    assert practitioner["identifier"][1]["type"]["coding"][0] == {"system": V2, "code": "PRN", "display": "Provider number"}
    org = map_organization(MappingContext(CA, TERM))
    assert _codes(org["type"][0]) == {("http://terminology.hl7.org/CodeSystem/organization-type", "prov")}
    assert org["address"] == [{"state": "CA-BC", "country": "CA"}]


@pytest.mark.parametrize("status", ["not-done", "stopped"])
def test_a_session_not_done_keeps_its_measurements(status: str) -> None:
    data = {**TREATMENT, "status": status, "status_reason": "Patient felt faint", "consent_obtained": False}
    if status == "not-done":
        del data["sites"], data["pain_after_nrs"]
    resources = _map("treatment", data)
    encounter = next(r for r in resources if r["resourceType"] == "Encounter")
    procedure = next(r for r in resources if r["resourceType"] == "Procedure")
    assert encounter["status"] == "finished"
    assert _codes(encounter["serviceType"]) == {("http://terminology.hl7.org/CodeSystem/service-type", "65")}
    assert procedure["status"] == status
    assert procedure["statusReason"]["text"] == "Patient felt faint"
    assert _codes(procedure["statusReason"]) == {(TERM.concept_system, f"status-reason-{status}")}
    for obs in (r for r in resources if r["resourceType"] == "Observation"):
        assert obs["status"] == "final"
    consent = next(r for r in resources if r["resourceType"] == "Consent")
    assert consent["provision"]["type"] == "deny"
    assert consent["provision"]["data"][0]["reference"] == {"reference": f"Procedure/{procedure['id']}"}
    assert {"url": TERM.extension_url("consent"), "valueReference": {"reference": f"Consent/{consent['id']}"}} \
        in procedure["extension"]


def test_codings_of_one_concept_mean_the_same() -> None:
    resources = _map("treatment", TREATMENT)
    procedure = next(r for r in resources if r["resourceType"] == "Procedure")
    assert _codes(procedure["code"]) == {(TERM.concept_system, "ims-procedure")}  # no 231082000 (acupuncture)
    pains = [r for r in resources if r.get("meta", {}).get("profile") == [TERM.profile_url("pain-score")]]
    assert len(pains) == 2
    for obs in pains:
        assert all(c["system"] == TERM.concept_system for c in obs["code"]["coding"])  # no LOINC 72514-3


@pytest.mark.parametrize(("source", "cpt", "expected"), [
    (CA, None, None), (US, None, "20560"), (CA, True, "20560"), (US, False, None)])
def test_cpt_only_for_us_clinics_or_on_request(source: Source, cpt: bool | None, expected: str | None) -> None:
    procedure = next(r for r in _map("treatment", TREATMENT, source, cpt) if r["resourceType"] == "Procedure")
    codes = {c["code"] for c in procedure["code"]["coding"] if c["system"] == TERM.systems["cpt"]}
    assert codes == ({expected} if expected else set())


def test_laterality_is_a_body_structure() -> None:
    resources = _map("treatment", TREATMENT)
    structures = [r for r in resources if r["resourceType"] == "BodyStructure"]
    assert len(structures) == 2  # deltoid left twice -> one BodyStructure
    deltoid = next(s for s in structures if _codes(s["location"]) >= {("http://snomed.info/sct", "35259002")})
    assert _codes(deltoid["locationQualifier"][0]) >= {("http://snomed.info/sct", "7771000")}
    site = next(r for r in resources if r["resourceType"] == "Observation" and "bodySite" in r)
    ext = site["bodySite"]["extension"][0]
    assert ext["url"] == "http://hl7.org/fhir/StructureDefinition/bodySite"
    assert ext["valueReference"]["reference"].startswith("BodyStructure/")
    assert all("laterality" not in e["url"] for r in resources for e in r.get("extension", []))


def test_diagnoses_become_encounter_diagnoses() -> None:
    resources = _map("assessment", {"id": "A1", "patient_id": "P1", "practitioner_id": "PR1",
                                    "performed_at": "2025-03-04T09:30:00-08:00", "diagnoses": [
                                        {"system": "icd-10-ca", "code": "M54.2", "text": "Cervicalgia"},
                                        {"system": "snomed", "code": "247398009"}]})
    conditions = [r for r in resources if r["resourceType"] == "Condition"]
    assert [_codes(c["code"]) for c in conditions] == [{("http://hl7.org/fhir/sid/icd-10-ca", "M54.2")},
                                                       {("http://snomed.info/sct", "247398009")}]
    assert conditions[0]["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    encounter = next(r for r in resources if r["resourceType"] == "Encounter")
    assert [d["condition"]["reference"] for d in encounter["diagnosis"]] == [f"Condition/{c['id']}" for c in conditions]


def test_a_session_names_its_assessments_diagnoses_after_the_panel() -> None:
    model, problems = validate_record("treatment", copy.deepcopy(TREATMENT))
    assert problems == []
    plain = MappingContext(CA, TERM)
    before = map_record("treatment", model, plain)  # type: ignore[arg-type]
    # not known, or no diagnoses: exactly the panel reference, as before
    for lookup in ({}.get, {"A1": 0}.get, {"OTHER": 2}.get):
        same = map_record("treatment", model, plain.with_diagnoses(lookup))  # type: ignore[arg-type]
        assert same.resources == before.resources and same.dependencies == before.dependencies
    assert plain.diagnoses is None  # the copy answers, the shared context is left as it was
    group = map_record("treatment", model, plain.with_diagnoses({"A1": 2}.get))  # type: ignore[arg-type]
    procedure = next(r for r in group.resources if r["resourceType"] == "Procedure")
    system = f"{CA.system_base}/diagnosis"
    conditions = [plain.id_for("diagnosis", f"A1/{i}") for i in range(2)]
    panel = next(r for r in before.resources if r["resourceType"] == "Procedure")["reasonReference"]
    assert panel == [{"reference": f"Observation/{plain.id_for('assessment', 'A1')}",
                      "identifier": {"system": f"{CA.system_base}/assessment", "value": "A1"}}]
    assert procedure["reasonReference"] == [
        *panel,
        {"reference": f"Condition/{conditions[0]}", "identifier": {"system": system, "value": "A1/0"}},
        {"reference": f"Condition/{conditions[1]}", "identifier": {"system": system, "value": "A1/1"}}]
    # the ids are those of the assessment's Conditions; the packer is told about them
    assessment = map_record("assessment", validate_record("assessment", {
        "id": "A1", "patient_id": "P1", "practitioner_id": "PR1", "performed_at": "2025-03-04T09:30:00-08:00",
        "diagnoses": [{"system": "icd-10-ca", "code": "M54.2"}, {"system": "icd-9", "code": "723"}]})[0], plain)
    assert [r["id"] for r in assessment.resources if r["resourceType"] == "Condition"] == conditions
    assert [(d.resource_type, d.id, d.value) for d in group.dependencies if d.resource_type == "Condition"] == [
        ("Condition", conditions[0], "A1/0"), ("Condition", conditions[1], "A1/1")]
