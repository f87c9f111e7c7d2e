"""Error translation: statuses to typed exceptions, OperationOutcome issues, readable bodies."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ims_fhir.client import FhirClient, RetryPolicy
from ims_fhir.client.errors import classify_exception, error_class_for_status, shown_url, summarize_body
from ims_fhir.errors import (
    FhirAuthError,
    FhirClientSideError,
    FhirConflictError,
    FhirError,
    FhirNotFoundError,
    FhirServerError,
    FhirServerSideError,
    FhirUnprocessableError,
    FhirVersionConflictError,
)

from .scripted import Reply, ScriptedAdapter, connection_refused, connection_reset, outcome, read_timeout

VALIDATION_FAILED = outcome(
    ("error", "required", "Patient.gender: minimum required = 1,\n but only found 0", ["Patient.gender"]),
    ("error", "value", "Unknown code 'x'", ["Patient.maritalStatus.coding[0]"]),
    ("warning", "informational", "Best practice: add a narrative", None),
)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, FhirClientSideError),
        (401, FhirAuthError),
        (403, FhirAuthError),
        (404, FhirNotFoundError),
        (405, FhirClientSideError),
        (408, FhirServerSideError),
        (409, FhirVersionConflictError),
        (410, FhirNotFoundError),
        (412, FhirConflictError),
        (422, FhirUnprocessableError),
        (429, FhirServerSideError),
        (500, FhirServerSideError),
        (501, FhirServerSideError),
        (503, FhirServerSideError),
        (302, FhirServerError),
    ],
)
def test_status_table(status: int, error: type[FhirServerError]) -> None:
    assert error_class_for_status(status) is error


@pytest.mark.parametrize(("status", "version_aware", "error"), [
    (409, False, FhirVersionConflictError),
    (409, True, FhirVersionConflictError),
    (412, True, FhirVersionConflictError),
    (412, False, FhirConflictError),  # without If-Match a 412 is an ambiguous conditional match
])
def test_version_conflicts_are_409_or_412_to_a_version_aware_write(
    status: int, version_aware: bool, error: type[FhirServerError]
) -> None:
    assert error_class_for_status(status, version_aware=version_aware) is error


def test_422_carries_the_operation_outcome_issues(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(422, VALIDATION_FAILED))
    with pytest.raises(FhirUnprocessableError) as info:
        client.create({"resourceType": "Patient"})
    err = info.value
    assert err.status == 422
    assert err.outcome is not None and err.outcome["resourceType"] == "OperationOutcome"
    assert [(i.severity, i.code, i.expression) for i in err.issues] == [
        ("error", "required", ("Patient.gender",)),
        ("error", "value", ("Patient.maritalStatus.coding[0]",)),
        ("warning", "informational", ()),
    ]
    text = str(err)
    assert "\n" not in text  # one line, even though the server's diagnostics had a newline
    assert "HTTP 422" in text
    assert "Patient.gender: minimum required = 1, but only found 0 at Patient.gender" in text
    assert "Unknown code 'x'" in text
    assert "Best practice" not in text  # warnings only show when there is no error


def test_html_502_body_gives_a_readable_one_line_message(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter
) -> None:
    client = make_client(retry=RetryPolicy.no_retries())
    page = (
        "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title><style>body{}</style></head>"
        "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx/1.25</center></body></html>"
    )
    adapter.queue(Reply(502, page, {"Content-Type": "text/html"}))
    with pytest.raises(FhirServerSideError) as info:
        client.read("Patient", "p1")
    text = str(info.value)
    assert text == "GET https://fhir.test/r4/Patient/p1 failed: 502 Bad Gateway (HTTP 502)"
    assert info.value.issues == [] and info.value.outcome is None


def test_html_without_title_is_stripped_of_tags() -> None:
    body = b"<html><body><h1>Oops</h1>\n<p>The   upstream &amp; friends are down</p><script>x()</script></body></html>"
    assert summarize_body(body, "text/html") == "Oops The upstream & friends are down"


def test_long_bodies_are_cut() -> None:
    summary = summarize_body(b"x" * 10_000, "text/plain")
    assert summary is not None and len(summary) <= 200 and summary.endswith("…")


def test_non_fhir_json_error_uses_its_message() -> None:
    assert summarize_body(b'{"error": "rate_limited", "message": "slow down"}', "application/json") == "slow down"


def test_empty_error_body_uses_the_reason_phrase(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter
) -> None:
    adapter.queue(Reply(404))
    with pytest.raises(FhirNotFoundError, match=r"failed: Not Found \(HTTP 404\)$"):
        make_client().read("Patient", "p1")


def test_non_json_success_body_is_a_readable_fhir_error(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(200, "<html><title>Login required</title></html>", {"Content-Type": "text/html"}))
    with pytest.raises(FhirError, match="not JSON: Login required"):
        client.read("Patient", "p1")


def test_messages_hide_the_query_string(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(400, outcome(("error", "invalid", "bad parameter", None))))
    with pytest.raises(FhirClientSideError) as info:
        list(client.search("Patient", {"identifier": "urn:mrn|123456"}))
    assert "123456" not in str(info.value)
    assert "Patient?…" in str(info.value)
    assert info.value.url is not None and "123456" in info.value.url  # the full URL stays on the error


def test_shown_url() -> None:
    assert shown_url("https://x/fhir/Patient?identifier=1") == "https://x/fhir/Patient?…"
    assert shown_url("https://x/fhir/Patient/1") == "https://x/fhir/Patient/1"


@pytest.mark.parametrize(
    ("make", "retryable", "unsent", "phrase"),
    [
        (connection_reset, True, False, "connection reset"),
        (connection_refused, True, True, "could not connect"),
        (read_timeout, True, False, "read timeout"),
    ],
)
def test_classify_exception(make: Callable[[], Exception], retryable: bool, unsent: bool, phrase: str) -> None:
    failure = classify_exception(make())  # type: ignore[arg-type]
    assert (failure.retryable, failure.unsent) == (retryable, unsent)
    assert phrase in failure.summary
