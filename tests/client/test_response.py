"""Reading status facts out of headers: ETag, Location, Last-Modified."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ims_fhir.client import FhirResponse
from ims_fhir.client.response import parse_location, version_from_etag


@pytest.mark.parametrize(
    ("etag", "version"), [('W/"3"', "3"), ('"12"', "12"), ("7", "7"), ('W/""', None), (None, None), ("", None)]
)
def test_version_from_etag(etag: str | None, version: str | None) -> None:
    assert version_from_etag(etag) == version


@pytest.mark.parametrize(
    ("location", "parsed"),
    [
        ("http://h/fhir/Patient/123/_history/2", ("Patient", "123", "2")),
        ("Patient/123", ("Patient", "123", None)),
        ("https://h/FHIR/Observation/a-b.c/_history/1", ("Observation", "a-b.c", "1")),
        ("https://h/fhir/Patient?identifier=x", None),
        (None, None),
    ],
)
def test_parse_location(location: str | None, parsed: tuple[str, str, str | None] | None) -> None:
    assert parse_location(location) == parsed


def test_response_prefers_headers_then_body() -> None:
    body = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "9", "lastUpdated": "2024-01-02T03:04:05Z"}}
    from_headers = FhirResponse.build(
        status=201,
        resource=body,
        headers={
            "Location": "http://h/fhir/Patient/p1/_history/2",
            "ETag": 'W/"2"',
            "Last-Modified": "Tue, 02 Jan 2024 03:04:05 GMT",
        },
    )
    assert (from_headers.version_id, from_headers.resource_id) == ("2", "p1")
    assert from_headers.last_modified == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    from_body = FhirResponse.build(status=200, resource=body, headers={})
    assert (from_body.version_id, from_body.resource_id, from_body.resource_type) == ("9", "p1", "Patient")
    assert from_body.last_modified == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_outcome_responses_expose_issues() -> None:
    oo = {
        "resourceType": "OperationOutcome",
        "id": "x",
        "issue": [{"severity": "information", "code": "informational"}],
    }
    response = FhirResponse.build(status=200, resource=oo, headers={})
    assert response.resource_id is None
    assert [i.code for i in response.issues] == ["informational"]
    assert response.entries() == []
