"""Provenance of each transaction (pure mapping code) and the field diff of conflicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ims_fhir import __version__
from ims_fhir.fhir.diff import field_diff
from ims_fhir.fhir.validation import validate_resource
from ims_fhir.mapping.provenance import (
    AUTO_VERSION_EXTENSION,
    entry_activity,
    provenance,
    provenance_ids,
    software_device,
    with_provenance,
)
from ims_fhir.sync.store import FieldChange
from ims_fhir.terminology import default_terminology

TERM = default_terminology()
WHEN = datetime(2026, 12, 1, 22, 30, 5, 123000, tzinfo=UTC)


def _bundle(*entries: dict[str, Any]) -> dict[str, Any]:
    org = {"fullUrl": "urn:uuid:org", "resource": {"resourceType": "Organization", "name": "Clinic"},
           "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=s|c"}}
    return {"resourceType": "Bundle", "type": "transaction", "entry": [org, *entries]}


def _entry(rtype: str, url: str, method: str = "PUT", full: str | None = None) -> dict[str, Any]:
    return {"fullUrl": full or f"urn:uuid:{rtype.lower()}-{len(url)}", "resource": {"resourceType": rtype},
            "request": {"method": method, "url": url}}


def test_activity_follows_the_request() -> None:
    assert entry_activity(_entry("Patient", "Patient", "POST")) == "create"
    assert entry_activity(_entry("Procedure", "Procedure?identifier=s|T1")) == "create"
    assert entry_activity(_entry("Procedure", "Procedure/abc")) == "update"
    assert entry_activity(_entry("Organization", "Organization", "POST")) is None
    assert entry_activity(_entry("Provenance", "Provenance/x")) is None
    assert entry_activity(_entry("Procedure", "Procedure/abc", "GET")) is None


def test_provenance_names_targets_agents_time_and_activity() -> None:
    prov = provenance(["urn:uuid:a", "Procedure/p1"], activity="update", recorded=WHEN, organization="urn:uuid:org",
                      device="urn:uuid:dev", term=TERM)
    assert validate_resource(prov) == []
    assert prov["recorded"] == "2026-12-01T22:30:05.123+00:00"
    assert [t["reference"] for t in prov["target"]] == ["urn:uuid:a", "Procedure/p1"]
    assert prov["activity"]["coding"] == [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                           "code": "UPDATE", "display": "revise"}]
    author, assembler = prov["agent"]
    assert author["who"] == {"reference": "urn:uuid:org"} and author["type"]["coding"][0]["code"] == "author"
    assert assembler["who"] == {"reference": "urn:uuid:dev"} and assembler["onBehalfOf"] == {"reference": "urn:uuid:org"}
    assert prov["meta"]["extension"] == [{"url": AUTO_VERSION_EXTENSION, "valueString": "target"}]
    # deterministic: same content and time, same id; another time, another Provenance
    again = provenance(["Procedure/p1", "urn:uuid:a"], activity="update", recorded=WHEN, organization="urn:uuid:org",
                       device="urn:uuid:dev", term=TERM)
    later = provenance(["urn:uuid:a"], activity="update", recorded=WHEN + timedelta(seconds=1),
                       organization="urn:uuid:org", device="urn:uuid:dev", term=TERM)
    assert again["id"] == prov["id"] != later["id"]


@pytest.mark.parametrize("bad", [
    {"activity": "delete"}, {"targets": []}, {"recorded": datetime(2026, 12, 1, 22, 30)}])  # noqa: DTZ001
def test_provenance_refuses_what_it_cannot_state(bad: dict[str, Any]) -> None:
    args: dict[str, Any] = {"targets": ["urn:uuid:a"], "activity": "create", "recorded": WHEN,
                            "organization": "urn:uuid:org", "device": "urn:uuid:dev", "term": TERM}
    with pytest.raises(ValueError):
        provenance(**{**args, **bad})


def test_software_device_carries_the_version() -> None:
    device = software_device(TERM, __version__)
    assert validate_resource(device) == []
    assert device["version"] == [{"value": __version__}]
    assert device["identifier"][0]["value"] == f"ims-fhir/{__version__}"
    assert software_device(TERM, "9.9")["id"] != device["id"]


def test_with_provenance_adds_device_and_one_provenance_per_activity() -> None:
    created = _entry("Procedure", "Procedure?identifier=s|T1", full="urn:uuid:p-new")
    updated = _entry("Patient", "Patient/srv1", full="urn:uuid:pat")
    bundle = with_provenance(_bundle(created, updated), recorded=WHEN.astimezone(timezone(timedelta(hours=-8))),
                             term=TERM, version=__version__)
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types == ["Organization", "Procedure", "Patient", "Device", "Provenance", "Provenance"]
    device_entry = bundle["entry"][3]
    assert device_entry["request"]["method"] == "POST" and device_entry["request"]["ifNoneExist"].startswith("identifier=")
    provs = {e["resource"]["activity"]["coding"][0]["code"]: e for e in bundle["entry"][4:]}
    assert [t["reference"] for t in provs["CREATE"]["resource"]["target"]] == ["urn:uuid:p-new"]
    assert [t["reference"] for t in provs["UPDATE"]["resource"]["target"]] == ["urn:uuid:pat"]
    for entry in provs.values():
        assert entry["request"] == {"method": "PUT", "url": f"Provenance/{entry['resource']['id']}"}
        assert entry["resource"]["agent"][1]["who"]["reference"] == device_entry["fullUrl"]
        assert entry["resource"]["recorded"].endswith("-08:00")
    assert sorted(provenance_ids(bundle)) == sorted(e["resource"]["id"] for e in provs.values())


def test_with_provenance_leaves_a_bundle_that_writes_nothing() -> None:
    bundle = _bundle()
    assert with_provenance(bundle, recorded=WHEN, term=TERM, version="1") is bundle
    with pytest.raises(ValueError, match="Organization"):
        with_provenance({"resourceType": "Bundle", "type": "transaction", "entry": []}, recorded=WHEN, term=TERM,
                        version="1")


def test_field_diff_names_each_changed_path() -> None:
    clinic = {"resourceType": "Procedure", "id": "a", "meta": {"versionId": "1"}, "status": "completed",
              "note": [{"text": "clinic"}], "bodySite": [{"text": "L"}]}
    server = {"resourceType": "Procedure", "id": "a", "meta": {"versionId": "2"}, "status": "completed",
              "note": [{"text": "hospital"}, {"text": "added"}], "outcome": {"text": "better"}}
    assert field_diff(clinic, server) == [
        FieldChange("bodySite", [{"text": "L"}], None),
        FieldChange("note[0].text", "clinic", "hospital"),
        FieldChange("note[1]", None, {"text": "added"}),
        FieldChange("outcome", None, {"text": "better"}),
    ]
    assert field_diff(clinic, {**clinic, "meta": {"versionId": "9"}, "text": {"div": "x"}}) == []
