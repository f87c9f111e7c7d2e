"""The API without a FHIR server: auth, limits, validation answers, the outbox's bookkeeping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from ims_fhir_service import create_app
from ims_fhir_service.config import ServiceConfig
from tests.conftest import EXAMPLES, SOURCE

from .conftest import RO_TOKEN, RW_TOKEN, ro, rw
from .support import leaks, personal_data

NDJSON = (EXAMPLES / "records.ndjson").read_bytes()
PATIENT = {"record_type": "patient", "id": "PZ1", "family_name": "Quixotically", "given_names": ["Zebediah"],
           "birth_date": "1961-07-14", "sex": "male"}


@pytest.mark.parametrize(("method", "path"), [
    ("post", "/records"), ("get", "/records/patient/P000001"), ("post", "/records/patient/P000001/retry"),
    ("post", "/retry?state=dead"), ("post", "/pull"), ("get", "/metrics"), ("get", "/openapi.json"),
])
@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"Authorization": "Bearer not-the-token"}, 401),
    ({"Authorization": f"Basic {RW_TOKEN}"}, 401),
])
def test_every_endpoint_but_health_and_ready_needs_a_valid_token(
        client: FlaskClient, method: str, path: str, headers: dict[str, str], status: int) -> None:
    answer = getattr(client, method)(path, headers=headers, data=NDJSON if method == "post" else None)
    assert answer.status_code == status
    assert answer.json["resourceType"] == "OperationOutcome"
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_health_needs_no_token_and_ready_says_what_is_missing(client: FlaskClient) -> None:
    assert client.get("/health").json == {"status": "ok"}
    ready = client.get("/ready")  # the configured target (port 9) answers nothing
    assert ready.status_code == 503
    assert ready.json["checks"]["storage"] == "ok"
    assert ready.json["checks"]["targets"]["hospital"].startswith("unreachable")


@pytest.mark.parametrize(("method", "path"), [
    ("post", "/records"), ("post", "/records/patient/P000001/retry"), ("post", "/retry?state=dead"), ("post", "/pull"),
])
def test_a_read_only_token_cannot_write(client: FlaskClient, method: str, path: str) -> None:
    answer = getattr(client, method)(path, headers=ro(), data=NDJSON)
    assert answer.status_code == 403
    assert "read-only" in answer.json["issue"][0]["diagnostics"]


def test_a_read_only_token_can_read(client: FlaskClient) -> None:
    client.post("/records", data=NDJSON, headers=rw())
    assert client.get("/records/patient/P000001", headers=ro()).status_code == 200
    assert client.get("/metrics", headers=ro()).status_code == 200


def test_a_body_past_the_limit_is_413_and_stores_nothing(client: FlaskClient, app: Flask) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    big = NDJSON * (limit // len(NDJSON) + 1)
    answer = client.post("/records", data=big, headers=rw())
    assert answer.status_code == 413
    assert answer.json["issue"][0]["code"] == "too-costly"
    assert app.extensions["ims_fhir"].outbox.stats().depth == {}


def test_post_queues_every_form_and_a_repost_is_a_no_op(client: FlaskClient, app: Flask) -> None:
    first = client.post("/records", data=NDJSON, headers=rw(), content_type="application/x-ndjson")
    assert first.status_code == 202
    assert (first.json["accepted"], first.json["queued"], first.json["rejected"]) == (26, 26, 0)
    assert first.json["records"][0]["status"] == "/records/patient/P000001"
    document = client.post("/records", data=(EXAMPLES / "clinic.json").read_bytes(), headers=rw())
    assert document.status_code == 202 and document.json["unchanged"] == 26
    array = [orjson.loads(line) for line in NDJSON.splitlines()]
    assert client.post("/records", json=array, headers=rw()).json["unchanged"] == 26
    assert client.post("/records", json=array[0], headers=rw()).json["unchanged"] == 1
    outbox = app.extensions["ims_fhir"].outbox
    assert outbox.stats().depth == {("hospital", "queued"): 26}
    history = client.get("/records/patient/P000001", headers=rw()).json["history"]
    assert [e["event"] for e in history] == ["queued"]


def test_invalid_records_get_422_with_every_reason_and_the_valid_ones_still_go_in(client: FlaskClient) -> None:
    bad_patient = {"record_type": "patient", "id": "PX", "family_name": "", "sex": "blue", "shoe_size": 44}
    bad_treatment = {"record_type": "treatment", "id": "TX", "patient_id": "PX", "practitioner_id": "PR1",
                     "started_at": "2025-03-04T09:30:00", "consent_obtained": False, "sites": []}
    body = b"\n".join(orjson.dumps(r) for r in (bad_patient, PATIENT, bad_treatment)) + b"\n{not json\n"
    answer = client.post("/records", data=body, headers=rw())
    assert answer.status_code == 422
    issues = answer.json["issue"]
    errors = [(i["location"][0], i["expression"][0], i["details"]["coding"][0]["code"]) for i in issues
              if i["severity"] == "error"]
    assert ("line 1", "family_name", "non_empty") in errors
    assert ("line 1", "sex", "enum") in errors
    assert ("line 1", "shoe_size", "unknown_field") in errors
    assert {e[1] for e in errors if e[0] == "line 3"} >= {"started_at", "consent_obtained", "sites"}
    assert ("line 4", "(line)", "malformed_json") in errors
    (info,) = [i for i in issues if i["severity"] == "information"]
    assert info["location"] == ["line 2"] and "/records/patient/PZ1" in info["diagnostics"]
    assert client.get("/records/patient/PZ1", headers=rw()).status_code == 200
    assert client.get("/records/patient/PX", headers=rw()).status_code == 404
    assert client.get("/records/treatment/TX", headers=rw()).status_code == 404


def test_a_duplicate_id_in_one_batch_rejects_the_second(client: FlaskClient) -> None:
    answer = client.post("/records", json=[PATIENT, {**PATIENT, "family_name": "Other"}], headers=rw())
    assert answer.status_code == 422
    (error,) = [i for i in answer.json["issue"] if i["severity"] == "error"]
    assert error["location"] == ["[1]"] and "already used at [0]" in error["diagnostics"]


@pytest.mark.parametrize(("body", "status", "text"), [
    (b"", 400, "no records"),
    (b"<xml/>", 400, "not JSON"),
    (b"42", 400, "must be a record object"),
    (orjson.dumps({"format": "ims-record/0", "patients": []}), 400, "ims-record/1"),
    (orjson.dumps({"format": "ims-record/1", "source": {**SOURCE, "system_base": "https://elsewhere.example.org"}}),
     422, "system_base"),
])
def test_bodies_that_are_not_records(client: FlaskClient, body: bytes, status: int, text: str) -> None:
    answer = client.post("/records", data=body, headers=rw())
    assert answer.status_code == status
    assert text in answer.json["issue"][0]["diagnostics"]


def test_a_changed_record_is_queued_again_as_a_new_revision(client: FlaskClient, app: Flask) -> None:
    client.post("/records", json=PATIENT, headers=rw())
    outbox = app.extensions["ims_fhir"].outbox
    (claimed,) = outbox.claim("hospital", owner="w1", limit=10, lease_seconds=60, now=2e9)
    outbox.complete("hospital", [_synced(claimed)], owner="w1", now=2e9, max_attempts=3, backoff_base=1,
                    backoff_cap=1, latency=0.2)
    assert client.get("/records/patient/PZ1", headers=rw()).json["targets"][0]["state"] == "synced"
    changed = client.post("/records", json={**PATIENT, "phone": "+1-604-555-0100"}, headers=rw())
    assert changed.json["records"][0] == {**changed.json["records"][0], "result": "queued", "revision": 2}
    (target,) = client.get("/records/patient/PZ1", headers=rw()).json["targets"]
    assert target["state"] == "queued" and target["synced_revision"] == 1 and target["record_revision"] == 2


def _synced(claimed: Any) -> Any:
    from ims_fhir.sync import Result

    return Result(claimed.record_type, claimed.record_id, "synced", claimed.revision,
                  resources=[{"resourceType": "Patient", "id": "123", "version": "1", "outcome": "created"}])


def test_retry_endpoints(client: FlaskClient, app: Flask) -> None:
    from ims_fhir.sync import Result

    client.post("/records", json=PATIENT, headers=rw())
    outbox = app.extensions["ims_fhir"].outbox
    (claimed,) = outbox.claim("hospital", owner="w1", limit=10, lease_seconds=60, now=2e9)
    outbox.complete("hospital", [Result("patient", "PZ1", "transient", 1, status=503, error="busy")], owner="w1",
                    now=2e9, max_attempts=1, backoff_base=1, backoff_cap=1, latency=None)
    assert client.get("/records/patient/PZ1", headers=rw()).json["targets"][0]["state"] == "dead"
    assert client.post("/retry", headers=rw()).status_code == 422
    assert client.post("/retry?state=dead&target=elsewhere", headers=rw()).status_code == 422
    assert client.post("/retry?state=dead", headers=rw()).json == {"requeued": 1}
    assert client.get("/records/patient/PZ1", headers=rw()).json["targets"][0]["state"] == "queued"
    assert client.post("/records/patient/PZ1/retry", headers=rw()).json["requeued"] == 0
    assert client.post("/records/patient/NOPE/retry", headers=rw()).status_code == 404
    assert client.post("/records/pet/PZ1/retry", headers=rw()).status_code == 404


def test_pull_takes_targets_only_from_configuration(client: FlaskClient) -> None:
    answer = client.post("/pull", json={"target": "http://evil.example.org/fhir"}, headers=rw())
    assert answer.status_code == 422 and "configured target" in answer.json["issue"][0]["diagnostics"]
    assert client.post("/pull", json={"target": "hospital", "url": "x"}, headers=rw()).status_code == 422
    answer = client.post("/pull", json={"target": "hospital", "patient": "P000001"}, headers=rw())
    assert answer.status_code == 422 and "SYSTEM|VALUE" in answer.json["issue"][0]["diagnostics"]
    answer = client.post("/pull", json={"target": "hospital"}, headers=rw())  # nothing listens on its port
    assert answer.status_code == 502 and answer.json["issue"][0]["code"] == "exception"


def test_metrics_are_prometheus_text(client: FlaskClient, app: Flask) -> None:
    client.post("/records", data=NDJSON, headers=rw())
    outbox = app.extensions["ims_fhir"].outbox
    claimed = outbox.claim("hospital", owner="w1", limit=5, lease_seconds=60, now=2e9)
    outbox.complete("hospital", [_synced(c) for c in claimed], owner="w1", now=2e9, max_attempts=3,
                    backoff_base=1, backoff_cap=1, latency=0.3)
    text = client.get("/metrics", headers=rw()).get_data(as_text=True)
    assert 'ims_fhir_outbox_deliveries{target="hospital",state="queued"} 21' in text
    assert 'ims_fhir_outbox_deliveries{target="hospital",state="synced"} 5' in text
    assert 'ims_fhir_records_sent_total{target="hospital"} 5' in text
    assert 'ims_fhir_transaction_seconds_bucket{target="hospital",le="0.25"} 0' in text
    assert 'ims_fhir_transaction_seconds_bucket{target="hospital",le="0.5"} 1' in text
    assert 'ims_fhir_transaction_seconds_count{target="hospital"} 1' in text
    assert "# TYPE ims_fhir_http_request_seconds histogram" in text
    for line in text.splitlines():
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2


def test_logs_name_no_patient_and_show_no_token(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    client.post("/records", data=NDJSON, headers=rw())
    client.post("/records", json=[PATIENT, {**PATIENT, "id": "PZ2", "birth_date": "1961-02-30"}], headers=rw())
    client.get("/records/patient/PZ1", headers=rw())
    client.post("/login", data={"token": RO_TOKEN})
    client.get("/")
    records = [orjson.loads(line) for line in NDJSON.splitlines()] + [PATIENT]
    assert "records posted" in caplog.text
    assert leaks(caplog.text, personal_data(records)) == []
    assert RW_TOKEN not in caplog.text and RO_TOKEN not in caplog.text


def test_two_apps_share_nothing(make_config: Callable[..., ServiceConfig], tmp_path: Any) -> None:
    other = create_app(make_config(storage={"url": f"sqlite:///{tmp_path / 'other.sqlite'}"}))
    mine = create_app(make_config())
    mine.test_client().post("/records", json=PATIENT, headers=rw())
    assert other.test_client().get("/records/patient/PZ1", headers=rw()).status_code == 404
