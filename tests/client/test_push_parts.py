"""Entry by entry, one patient's refused entry stops none of another patient's in the same Bundle.

Scripted exchanges (the real server, with both patients' parts in flight at once, is in
tests/integration/test_server_switches.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import orjson
import requests

from ims_fhir.client import FhirClient
from ims_fhir.delivery import Sender
from ims_fhir.push import Pusher, PushSummary, delivery_parts

from .scripted import BASE, Reply, ScriptedAdapter, capability_statement

SYS = "https://clinic.example.org/ims"


def _resource(rtype: str, value: str, **more: Any) -> dict[str, Any]:
    return {"resourceType": rtype, "identifier": [{"system": f"{SYS}/{rtype.lower()}", "value": value}], **more}


def _entry(url: str, resource: dict[str, Any]) -> dict[str, Any]:
    ident = resource["identifier"][0]
    return {"fullUrl": f"urn:uuid:{url}", "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"],
                        "ifNoneExist": f"identifier={ident['system']}|{ident['value']}"}}


def two_patients() -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        _entry("org", _resource("Organization", "clinic")),
        _entry("pa", _resource("Patient", "a", managingOrganization={"reference": "urn:uuid:org"})),
        _entry("oa", _resource("Observation", "a-1", status="final", subject={"reference": "urn:uuid:pa"})),
        _entry("pb", _resource("Patient", "b", managingOrganization={"reference": "urn:uuid:org"})),
        _entry("ob", _resource("Observation", "b-1", status="final", subject={"reference": "urn:uuid:pb"})),
    ]}


def test_a_refused_entry_of_one_patient_leaves_the_other_patients_part_sent(
        make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> None:
    adapter.capability = capability_statement(system_interactions=(), conditional=True,
                                              types=("Organization", "Patient", "Observation"))
    ids = itertools.count(1)
    stored: dict[str, str] = {}  # If-None-Exist -> id: a match is answered 200, as a server does

    def create(request: requests.PreparedRequest) -> Reply:
        body = orjson.loads(request.body or b"{}")
        if body["resourceType"] == "Observation" and body["subject"]["reference"] == "Patient/2":
            return Reply(422, {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "invalid", "diagnostics": "refused for the test"}]})
        key = request.headers.get("If-None-Exist", "")
        status, new = (200, stored[key]) if key in stored else (201, stored.setdefault(key, str(next(ids))))
        return Reply(status, {**body, "id": new, "meta": {"versionId": "1"}},
                     {"Location": f"{BASE}/{body['resourceType']}/{new}/_history/1", "ETag": 'W/"1"'})

    for rtype in ("Organization", "Patient", "Observation"):
        adapter.route("POST", f"{BASE}/{rtype}", create)
    client = make_client()
    adapter.queue(Reply(501, {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "not-supported", "diagnostics": "batches are disabled"}]}))
    assert client.delivery_mode(two_patients()) == "entries"  # asked once with an empty batch: refused
    adapter.sent.clear()

    parts = delivery_parts(client, two_patients())
    assert [p.shared for p in parts] == [True, False, False] and [len(p.keys) for p in parts[1:]] == [1, 1]
    reports: list[dict[str, Any]] = []
    summary = PushSummary()
    Pusher(Sender(client), summary, reports.append).push(two_patients())

    posted = [(s.url.removeprefix(BASE), orjson.loads(s.request.body or b"{}")) for s in adapter.calls("POST")]
    # the shared part, then each patient's part (which names the Organization again: conditional
    # create, answered 200); patient b's part went after patient a's refusal
    assert [(url, body["identifier"][0]["value"]) for url, body in posted] == [
        ("/Organization", "clinic"),
        ("/Organization", "clinic"), ("/Patient", "a"), ("/Observation", "a-1"),
        ("/Organization", "clinic"), ("/Patient", "b"), ("/Observation", "b-1")]
    # tallied: the Organization, patient b and b-1; patient a's part is reported refused as a whole
    assert summary.bundles == 1 and summary.created == 3 and summary.failed_records == 1, summary
    assert summary.by_type["Patient"] == {"created": 1} and summary.by_type["Observation"] == {"created": 1}
    assert len(reports) == 1 and "refused for the test" in orjson.dumps(reports).decode(), reports
