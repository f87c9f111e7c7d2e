"""Splitting a Bundle for a server without transactions: a shared part, one part per patient."""

from __future__ import annotations

from typing import Any

from ims_fhir.delivery import patient_keys, patient_parts, shared_keys


def _entry(name: str, rtype: str, *refs: str, ident: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": rtype, "identifier": [{"system": f"urn:test:{rtype}", "value": ident or name}]}
    resource["extension"] = [{"url": "urn:test:ref", "valueReference": {"reference": f"urn:uuid:{r}"}} for r in refs]
    return {"fullUrl": f"urn:uuid:{name}", "resource": resource, "request": {"method": "POST", "url": rtype}}


def _names(bundle: dict[str, Any]) -> list[str]:
    return [e["fullUrl"].removeprefix("urn:uuid:") for e in bundle["entry"]]


BUNDLE = {"resourceType": "Bundle", "type": "transaction", "entry": [
    _entry("org", "Organization"),
    _entry("pr", "Practitioner", "org"),
    _entry("pa", "Patient", "org"),
    _entry("pb", "Patient", "org"),
    _entry("pc", "Patient", "org"),
    _entry("ea", "Encounter", "pa", "pr"),
    _entry("oa", "Observation", "ea", "pa"),
    _entry("ec", "Encounter", "pc"),
    _entry("eb", "Encounter", "pb"),
    _entry("ab", "Observation", "pa", "pb"),  # about two patients: they stay in one part
]}


def test_a_bundle_splits_into_its_shared_entries_and_one_part_per_patient() -> None:
    shared, parts = patient_parts(BUNDLE)
    assert shared is not None and _names(shared) == ["org", "pr"]
    assert [_names(p) for p in parts] == [
        ["org", "pr", "pa", "pb", "ea", "oa", "eb", "ab"],  # with the shared entries they refer to
        ["org", "pc", "ec"],
    ]
    assert [len(patient_keys(p)) for p in parts] == [2, 1]
    assert shared_keys(shared) == {"shared:Organization|urn:test:Organization|org",
                                   "shared:Practitioner|urn:test:Practitioner|pr"}
    # nothing lost, nothing invented: every entry is in the shared part or a patient part
    assert {n for p in [shared, *parts] for n in _names(p)} == set(_names(BUNDLE))


def test_a_bundle_of_one_patient_and_nothing_shared_stays_whole() -> None:
    one = {**BUNDLE, "entry": [_entry("pa", "Patient"), _entry("ea", "Encounter", "pa")]}
    assert patient_parts(one) == (None, [one])


def test_a_bundle_with_an_entry_without_full_url_stays_whole() -> None:
    entries = [dict(e) for e in BUNDLE["entry"]]
    del entries[3]["fullUrl"]
    odd = {**BUNDLE, "entry": entries}
    assert patient_parts(odd) == (None, [odd])


def test_entries_about_no_patient_only_form_the_shared_part() -> None:
    only = {**BUNDLE, "entry": [_entry("org", "Organization"), _entry("pr", "Practitioner", "org")]}
    shared, parts = patient_parts(only)
    assert shared is not None and _names(shared) == ["org", "pr"] and parts == []
