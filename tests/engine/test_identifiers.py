"""The {system_base}/{kind} identifier scheme: format, parse, and only the clinic's own base."""

from __future__ import annotations

import pytest

from ims_fhir.identifiers import KINDS, IdentifierScheme, split_system

BASE = "https://clinic.example.org/ims"
SCHEME = IdentifierScheme(BASE)


def test_format_every_kind_under_the_base_without_a_double_slash() -> None:
    assert IdentifierScheme(BASE + "/").base == BASE
    assert SCHEME.system("patient") == f"{BASE}/patient"
    assert SCHEME.identifier("treatment-finding", "T1/pain-before") == {
        "system": f"{BASE}/treatment-finding", "value": "T1/pain-before"}
    assert SCHEME.systems() == {k: f"{BASE}/{k}" for k in KINDS}
    with pytest.raises(ValueError, match="unknown identifier kind"):
        SCHEME.system("invoice")
    with pytest.raises(ValueError):
        IdentifierScheme("/")


@pytest.mark.parametrize(("kind", "value", "record"), [
    ("patient", "P1", ("patient", "P1")),
    ("practitioner", "PR1", ("practitioner", "PR1")),
    ("organization", "clinic-7", ("source", "clinic-7")),
    ("assessment", "A1", ("assessment", "A1")),
    ("assessment-finding", "A1/palpation/3", ("assessment", "A1")),
    ("treatment", "T1", ("treatment", "T1")),
    ("treatment-finding", "T1/pain-after", ("treatment", "T1")),
    ("encounter", "treatment/T1", ("treatment", "T1")),
    ("encounter", "assessment/A1", ("assessment", "A1")),
])
def test_parse_gives_the_record_an_identifier_belongs_to(kind: str, value: str, record: tuple[str, str]) -> None:
    parsed = SCHEME.parse({"system": f"{BASE}/{kind}", "value": value})
    assert parsed is not None and (parsed.kind, parsed.value, parsed.record) == (kind, value, record)
    assert SCHEME.record_key(SCHEME.identifier(kind, value)) == record


@pytest.mark.parametrize("identifier", [
    {"system": "https://hospital.example.org/patient", "value": "P1"},       # a foreign system ending in /patient
    {"system": "https://clinic.example.org/ims-other/patient", "value": "P1"},  # a base that merely starts like ours
    {"system": "https://clinic.example.org/patient", "value": "P1"},         # the parent of our base
    {"system": f"{BASE}/patient/extra", "value": "P1"},
    {"system": f"{BASE}/invoice", "value": "I1"},
    {"system": f"{BASE}/patient", "value": ""},
    {"system": f"{BASE}/patient"},
    {"system": f"{BASE}/encounter", "value": "T1"},                           # an encounter must name its record
    {"system": f"{BASE}/encounter", "value": "patient/P1"},
    {"value": "P1"},
    "not an identifier",
    None,
])
def test_only_the_clinics_own_systems_are_recognised(identifier: object) -> None:
    assert SCHEME.parse(identifier) is None
    assert SCHEME.record_key(identifier) is None


def test_a_resource_belongs_to_the_record_of_its_first_identifier() -> None:
    patient = {"resourceType": "Patient", "identifier": [SCHEME.identifier("patient", "P1"),
                                                         {"system": "https://health.example.org/phn", "value": "9"}]}
    assert SCHEME.record_of(patient) == ("patient", "P1")
    hospital = {"resourceType": "Patient", "identifier": [{"system": "https://health.example.org/phn", "value": "9"},
                                                          SCHEME.identifier("patient", "P1")]}
    assert SCHEME.record_of(hospital) is None
    assert SCHEME.record_of({"resourceType": "Patient"}) is None


def test_the_scheme_of_a_source_an_organization_and_a_bundle() -> None:
    assert IdentifierScheme.of({"system_base": BASE + "/"}) == SCHEME
    org = {"resourceType": "Organization", "identifier": [SCHEME.identifier("organization", "c7")]}
    assert IdentifierScheme.from_organization(org) == SCHEME
    assert IdentifierScheme.from_organization({"resourceType": "Organization", "identifier": [
        {"system": "https://npi.example.org", "value": "1"}]}) is None
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient"}}, {"resource": org}]}
    assert IdentifierScheme.from_bundle(bundle) == SCHEME
    assert IdentifierScheme.from_bundle({"resourceType": "Bundle", "entry": []}) is None


def test_split_system_discovers_bases_of_any_clinic_for_the_import_only() -> None:
    assert split_system("https://other.example/x/patient") == ("https://other.example/x", "patient")
    assert split_system("https://other.example/x/assessment-finding") == ("https://other.example/x", "assessment-finding")
    assert split_system("https://other.example/x/phn") is None
    assert split_system("/patient") is None
    assert split_system(None) is None
