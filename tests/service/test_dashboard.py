"""The dashboard's pages and forms with Flask's test client (the browser test is in tests/integration)."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient

from ims_fhir.sync import Result
from tests.conftest import EXAMPLES

from .conftest import RO_TOKEN, RW_TOKEN, rw


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match
    return match.group(1)


def test_pages_need_a_login(client: FlaskClient) -> None:
    answer = client.get("/")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/login")
    assert client.get("/ui/records/patient/P1").status_code == 302
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    login = client.post("/login", data={"token": RW_TOKEN, "next": "//evil.example.org/"})
    assert login.status_code == 302 and login.headers["Location"] == "/"
    assert "HttpOnly" in login.headers["Set-Cookie"] and "SameSite=Lax" in login.headers["Set-Cookie"]
    assert client.get("/").status_code == 200


def test_failures_show_the_outcome_and_retry_needs_csrf_and_write_scope(client: FlaskClient, app: Flask) -> None:
    client.post("/records", data=(EXAMPLES / "records.ndjson").read_bytes(), headers=rw())
    outbox = app.extensions["ims_fhir"].outbox
    outbox.claim("hospital", owner="w", limit=1, lease_seconds=60, now=2e9)
    oo = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": "Unknown code 'x'", "expression": ["Patient.gender"]},
        *[{"severity": "warning", "code": "informational", "diagnostics": f"later warning {i}"}
          for i in range(10)]]}
    outbox.complete("hospital", [Result("patient", "P000001", "rejected", 1, status=422, error="refused", outcome=oo)],
                    owner="w", now=2e9, max_attempts=3, backoff_base=1, backoff_cap=1, latency=None)
    client.post("/login", data={"token": RW_TOKEN})
    page = client.get("/").get_data(as_text=True)
    assert "patient P000001" in page and "Unknown code" in page and "10 more issues" in page \
        and "later warning 3" not in page  # (not a two-letter text a random CSRF token may contain)
    assert client.post("/ui/records/patient/P000001/retry", data={}).status_code == 403  # no CSRF token
    answer = client.post("/ui/records/patient/P000001/retry", data={"csrf": _csrf(page), "back": "https://evil.example"})
    assert answer.status_code == 303 and answer.headers["Location"] == "/"
    assert outbox.status("patient", "P000001").deliveries[0].state == "queued"
    record = client.get("/ui/records/patient/P000001").get_data(as_text=True)
    assert "retry requested" in record and "failed" in record
    assert client.get("/ui/lookup?record_type=patient&record_id=P000001").headers["Location"] == \
        "/ui/records/patient/P000001"
    assert client.get("/ui/records/patient/NOPE").status_code == 404


def test_a_read_only_login_can_look_but_not_retry(client: FlaskClient) -> None:
    client.post("/login", data={"token": RO_TOKEN})
    page = client.get("/").get_data(as_text=True)
    assert "(read)" in page
    assert client.post("/ui/retry-dead", data={"csrf": _csrf(page)}).status_code == 403
    assert client.post("/logout", data={"csrf": _csrf(page)}).status_code == 302
    assert client.get("/").status_code == 302


def test_the_session_reads_the_api_but_does_not_write_it(client: FlaskClient) -> None:
    client.post("/records", json={"record_type": "practitioner", "id": "PR9", "family_name": "Qx"}, headers=rw())
    client.post("/login", data={"token": RW_TOKEN})
    assert client.get("/records/practitioner/PR9").status_code == 200
    assert client.post("/retry?state=dead").status_code == 401


def test_a_non_ascii_csrf_token_is_refused_not_a_500(client: FlaskClient) -> None:
    # found by the fuzz suite: hmac.compare_digest raised TypeError on a str with non-ASCII characters
    client.post("/login", data={"token": RW_TOKEN})
    for sent in ("\x80", "é" * 40):
        answer = client.post("/ui/retry-dead", data={"csrf": sent})
        assert answer.status_code == 403, (sent, answer.status_code)
    answer = client.post("/ui/retry-dead", headers={"X-CSRF-Token": "ü"})
    assert answer.status_code in (400, 403)
