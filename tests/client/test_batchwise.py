"""Delivery through batch Bundles (a server with ``batch`` but no ``transaction``).

One batch of lookups (what the server cannot do conditionally, and whether the pivot of a
reference cycle exists), then one batch per dependency level, then the pivot's final update.
The exchanges are scripted; the real server is in tests/integration/test_server_switches.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ims_fhir.client import FhirClient
from ims_fhir.client.batchwise import _levels
from ims_fhir.client.entrywise import NO_CHANGE, plan
from ims_fhir.errors import FhirAmbiguousMatchError, FhirUnprocessableError

from .scripted import BASE, Reply, ScriptedAdapter, capability_statement
from .test_entrywise import PATIENT_URL, consent, procedure, results, session_bundle


def batch_response(*entries: dict[str, Any]) -> Reply:
    return Reply(200, {"resourceType": "Bundle", "type": "batch-response", "entry": list(entries)})


def found(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resource": {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
                         "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]},
            "response": {"status": "200 OK"}}


def stored(status: int, resource_type: str, resource_id: str, version: str) -> dict[str, Any]:
    return {"response": {"status": f"{status} {'Created' if status == 201 else 'OK'}",
                         "location": f"{resource_type}/{resource_id}/_history/{version}", "etag": f'W/"{version}"'}}


@pytest.fixture
def batching(make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> FhirClient:
    """A client of a server with batch, without transactions and conditional create/update."""
    adapter.capability = capability_statement(system_interactions=("batch",), conditional=False,
                                              types=("Procedure", "Consent", "Patient"))
    return make_client()


def sent_batches(adapter: ScriptedAdapter) -> list[list[dict[str, Any]]]:
    calls = adapter.calls()
    assert all(c.method == "POST" and c.url.rstrip("/") == BASE for c in calls)
    bodies = [c.json() for c in calls]
    assert all(b["type"] == "batch" for b in bodies)
    return [b["entry"] for b in bodies]


def test_levels_follow_the_references_once_the_cycle_is_broken() -> None:
    patient = {"fullUrl": PATIENT_URL, "resource": {"resourceType": "Patient"},
               "request": {"method": "POST", "url": "Patient"}}
    bundle = session_bundle()
    entries = [*bundle["entry"], patient]  # Consent, Procedure, Patient
    _, broken = plan(entries)
    assert broken == {1: {0}}  # the Procedure's extension naming the Consent
    assert _levels(entries, broken) == [2, 1, 0]


def test_first_push_sends_lookups_levels_and_the_pivot_update(batching: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(
        batch_response(found(), found()),  # lookups: the pivot, the Consent (no conditional update)
        batch_response(stored(201, "Procedure", "10", "1")),  # level 0: the Procedure's stub
        batch_response(stored(201, "Consent", "20", "1")),  # level 1
        batch_response(stored(200, "Procedure", "10", "2")),  # the full Procedure
    )
    response = batching.send_bundle(session_bundle())
    lookups, stub, level1, final = sent_batches(adapter)
    assert [e["request"]["method"] for e in lookups] == ["GET", "GET"]
    assert {e["request"]["url"].split("?")[0] for e in lookups} == {"Consent", "Procedure"}
    (stub_entry,) = stub
    assert stub_entry["request"] == {"method": "POST", "url": "Procedure"}  # no conditional create here
    assert "extension" not in stub_entry["resource"] and stub_entry["resource"]["subject"] == {"reference": PATIENT_URL}
    (consent_entry,) = level1
    assert consent_entry["request"] == {"method": "POST", "url": "Consent"}
    assert consent_entry["resource"]["provision"]["data"][0]["reference"] == {"reference": "Procedure/10"}
    (full,) = final
    assert full["request"] == {"method": "PUT", "url": "Procedure/10", "ifMatch": 'W/"1"'}
    assert full["resource"]["extension"][0]["valueReference"] == {"reference": "Consent/20"}
    consent_result, procedure_result = (e["response"] for e in results(response))
    assert consent_result["status"].startswith("201") and consent_result["location"].startswith("Consent/20")
    assert procedure_result["status"] == "201 Created"


def test_second_push_updates_by_id_with_if_match_and_changes_nothing(
        batching: FhirClient, adapter: ScriptedAdapter) -> None:
    stored_procedure = procedure() | {"id": "10", "meta": {"versionId": "2"}}
    stored_consent = consent() | {"id": "20", "meta": {"versionId": "1"}}
    adapter.queue(
        batch_response(found(stored_consent), found(stored_procedure)),
        batch_response(stored(200, "Consent", "20", "1")),  # the Procedure exists: no stub; the Consent's level
        batch_response(stored(200, "Procedure", "10", "2")),
    )
    response = batching.send_bundle(session_bundle())
    _, level, final = sent_batches(adapter)
    assert [e["request"] for e in level] == [{"method": "PUT", "url": "Consent/20", "ifMatch": 'W/"1"'}]
    assert [e["request"] for e in final] == [{"method": "PUT", "url": "Procedure/10", "ifMatch": 'W/"2"'}]
    for result in (e["response"] for e in results(response)):
        assert result["status"].startswith("200")
        assert result["outcome"]["issue"][0]["details"]["coding"][0]["code"] == NO_CHANGE


def test_a_refused_entry_raises_its_own_error_with_the_servers_outcome(
        batching: FhirClient, adapter: ScriptedAdapter) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "processing", "diagnostics": "Consent.status: bad code"}]}
    adapter.queue(
        batch_response(found(), found()),
        batch_response(stored(201, "Procedure", "10", "1")),
        batch_response({"response": {"status": "422 Unprocessable Entity", "outcome": outcome}}),
    )
    with pytest.raises(FhirUnprocessableError, match="Consent.status: bad code") as info:
        batching.send_bundle(session_bundle())
    assert info.value.status == 422 and info.value.outcome == outcome
    assert len(adapter.calls()) == 3  # nothing after the refused level


def test_a_lookup_matching_several_is_an_ambiguous_match(batching: FhirClient, adapter: ScriptedAdapter) -> None:
    two = [consent() | {"id": "20"}, consent() | {"id": "21"}]
    adapter.queue(batch_response(found(*two), found()))
    with pytest.raises(FhirAmbiguousMatchError):
        batching.send_bundle(session_bundle())
    assert len(adapter.calls()) == 1


def test_a_server_that_does_not_declare_batch_is_asked_once_with_a_batch_that_writes_nothing(
        make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> None:
    # HAPI FHIR serves batches without declaring the interaction
    adapter.capability = capability_statement(system_interactions=(), conditional=False,
                                              types=("Procedure", "Consent", "Patient"))
    client = make_client()
    adapter.queue(batch_response(found()))  # the batch of one search: taken
    assert client.supports_batch() and client.supports_batch()
    (probe,) = adapter.calls()
    assert probe.method == "POST" and probe.json()["type"] == "batch"
    assert [e["request"]["method"] for e in probe.json()["entry"]] == ["GET"]
    adapter.queue(batch_response(found(), found()), batch_response(stored(201, "Procedure", "10", "1")),
                  batch_response(stored(201, "Consent", "20", "1")), batch_response(stored(200, "Procedure", "10", "2")))
    client.send_bundle(session_bundle())
    assert len(adapter.calls()) == 5  # the probe and four batches, no request per resource


def test_with_conditional_create_the_pivot_needs_no_lookup(
        make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> None:
    # the server's conditional create tells whether the pivot exists: here it does (200), so
    # the final update goes by id, without If-Match (HAPI may name a stale version for a
    # conditional create that matched), as the entry's conditional update would
    adapter.capability = capability_statement(system_interactions=("batch",), conditional=True,
                                              types=("Procedure", "Consent", "Patient"))
    client = make_client()
    adapter.queue(
        batch_response(stored(200, "Procedure", "10", "2")),  # the stub: a conditional create that matched
        batch_response(stored(200, "Consent", "20", "1")),
        batch_response(stored(200, "Procedure", "10", "2") | {"response": {
            **stored(200, "Procedure", "10", "2")["response"], "outcome": {"resourceType": "OperationOutcome", "issue": [
                {"severity": "information", "code": "informational",
                 "details": {"coding": [{"code": "SUCCESSFUL_UPDATE_NO_CHANGE"}]}}]}}}),
    )
    response = client.send_bundle(session_bundle())
    stub, level1, final = sent_batches(adapter)
    assert stub[0]["request"]["method"] == "POST" and stub[0]["request"]["ifNoneExist"].startswith("identifier=")
    assert level1[0]["request"]["method"] == "PUT" and "?" in level1[0]["request"]["url"]  # conditional update
    assert final[0]["request"] == {"method": "PUT", "url": "Procedure/10"}
    procedure_result = results(response)[1]["response"]
    assert procedure_result["outcome"]["issue"][0]["details"]["coding"][0]["code"] == NO_CHANGE
