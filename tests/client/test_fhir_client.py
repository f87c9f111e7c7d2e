"""FhirClient interactions: what goes on the wire and what the responses expose."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from ims_fhir.client import ClientConfig, FhirClient, Timeout, encode_query
from ims_fhir.errors import FhirAmbiguousMatchError, FhirConflictError, FhirError, FhirVersionConflictError, UsageError

from .scripted import BASE, Reply, ScriptedAdapter, outcome

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"versionId": "3", "lastUpdated": "2024-05-01T10:00:00.000+00:00"},
}


def test_requests_carry_fhir_json_headers_and_options(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter
) -> None:
    client = make_client(base_url=BASE + "/", timeout=Timeout(3, 20))
    adapter.queue(Reply(201, PATIENT))
    client.create({"resourceType": "Patient"})
    sent = adapter.calls("POST")[0]
    assert sent.url == "https://fhir.test/r4/Patient"
    assert sent.headers["Accept"] == "application/fhir+json"
    assert sent.headers["Content-Type"] == "application/fhir+json"
    assert sent.headers["User-Agent"].startswith("ims-fhir/")
    assert sent.timeout == (3, 20)
    assert sent.verify is True
    assert sent.json() == {"resourceType": "Patient"}


def test_builds_and_closes_its_own_session() -> None:
    client = FhirClient(ClientConfig(BASE))
    assert isinstance(client.transport.session, requests.Session)
    with client:
        pass


def test_an_injected_session_is_left_open(session: requests.Session) -> None:
    with FhirClient(ClientConfig(BASE), session=session):
        pass
    assert session.adapters  # still usable by its owner


def test_read_exposes_version_and_last_modified(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(200, PATIENT, {"ETag": 'W/"3"', "Last-Modified": "Wed, 01 May 2024 10:00:00 GMT"}))
    response = client.read("Patient", "p1")
    assert (response.status, response.resource_type, response.resource_id, response.version_id) == (
        200,
        "Patient",
        "p1",
        "3",
    )
    assert response.last_modified == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert response.resource == PATIENT


def test_vread(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(200, PATIENT))
    assert client.vread("Patient", "p1", "3").version_id == "3"
    assert adapter.calls("GET")[0].url == f"{BASE}/Patient/p1/_history/3"


def test_create_returns_location_and_version(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(201, None, {"Location": f"{BASE}/Patient/abc/_history/1", "ETag": 'W/"1"'}))
    response = client.create({"resourceType": "Patient"}, prefer="minimal")
    assert (response.status, response.resource_id, response.version_id) == (201, "abc", "1")
    assert response.location == f"{BASE}/Patient/abc/_history/1"
    assert response.resource is None
    assert adapter.calls("POST")[0].headers["Prefer"] == "return=minimal"


def test_conditional_create_sends_if_none_exist(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(200, PATIENT))
    client.create({"resourceType": "Patient"}, if_none_exist={"identifier": "urn:ims:patient|P 1"})
    header = adapter.calls("POST")[0].headers["If-None-Exist"]
    assert header == "identifier=urn%3Aims%3Apatient%7CP%201"
    assert parse_qs(header) == {"identifier": ["urn:ims:patient|P 1"]}


def test_conditional_create_with_several_matches_is_ambiguous(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(412, outcome(("error", "duplicate", "Multiple resources match", None))))
    with pytest.raises(FhirAmbiguousMatchError, match="conditional create of Patient.*Multiple resources match"):
        client.create({"resourceType": "Patient"}, if_none_exist="identifier=s|1")


def test_update_with_if_match_returns_the_new_version(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(200, {**PATIENT, "meta": {"versionId": "4"}}, {"ETag": 'W/"4"'}))
    response = client.update({"resourceType": "Patient", "id": "p1"}, if_match="3")
    sent = adapter.calls("PUT")[0]
    assert sent.url == f"{BASE}/Patient/p1"
    assert sent.headers["If-Match"] == 'W/"3"'
    assert response.version_id == "4"


def test_update_version_falls_back_to_meta(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(200, {**PATIENT, "meta": {"versionId": "7"}}))
    assert client.update({"resourceType": "Patient", "id": "p1"}, if_match='W/"6"').version_id == "7"
    assert adapter.calls("PUT")[0].headers["If-Match"] == 'W/"6"'


@pytest.mark.parametrize("status", [412, 409])  # 412: the spec; 409: stock HAPI (HAPI-0989)
def test_stale_if_match_is_a_version_conflict(client: FhirClient, adapter: ScriptedAdapter, status: int) -> None:
    adapter.queue(Reply(status, outcome(("error", "conflict", "Version 4 is not the most recent", None))))
    with pytest.raises(FhirVersionConflictError) as info:
        client.update({"resourceType": "Patient", "id": "p1"}, if_match="3")
    assert info.value.status == status and "most recent" in str(info.value)


def test_stale_if_match_in_a_transaction_is_a_version_conflict(client: FhirClient, adapter: ScriptedAdapter) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Procedure", "id": "x"},
         "request": {"method": "PUT", "url": "Procedure/x", "ifMatch": 'W/"1"'}}]}
    adapter.queue(Reply(412, outcome(("error", "conflict", "Version 1 is not the current version", None))))
    with pytest.raises(FhirVersionConflictError) as info:
        client.transaction(bundle)
    assert info.value.status == 412
    several = outcome(("error", "processing", 'HAPI-0958: Failed to CREATE: this search matched 2 resources', None))
    adapter.queue(Reply(412, several))
    with pytest.raises(FhirConflictError) as other:
        client.transaction(bundle)
    assert not isinstance(other.value, FhirVersionConflictError)


def test_conditional_update(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(201, PATIENT), Reply(412, outcome(("error", "duplicate", "2 matches", None))))
    client.conditional_update("Patient", [("identifier", "s|1")], {"resourceType": "Patient"})
    assert adapter.calls("PUT")[0].url == f"{BASE}/Patient?identifier=s%7C1"
    with pytest.raises(FhirAmbiguousMatchError):
        client.conditional_update("Patient", {"identifier": "s|1"}, {"resourceType": "Patient"})


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.update({"resourceType": "Patient"}),
        lambda c: c.read("Patient", "../metadata"),
        lambda c: c.read("patient", "p1"),
        lambda c: c.create({"id": "x"}),
        lambda c: c.transaction({"resourceType": "Bundle", "type": "batch"}),
        lambda c: c.conditional_update("Patient", "identifier=x", {"resourceType": "Observation"}),
        lambda c: c.create({"resourceType": "Patient"}, prefer="everything"),
    ],
)
def test_bad_calls_are_usage_errors(client: FhirClient, call: Callable[[FhirClient], Any]) -> None:
    with pytest.raises(UsageError):
        call(client)


def page(ids: list[str], next_url: str | None, *, include: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    entries = [{"resource": {"resourceType": "Patient", "id": i}, "search": {"mode": "match"}} for i in ids]
    entries += [{"resource": r, "search": {"mode": "include"}} for r in include]
    links = [{"relation": "self", "url": "x"}] + ([{"relation": "next", "url": next_url}] if next_url else [])
    return {"resourceType": "Bundle", "type": "searchset", "total": 5, "link": links, "entry": entries}


def test_search_follows_next_links(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(
        Reply(200, page(["a", "b"], f"{BASE}?_getpages=abc&_getpagesoffset=2&_count=2")),
        Reply(200, page(["c", "d"], f"{BASE}?_getpages=abc&_getpagesoffset=4&_count=2")),
        Reply(200, page(["e"], None)),
    )
    ids = [r["id"] for r in client.search("Patient", {"identifier": "s|", "_count": 2})]
    assert ids == ["a", "b", "c", "d", "e"]
    urls = [s.url for s in adapter.calls("GET")]
    assert urlsplit(urls[0]).path == "/r4/Patient" and parse_qs(urlsplit(urls[0]).query) == {
        "identifier": ["s|"],
        "_count": ["2"],
    }
    assert urls[1:] == [
        f"{BASE}?_getpages=abc&_getpagesoffset=2&_count=2",
        f"{BASE}?_getpages=abc&_getpagesoffset=4&_count=2",
    ]


def test_search_is_lazy(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(200, page(["a", "b"], f"{BASE}?_getpages=abc&o=2")))
    results = client.search("Patient")
    assert next(results)["id"] == "a"
    assert len(adapter.calls("GET")) == 1  # the next page is fetched only when needed


def test_search_pages_expose_bundles_and_includes(client: FhirClient, adapter: ScriptedAdapter) -> None:
    org = {"resourceType": "Organization", "id": "o1"}
    adapter.queue(Reply(200, page(["a"], None, include=[org])))
    pages = list(client.search_pages("Patient", {"_include": "Patient:organization"}, no_cache=True))
    assert len(pages) == 1
    assert [r["id"] for r in pages[0].matches] == ["a"]
    assert pages[0].included == [org]
    assert pages[0].total == 5
    assert pages[0].bundle["type"] == "searchset"
    assert adapter.calls("GET")[0].headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    "next_url",
    ["https://elsewhere.test/r4?_getpages=x", "http://fhir.test/r4?_getpages=x", "https://fhir.test/other?_getpages=x"],
)
def test_next_links_off_the_base_url_are_not_followed(
    client: FhirClient, adapter: ScriptedAdapter, next_url: str
) -> None:
    adapter.queue(Reply(200, page(["a"], next_url)))
    with pytest.raises(FhirError, match="leaves the base URL"):
        list(client.search("Patient"))
    assert len(adapter.calls("GET")) == 1


def test_a_next_link_loop_is_stopped(client: FhirClient, adapter: ScriptedAdapter) -> None:
    loop = f"{BASE}?_getpages=x"
    adapter.queue(Reply(200, page(["a"], loop)), Reply(200, page(["b"], loop)))
    with pytest.raises(FhirError, match="repeats an earlier page"):
        list(client.search("Patient"))


def test_history_yields_entries_across_pages(client: FhirClient, adapter: ScriptedAdapter) -> None:
    v2 = {"resource": {**PATIENT, "meta": {"versionId": "2"}}, "request": {"method": "PUT", "url": "Patient/p1"}}
    deleted = {"request": {"method": "DELETE", "url": "Patient/p1"}}
    v1 = {"resource": {**PATIENT, "meta": {"versionId": "1"}}, "request": {"method": "POST", "url": "Patient"}}
    adapter.queue(
        Reply(
            200,
            {
                "resourceType": "Bundle",
                "type": "history",
                "entry": [deleted, v2],
                "link": [{"relation": "next", "url": f"{BASE}?p=2"}],
            },
        ),
        Reply(200, {"resourceType": "Bundle", "type": "history", "entry": [v1]}),
    )
    entries = list(client.history("Patient", "p1"))
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "POST"]
    assert adapter.calls("GET")[0].url == f"{BASE}/Patient/p1/_history"


def test_transaction_exposes_entry_responses(client: FhirClient, adapter: ScriptedAdapter) -> None:
    reply = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "response": {
                    "status": "201 Created",
                    "location": "Patient/a/_history/1",
                    "etag": 'W/"1"',
                    "lastModified": "2024-05-01T10:00:00Z",
                }
            },
            {"response": {"status": "200 OK", "location": "Procedure/b/_history/4", "etag": 'W/"4"'}},
            {"response": {"status": "200", "outcome": outcome(("information", "informational", "no change", None))}},
        ],
    }
    adapter.queue(Reply(200, reply))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "POST", "url": "Patient"}}],
    }
    response = client.transaction(bundle)
    sent = adapter.calls("POST")[0]
    assert sent.url == BASE and sent.json() == bundle
    entries = response.entries()
    assert [(e.status, e.resource_type, e.resource_id, e.version_id) for e in entries] == [
        (201, "Patient", "a", "1"),
        (200, "Procedure", "b", "4"),
        (200, None, None, None),
    ]
    assert entries[0].last_modified == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert entries[2].issues[0].diagnostics == "no change"
    assert all(e.ok for e in entries)


def test_transaction_needs_a_transaction_response(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(200, {"resourceType": "OperationOutcome", "issue": []}))
    with pytest.raises(FhirError, match="transaction-response"):
        client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})


@pytest.mark.parametrize(
    ("query", "encoded"),
    [
        ({"identifier": "a|b", "_count": 10}, "identifier=a%7Cb&_count=10"),
        ({"code": ["x", "y"]}, "code=x&code=y"),
        ([("date", "ge2024-01-01"), ("date", "lt2025-01-01")], "date=ge2024-01-01&date=lt2025-01-01"),
        ("?name=x", "name=x"),
    ],
)
def test_encode_query(query: Any, encoded: str) -> None:
    assert encode_query(query) == encoded
