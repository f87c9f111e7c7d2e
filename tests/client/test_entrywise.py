"""Entry-by-entry delivery of a transaction Bundle whose entries refer to each other in a cycle.

The session's Procedure names its Consent in an extension and the Consent names the Procedure
in ``Consent.provision.data``: the Procedure is written first without the extension, the
Consent next, then the Procedure again with its full content (by id, If-Match). A second push
writes nothing new. The exchanges are scripted; the real server is in
tests/integration/test_server_switches.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ims_fhir.client import FhirClient
from ims_fhir.client.entrywise import NO_CHANGE, _run, _stub, dependency_order, plan
from ims_fhir.client.response import FhirResponse
from ims_fhir.errors import UsageError

from .scripted import BASE, Reply, ScriptedAdapter, capability_statement

SYS = "https://clinic.example.org/ims"
EXT = "https://clinic.example.org/ims/StructureDefinition/ims-session-consent"
PROC_URL, CONSENT_URL, PATIENT_URL = "urn:uuid:p", "urn:uuid:c", "urn:uuid:pt"


def procedure() -> dict[str, Any]:
    return {"resourceType": "Procedure", "identifier": [{"system": f"{SYS}/treatment", "value": "t1"}],
            "status": "completed", "subject": {"reference": PATIENT_URL},
            "extension": [{"url": EXT, "valueReference": {"reference": CONSENT_URL}}]}


def consent() -> dict[str, Any]:
    return {"resourceType": "Consent", "identifier": [{"system": f"{SYS}/consent", "value": "t1"}],
            "status": "active", "patient": {"reference": PATIENT_URL},
            "provision": {"type": "permit", "data": [{"meaning": "related", "reference": {"reference": PROC_URL}}]}}


def entry(full_url: str, resource: dict[str, Any], kind: str) -> dict[str, Any]:
    return {"fullUrl": full_url, "resource": resource,
            "request": {"method": "PUT", "url": f"{resource['resourceType']}?identifier={SYS}/{kind}|t1"}}


def session_bundle() -> dict[str, Any]:
    # the Consent first, so that the order cannot come from the Bundle's order
    return {"resourceType": "Bundle", "type": "transaction",
            "entry": [entry(CONSENT_URL, consent(), "consent"), entry(PROC_URL, procedure(), "treatment")]}


def searchset(*resources: dict[str, Any]) -> Reply:
    return Reply(200, {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
                       "entry": [{"resource": r} for r in resources]})


def written(status: int, resource_type: str, resource_id: str, version: str) -> Reply:
    return Reply(status, {"resourceType": resource_type, "id": resource_id, "meta": {"versionId": version}},
                 {"Location": f"{BASE}/{resource_type}/{resource_id}/_history/{version}",
                  "ETag": f'W/"{version}"'})


def results(response: FhirResponse) -> list[dict[str, Any]]:
    assert response.resource is not None and response.resource["type"] == "transaction-response"
    entries: list[dict[str, Any]] = response.resource["entry"]
    return entries


@pytest.fixture
def reduced(make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> FhirClient:
    """A client of a server without transactions or batches and without conditional create/update."""
    adapter.capability = capability_statement(system_interactions=(), conditional=False,
                                              types=("Procedure", "Consent", "Patient"))
    client = make_client()
    adapter.queue(Reply(501, {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "not-supported", "diagnostics": "batches are disabled"}]}))
    assert not client.supports_batch()  # asked once with an empty batch: refused
    adapter.sent.clear()
    return client


def test_the_cycle_is_broken_at_the_extension() -> None:
    entries = session_bundle()["entry"]
    order, broken = plan(entries)
    assert broken == {1: {0}}  # the Procedure leaves out its reference to the Consent
    assert order == [1, 0]
    with pytest.raises(UsageError, match="cycle"):
        dependency_order(entries)


def test_without_an_extension_an_identifier_only_reference_is_preferred() -> None:
    proc = procedure()
    del proc["extension"]
    proc["reasonReference"] = [{"reference": CONSENT_URL}]  # a list item (rank 2)
    cons = consent()
    cons["sourceReference"] = {"reference": PROC_URL, "identifier": {"system": SYS, "value": "t1"}}  # rank 1
    del cons["provision"]
    order, broken = plan([entry(CONSENT_URL, cons, "consent"), entry(PROC_URL, proc, "treatment")])
    assert broken == {0: {1}} and order == [0, 1]
    stub = _stub(cons, {PROC_URL})
    assert stub["sourceReference"] == {"identifier": {"system": SYS, "value": "t1"}}
    assert cons["sourceReference"]["reference"] == PROC_URL  # the entry itself is not changed


def test_the_stub_leaves_out_only_the_references_that_close_the_cycle() -> None:
    proc = procedure()
    proc["extension"].append({"url": f"{SYS}/other", "valueString": "kept"})
    proc["reasonReference"] = [{"reference": CONSENT_URL}, {"reference": "Condition/9"}]
    stub = _stub(proc, {CONSENT_URL})
    assert stub["extension"] == [{"url": f"{SYS}/other", "valueString": "kept"}]
    assert stub["reasonReference"] == [{"reference": "Condition/9"}]
    assert stub["subject"] == {"reference": PATIENT_URL}
    nested = {"resourceType": "Procedure", "extension": [{"url": f"{SYS}/complex", "extension": [
        {"url": "a", "valueString": "x"}, {"url": "b", "valueReference": {"reference": CONSENT_URL}}]}]}
    assert "extension" not in _stub(nested, {CONSENT_URL})  # no complex extension is left half
    cons = _stub(consent(), {PROC_URL})
    assert cons["provision"] == {"type": "permit"}  # the emptied list is dropped, not left as []


def test_first_push_writes_the_pivot_twice_and_reports_it_created(
        reduced: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(
        searchset(),  # Procedure?identifier: none
        written(201, "Procedure", "10", "1"),  # the stub
        searchset(),  # Consent?identifier: none
        searchset(),  # (searched again before the plain create, as for any entry)
        written(201, "Consent", "20", "1"),
        written(200, "Procedure", "10", "2"),  # the full Procedure
    )
    response = reduced.send_bundle(session_bundle())
    sent = adapter.calls()
    assert [(s.method, s.url.split("?")[0].removeprefix(BASE)) for s in sent] == [
        ("GET", "/Procedure"), ("POST", "/Procedure"), ("GET", "/Consent"), ("GET", "/Consent"),
        ("POST", "/Consent"), ("PUT", "/Procedure/10")]
    stub = sent[1].json()
    assert "extension" not in stub and stub["subject"] == {"reference": PATIENT_URL}
    assert sent[4].json()["provision"]["data"][0]["reference"] == {"reference": "Procedure/10"}
    full = sent[5].json()
    assert full["id"] == "10" and full["extension"][0]["valueReference"] == {"reference": "Consent/20"}
    assert sent[5].headers["If-Match"] == 'W/"1"'
    consent_result, procedure_result = (e["response"] for e in results(response))
    assert consent_result["status"].startswith("201") and consent_result["location"].startswith("Consent/20")
    assert procedure_result["status"] == "201 Created"
    assert procedure_result["location"] == "Procedure/10/_history/2"


def test_second_push_finds_the_pivot_and_changes_nothing(reduced: FhirClient, adapter: ScriptedAdapter) -> None:
    stored_procedure = procedure() | {"id": "10", "meta": {"versionId": "2"}}
    stored_consent = consent() | {"id": "20", "meta": {"versionId": "1"}}
    adapter.queue(
        searchset(stored_procedure),  # the pivot exists: no stub is written
        searchset(stored_consent),
        written(200, "Consent", "20", "1"),  # unchanged: the version stays
        written(200, "Procedure", "10", "2"),
    )
    response = reduced.send_bundle(session_bundle())
    assert not adapter.calls("POST")
    puts = adapter.calls("PUT")
    assert [p.url.removeprefix(BASE) for p in puts] == ["/Consent/20", "/Procedure/10"]
    assert puts[0].json()["provision"]["data"][0]["reference"] == {"reference": "Procedure/10"}
    assert puts[1].headers["If-Match"] == 'W/"2"'
    assert puts[1].json()["extension"][0]["valueReference"] == {"reference": "Consent/20"}
    for result in (e["response"] for e in results(response)):
        assert result["status"].startswith("200")
        assert result["outcome"]["issue"][0]["details"]["coding"][0]["code"] == NO_CHANGE


def test_a_pivot_created_by_if_none_exist_that_matches_is_left_alone(
        reduced: FhirClient, adapter: ScriptedAdapter) -> None:
    bundle = session_bundle()
    bundle["entry"][1]["request"] = {"method": "POST", "url": "Procedure",
                                     "ifNoneExist": f"identifier={SYS}/treatment|t1"}
    adapter.queue(
        searchset(procedure() | {"id": "10", "meta": {"versionId": "4"}}),
        searchset(),  # Consent: none
        searchset(),
        written(201, "Consent", "20", "1"),
    )
    response = reduced.send_bundle(bundle)
    assert [s.method for s in adapter.calls()] == ["GET", "GET", "GET", "POST"]
    assert adapter.calls("POST")[0].url == f"{BASE}/Consent"
    assert results(response)[1]["response"]["location"] == "Procedure/10/_history/4"


def test_a_pivot_put_by_id_is_read_first(reduced: FhirClient, adapter: ScriptedAdapter) -> None:
    bundle = session_bundle()
    bundle["entry"][1]["request"] = {"method": "PUT", "url": "Procedure/p-1"}
    adapter.queue(
        Reply(404, {"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "not-found", "diagnostics": "gone"}]}),
        written(201, "Procedure", "p-1", "1"),  # the stub, created at its id
        searchset(),
        searchset(),
        written(201, "Consent", "20", "1"),
        written(200, "Procedure", "p-1", "2"),
    )
    response = reduced.send_bundle(bundle)
    assert [(s.method, s.url.split("?")[0].removeprefix(BASE)) for s in adapter.calls()] == [
        ("GET", "/Procedure/p-1"), ("PUT", "/Procedure/p-1"), ("GET", "/Consent"), ("GET", "/Consent"),
        ("POST", "/Consent"),
        ("PUT", "/Procedure/p-1")]
    assert "extension" not in adapter.calls("PUT")[0].json()
    assert adapter.calls("PUT")[1].headers["If-Match"] == 'W/"1"'
    assert results(response)[1]["response"]["status"] == "201 Created"


def _observed_run(waits: list[set[int]], fan_out: int, fail: int | None = None,
                  ) -> tuple[list[int], int, list[int], Exception | None]:
    """Run ``_run`` over entries 0..n-1 (in index order) with steps that take a while; return
    (start order, most steps at once, finished, the error raised)."""
    import threading
    import time

    lock = threading.Lock()
    started: list[int] = []
    finished: list[int] = []
    now = most = 0

    def step(index: int) -> None:
        nonlocal now, most
        with lock:
            assert all(w in finished for w in waits[index]), (index, waits[index], finished)
            started.append(index)
            now += 1
            most = max(most, now)
        time.sleep(0.02)
        with lock:
            now -= 1
            if index == fail:
                raise RuntimeError(f"entry {index} refused")
            finished.append(index)

    try:
        _run(list(range(len(waits))), waits, step, fan_out)
    except RuntimeError as exc:
        return started, most, finished, exc
    return started, most, finished, None


def test_fan_out_sends_independent_entries_together_and_never_more_than_allowed() -> None:
    # 0 <- 1..6 (e.g. a Patient, then its Encounter and Observations), 7 waits for 3 and 5
    waits = [set(), {0}, {0}, {0}, {0}, {0}, {0}, {3, 5}]
    started, most, finished, error = _observed_run(waits, fan_out=3)
    assert error is None and sorted(finished) == list(range(8)) and started[0] == 0
    assert most == 3  # six entries were ready at once; three went out
    started, most, _, _ = _observed_run(waits, fan_out=1)
    assert started == list(range(8)) and most == 1  # concurrency 1: one at a time, in order


def test_fan_out_stops_at_the_first_refusal_and_raises_it() -> None:
    waits = [set(), {0}, {0}, {1}, {1}, {2}]
    started, _, finished, error = _observed_run(waits, fan_out=2, fail=1)
    assert error is not None and str(error) == "entry 1 refused"
    assert 3 not in started and 4 not in started  # they needed the refused entry
    assert 1 not in finished and 0 in finished
