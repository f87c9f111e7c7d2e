"""The findings of the attack-and-fault probe (issue 13), one test each, with Flask's test client.

Each test reproduces a finding as reported (it failed before the fix) and checks the
defence. Findings that need the real server (waitress's connection limits, its own
413 of a chunked body, X-Forwarded-Proto from a trusted proxy) are in test_serve_limits.py.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from ims_fhir.errors import ConfigurationError
from ims_fhir.records.models import json_schema
from ims_fhir.records.validation import validate_record
from ims_fhir.sync import open_outbox
from ims_fhir_service import create_app
from ims_fhir_service.config import ServiceConfig
from ims_fhir.sync.runner import configure_logging

from .conftest import RO_TOKEN, RW_TOKEN, rw

PATIENT = {"record_type": "patient", "id": "PH1", "family_name": "Quixotically", "birth_date": "1961-07-14"}
ASSESSMENT = {"id": "AH1", "patient_id": "PH1", "practitioner_id": "PR1", "performed_at": "2025-03-04T09:30:00-08:00"}


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match
    return match.group(1)


# -- open redirect after login, and the retry form's back= -----------------------------------

HOSTILE_TARGETS = ["/\t/evil.example/", "//evil.example/", "/\\evil.example/", "\\\\evil.example/",
                   "https://evil.example/", "/\n/x", "/\r\nSet-Cookie: a=b", " //evil.example/", "/%09/../\t/evil",
                   "/ok/\x00", "javascript:alert(1)", "/a//evil.example"]


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_login_never_redirects_off_site_or_fails(client: FlaskClient, target: str) -> None:
    form = client.get("/login", query_string={"next": target}).get_data(as_text=True)
    assert "evil.example" not in form
    answer = client.post("/login", data={"token": RW_TOKEN, "next": target})
    assert answer.status_code == 302  # not 500 for CR/LF
    assert answer.headers["Location"] == "/"


def test_login_keeps_a_local_next(client: FlaskClient) -> None:
    answer = client.post("/login", data={"token": RW_TOKEN, "next": "/ui/records/patient/P1"})
    assert answer.headers["Location"] == "/ui/records/patient/P1"


@pytest.mark.parametrize("back", ["/\t/evil.example/", "/\\evil.example", "/\n/x"])
def test_retry_form_back_is_checked_the_same_way(client: FlaskClient, back: str) -> None:
    client.post("/login", data={"token": RW_TOKEN})
    page = client.get("/").get_data(as_text=True)
    answer = client.post("/ui/records/patient/P1/retry", data={"csrf": _csrf(page), "back": back})
    assert answer.status_code == 303 and answer.headers["Location"] == "/"


# -- log forging ------------------------------------------------------------------------------

def test_request_paths_cannot_forge_log_lines(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    forged = "x%0D%0A2026-12-01 10:00:00,000 INFO service.dashboard: dashboard login: token admin"
    with caplog.at_level(logging.INFO):
        assert client.get("/records/patient/" + forged).status_code == 401
        client.get("/records/patient/" + "n%00ul" + "A" * 70000)
    messages = [r.getMessage() for r in caplog.records if r.name.endswith(".access")]
    assert len(messages) == 2
    for message in messages:
        assert not any(ord(c) < 0x20 for c in message), message[:200]
        assert len(message) < 600
    assert "\\r\\n2026-12-01" in messages[0] and "\\x00" in messages[1]


@pytest.mark.parametrize("kind", ["text", "json"])
def test_the_service_log_is_one_line_per_message(kind: str) -> None:
    stream = io.StringIO()
    configure_logging("INFO", kind, stream=stream)
    try:
        logging.getLogger("service.test").info("a %s b", "line\nbreak\x1b[31m" + "z" * 5000)
        logging.getLogger("service.test").warning("plain")
    finally:
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and all(len(line) < 3000 for line in lines)
    assert "\x1b" not in stream.getvalue()
    if kind == "json":
        first = json.loads(lines[0])
        assert first["level"] == "INFO" and first["logger"] == "service.test" and "\\n" in first["message"]


# -- /pull with a bad since -------------------------------------------------------------------

@pytest.mark.parametrize("since", ["not-a-date", "2026-13-01", "0001-01-01", "2026-01-01T10:00", 12, "2026-01-01 x"])
def test_pull_with_a_bad_since_is_422_before_anything_is_sent(client: FlaskClient, since: object) -> None:
    answer = client.post("/pull", json={"target": "hospital", "since": since}, headers=rw())
    assert answer.status_code == 422, answer.get_data(as_text=True)
    assert answer.json["resourceType"] == "OperationOutcome" and "since" in answer.json["issue"][0]["diagnostics"]


def test_pull_needs_json_when_it_has_a_body(client: FlaskClient) -> None:
    answer = client.post("/pull", data="target=hospital", headers=rw(), content_type="text/plain")
    assert answer.status_code == 415 and answer.json["resourceType"] == "OperationOutcome"


# -- SQLite outbox damage ---------------------------------------------------------------------

def _filled_outbox(client: FlaskClient, app: Flask, n: int = 300) -> Path:
    lines = [orjson.dumps({**PATIENT, "id": f"PD{i}", "family_name": "Damage" + "x" * 150}) for i in range(n)]
    assert client.post("/records", data=b"\n".join(lines), headers=rw()).status_code == 202
    outbox = app.extensions["ims_fhir"].outbox
    path = Path(outbox.path)
    outbox.close()  # checkpoints the WAL into the file
    return path


def _zero_a_middle_page(path: Path) -> None:
    data = bytearray(path.read_bytes())
    pages = len(data) // 4096
    assert pages > 8
    middle = (pages // 2) * 4096
    data[middle:middle + 4096] = bytes(4096)
    path.write_bytes(bytes(data))


def test_a_damaged_outbox_is_refused_at_start(client: FlaskClient, app: Flask) -> None:
    path = _filled_outbox(client, app)
    _zero_a_middle_page(path)
    with pytest.raises(ConfigurationError, match="damaged"):
        open_outbox(f"sqlite:///{path}")


def test_ready_reports_damage_that_happens_while_running(client: FlaskClient, app: Flask,
                                                         make_config: Callable[..., ServiceConfig]) -> None:
    path = _filled_outbox(client, app)
    running = create_app(make_config())
    web = running.test_client()
    assert web.get("/ready").json["checks"]["storage"] == "ok"
    running.extensions["ims_fhir"].outbox.close()
    _zero_a_middle_page(path)
    running.extensions.pop("ims_fhir_integrity", None)
    answer = web.get("/ready")
    assert answer.status_code == 503 and "damaged" in answer.json["checks"]["storage"]
    for i in range(0, 300, 7):  # reading damaged records answers 503, never a 500
        assert web.get(f"/records/patient/PD{i}", headers=rw()).status_code in (200, 404, 503)
    running.extensions["ims_fhir"].outbox.close()


def test_an_empty_file_is_not_silently_a_new_outbox(tmp_path: Path) -> None:
    empty = tmp_path / "outbox.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(ConfigurationError, match="empty"):
        open_outbox(f"sqlite:///{empty}")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 300)
    with pytest.raises(ConfigurationError):
        open_outbox(f"sqlite:///{garbage}")
    fresh = open_outbox(f"sqlite:///{tmp_path / 'new.sqlite'}")  # a missing file is a new outbox
    fresh.ping()
    fresh.close()


# -- security headers -------------------------------------------------------------------------

def test_pages_and_record_data_carry_security_headers(client: FlaskClient) -> None:
    client.post("/login", data={"token": RW_TOKEN})
    client.post("/records", json={k: v for k, v in PATIENT.items()}, headers=rw())
    for answer in (client.get("/"), client.get("/login"), client.get("/ui/records/patient/PH1"),
                   client.get("/records/patient/PH1", headers=ro_headers())):
        assert answer.status_code == 200
        h = answer.headers
        assert "frame-ancestors 'none'" in h["Content-Security-Policy"]
        assert "default-src 'self'" in h["Content-Security-Policy"]
        assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff"
        assert h["Cache-Control"] == "no-store" and h["Referrer-Policy"] == "no-referrer"


def ro_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {RO_TOKEN}"}


# -- login throttle, logout -------------------------------------------------------------------

def test_wrong_tokens_are_throttled_per_address(client: FlaskClient) -> None:
    codes = [client.post("/login", data={"token": f"wrong-{i}"}).status_code for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    assert client.post("/login", data={"token": RW_TOKEN}).status_code == 429  # this address waits
    other = {"REMOTE_ADDR": "127.0.0.9"}
    assert client.post("/login", data={"token": RW_TOKEN}, environ_base=other).status_code == 302


def test_one_token_is_throttled_from_many_addresses(client: FlaskClient) -> None:
    codes = [client.post("/login", data={"token": "guessed"}, environ_base={"REMOTE_ADDR": f"10.0.0.{i}"}).status_code
             for i in range(12)]
    assert codes[-1] == 429 and codes[0] == 401


def test_wrong_bearer_tokens_are_throttled(client: FlaskClient) -> None:
    codes = [client.get("/records/patient/P1", headers={"Authorization": f"Bearer nope-{i}"}).status_code
             for i in range(11)]
    assert codes[-1] == 429
    last = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert last.status_code == 429 and int(last.headers["Retry-After"]) > 0
    assert last.json["resourceType"] == "OperationOutcome"


def test_logout_ends_the_session_on_the_server(client: FlaskClient, app: Flask) -> None:
    client.post("/login", data={"token": RW_TOKEN})
    page = client.get("/").get_data(as_text=True)
    cookie = client.get_cookie("ims_fhir_session")
    assert cookie is not None
    copied = cookie.value
    assert client.post("/logout", data={"csrf": _csrf(page)}).status_code == 302
    thief = app.test_client()
    thief.set_cookie("ims_fhir_session", copied)
    answer = thief.get("/")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/login")
    assert thief.get("/records/patient/P1").status_code == 401


# -- implausible values -----------------------------------------------------------------------

@pytest.mark.parametrize(("record_type", "record", "path", "rule"), [
    ("assessment", {**ASSESSMENT, "performed_at": "0001-01-01T00:00:00-08:00"}, "performed_at", "date_range"),
    ("assessment", {**ASSESSMENT, "performed_at": "1899-12-31T23:00:00Z"}, "performed_at", "date_range"),
    ("assessment", {**ASSESSMENT, "performed_at": "9999-12-31T23:59:59Z"}, "performed_at", "date_range"),
    ("patient", {"id": "P1", "family_name": "A", "birth_date": "9999-12-31"}, "birth_date", "date_range"),
    ("patient", {"id": "P1", "family_name": "A", "birth_date": "1850-01-01"}, "birth_date", "date_range"),
    ("patient", {"id": "P1", "family_name": "A" * 1_000_000}, "family_name", "length"),
    ("patient", {"id": "P1", "family_name": "A", "given_names": ["B" * 201]}, "given_names[0]", "length"),
    ("assessment", {**ASSESSMENT, "notes": "n" * 10_001}, "notes", "length"),
    ("patient", {"id": "a/b", "family_name": "A"}, "id", "id_format"),
    ("patient", {"id": "..", "family_name": "A"}, "id", "id_format"),
    ("patient", {"id": "P" * 65, "family_name": "A"}, "id", "length"),
    ("assessment", {**ASSESSMENT, "patient_id": "x y"}, "patient_id", "id_format"),
])
def test_implausible_values_are_refused(record_type: str, record: dict[str, object], path: str, rule: str) -> None:
    model, problems = validate_record(record_type, record)
    assert model is None
    assert (path, rule) in [(p.path, p.rule) for p in problems], problems


def test_a_date_time_in_the_near_future_and_1900_are_fine() -> None:
    for when in ("1900-01-01T00:00:00Z", "2026-12-31T10:00:00-08:00"):
        model, problems = validate_record("assessment", {**ASSESSMENT, "performed_at": when})
        assert problems == []


def test_the_schema_documents_the_limits() -> None:
    defs = json_schema()["$defs"]
    patient = defs["Patient"]["properties"]
    assert patient["id"]["maxLength"] == 64 and "pattern" in patient["id"]
    assert patient["family_name"]["maxLength"] == 200
    assert defs["Assessment"]["properties"]["notes"]["anyOf"][0]["maxLength"] == 10000
    assert "1900" in defs["Assessment"]["properties"]["performed_at"]["description"]


def test_implausible_records_posted_are_refused_and_not_stored(client: FlaskClient, app: Flask) -> None:
    bad = [{**PATIENT, "id": "PB1", "birth_date": "9999-12-31"}, {**PATIENT, "id": "PB2", "family_name": "x" * 300},
           {**PATIENT, "id": "a/b"}]
    answer = client.post("/records", json=bad, headers=rw())
    assert answer.status_code == 422
    outbox = app.extensions["ims_fhir"].outbox
    assert outbox.status("patient", "PB1") is None and outbox.status("patient", "PB2") is None


# -- duplicate keys, Content-Type -------------------------------------------------------------

def test_duplicate_keys_are_refused(client: FlaskClient, app: Flask) -> None:
    one = b'{"record_type": "patient", "id": "PK1", "family_name": "A", "family_name": "B"}'
    answer = client.post("/records", data=one, headers=rw())
    assert answer.status_code in (400, 422) and "family_name" in answer.get_data(as_text=True)
    two = b'{"record_type": "patient", "id": "PK2", "family_name": "A"}\n' \
          b'{"record_type": "patient", "id": "PK3", "family_name": "A", "sex": "male", "sex": "female"}'
    answer = client.post("/records", data=two, headers=rw(), content_type="application/x-ndjson")
    assert answer.status_code == 422
    issue = answer.json["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "duplicate_key" and issue["location"] == ["line 2"]
    outbox = app.extensions["ims_fhir"].outbox
    assert outbox.status("patient", "PK1") is None and outbox.status("patient", "PK3") is None


def test_duplicate_keys_in_a_file_are_rejects(tmp_path: Path) -> None:
    from ims_fhir.records.readers import open_input

    path = tmp_path / "dup.ndjson"
    path.write_bytes(b'{"record_type": "patient", "id": "P1", "family_name": "A", "family_name": "B"}\n'
                     b'{"record_type": "patient", "id": "P2", "family_name": "A", "note_s": "\\":"}\n')
    records = list(open_input(path).records)
    assert [p.rule for p in records[0].problems] == ["duplicate_key"]
    assert records[1].problems == []


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_records_need_a_json_content_type(app: Flask, content_type: str | None) -> None:
    web = app.test_client()
    headers = {"Authorization": f"Bearer {RW_TOKEN}"}
    if content_type:
        headers["Content-Type"] = content_type
    answer = web.post("/records", data=orjson.dumps(PATIENT), headers=headers)
    assert answer.status_code == 415
    assert answer.json["resourceType"] == "OperationOutcome" and "application/json" in answer.json["issue"][0]["diagnostics"]
    assert app.extensions["ims_fhir"].outbox.status("patient", "PH1") is None


# -- bounded error answers --------------------------------------------------------------------

def test_a_small_request_cannot_produce_a_huge_error_answer(client: FlaskClient) -> None:
    body = b"[" + b",".join([b"{}"] * 20000) + b"]"  # 60 kB
    answer = client.post("/records", data=body, headers=rw())
    assert answer.status_code == 422
    assert len(answer.get_data()) < 100_000
    issues = answer.json["issue"]
    assert len(issues) == 101 and issues[-1]["severity"] == "information"
    assert "more issue(s) not listed" in issues[-1]["diagnostics"]


def test_long_values_are_cut_in_error_answers(client: FlaskClient) -> None:
    record = {**PATIENT, "x" * 100_000: 1, "id": "P" + "1" * 100_000}
    answer = client.post("/records", json=record, headers=rw())
    assert answer.status_code == 422 and len(answer.get_data()) < 20_000


# -- /ready, Secure cookie --------------------------------------------------------------------

def test_ready_names_targets_only_for_a_token(client: FlaskClient) -> None:
    anonymous = client.get("/ready")
    assert "hospital" not in anonymous.get_data(as_text=True)
    assert anonymous.json["checks"]["targets"] in ("ok", "1 of 1 unreachable")
    named = client.get("/ready", headers=ro_headers())
    assert "hospital" in named.json["checks"]["targets"]


def test_the_cookie_is_secure_over_https_or_when_configured(app: Flask, make_config: Callable[..., ServiceConfig]
                                                            ) -> None:
    plain = app.test_client().post("/login", data={"token": RW_TOKEN})
    assert "Secure" not in plain.headers["Set-Cookie"]
    https = app.test_client().post("/login", data={"token": RW_TOKEN}, base_url="https://localhost")
    assert "; Secure" in https.headers["Set-Cookie"]
    configured = create_app(make_config(server={"secure_cookies": True}))
    answer = configured.test_client().post("/login", data={"token": RW_TOKEN})
    assert "; Secure" in answer.headers["Set-Cookie"]
    configured.extensions["ims_fhir"].outbox.close()


def test_deeply_nested_json_is_a_clear_refusal(client: FlaskClient) -> None:
    # found by the fuzz suite: orjson reads 1,000 levels but writes only 254 (a 500 before)
    for depth in (40, 330, 1000):
        body = b'{"a":' * depth + b"1" + b"}" * depth
        answer = client.post("/records", data=body, headers=rw())
        assert answer.status_code in (400, 422) and "deeper than 32" in answer.get_data(as_text=True)
        lines = b'{"record_type": "patient", "id": "PN1", "family_name": "A"}\n' + body
        answer = client.post("/records", data=lines, headers=rw())
        assert answer.status_code == 422 and "deeper than 32" in answer.get_data(as_text=True)
