"""SMART Backend Services against a real Keycloak and the SMART-protected HAPI server.

Shows: ``ims-fhir push`` and ``pull`` and the sync service get tokens from Keycloak with a
signed JWT assertion (``private_key_jwt``, the key from ``ims-fhir keys generate``) and
their work lands on the protected server; the protected server answers 401 without a
token and publishes its SMART configuration; an expired assertion, a key Keycloak does not
know, a token without a needed scope and a client the hospital disabled each end with one
clear line and exit 2 (the service: the target fails with the reason, records stay
queued); nothing secret (private key, assertion, access token) is printed or logged.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from ims_fhir.cli import main as cli_main
from ims_fhir.client import Clock
from ims_fhir_service import create_app
from ims_fhir_service.config import config_from_mapping
from tests.conftest import EXAMPLES
from tests.service.conftest import rw, service_settings

from .conftest import SmartSetup
from .test_service import one_round

CLINIC = EXAMPLES / "clinic.json"
#: A JWT (header.payload.signature, base64url, header starting '{"'): assertions and Keycloak's tokens.
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Everything logged by any logger at DEBUG (urllib3's request lines included)."""
    caplog.set_level(logging.DEBUG)
    yield caplog


def secret_leaks(text: str, setup: SmartSetup) -> list[str]:
    """Secrets found in ``text``: a JWT, or any line of the private key's PEM body."""
    found = JWT.findall(text)
    pem_lines = [line for line in setup.key_file.read_text().splitlines() if line and not line.startswith("-----")]
    found += [line for line in pem_lines if len(line) > 16 and line in text]
    return found


def run(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean(setup: SmartSetup, logs: pytest.LogCaptureFixture, *texts: str) -> None:
    everything = "\n".join([*texts, logs.text, *(str(r.args) for r in logs.records)])
    assert secret_leaks(everything, setup) == []


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ims-fhir: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_protected_server_wants_a_token_and_publishes_its_smart_configuration(smart_setup: SmartSetup) -> None:
    with requests.Session() as s:
        s.trust_env = False
        anonymous = s.get(f"{smart_setup.base_url}/Patient", headers={"Accept": "application/fhir+json"}, timeout=60)
        assert anonymous.status_code == 401
        assert anonymous.json()["resourceType"] == "OperationOutcome"
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        forged = s.get(f"{smart_setup.base_url}/Patient", timeout=60,
                       headers={"Accept": "application/fhir+json", "Authorization": "Bearer eyJhbGciOiJub25lIn0.e30."})
        assert forged.status_code == 401 and 'error="invalid_token"' in forged.headers["WWW-Authenticate"]
        assert s.get(f"{smart_setup.base_url}/metadata", timeout=60).status_code == 200
        config = s.get(f"{smart_setup.base_url}/.well-known/smart-configuration", timeout=60).json()
    assert config["token_endpoint"] == smart_setup.keycloak.token_url(smart_setup.realm)
    assert "permission-v2" in config["capabilities"]
    assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]


def test_push_and_pull_with_private_key_jwt(
        smart_setup: SmartSetup, capsys: pytest.CaptureFixture[str], debug_logs: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    base = smart_setup.base_url
    code, out, err = run(capsys, "push", CLINIC, "--server", base, "--auth", smart_setup.auth(), "--json")
    assert code == 0, err
    first = orjson.loads(out)
    assert first["failed_records"] == 0 and first["sent"] > 100
    code, out, err = run(capsys, "push", CLINIC, "--server", base, "--auth", smart_setup.auth(), "--json")
    assert code == 0, err
    again = orjson.loads(out)
    # the identity map (issue 9) knows every resource unchanged: nothing is even sent
    assert again["created"] == again["updated"] == again["sent"] == again["failed_records"] == 0
    assert again["unchanged"] >= first["sent"] - first["kept (server-owned)"] > 100

    pulled = tmp_path / "pulled.ndjson"
    code, out, err = run(capsys, "pull", "--server", base, "--auth", smart_setup.auth(), "--out", pulled, "--json")
    assert code == 0, err
    kinds = {orjson.loads(line)["record_type"] for line in pulled.read_bytes().splitlines() if line.strip()}
    assert {"treatment", "patient"} <= kinds
    assert_clean(smart_setup, debug_logs, out, err)


def test_token_endpoint_given_explicitly_and_an_rs384_key(
        smart_setup: SmartSetup, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # An RS384 key the hospital has registered too (a second key in the client's JWKS would be
    # rotation; here the realm's client is re-registered with this key and then the first again).
    keys = tmp_path / "rsa"
    assert run(capsys, "keys", "generate", "--out", keys, "--alg", "RS384")[0] == 0
    jwks = orjson.loads((keys / "jwks.json").read_bytes())
    first = orjson.loads((smart_setup.key_dir / "jwks.json").read_bytes())
    both = {"keys": first["keys"] + jwks["keys"]}
    smart_setup.keycloak.update_client(smart_setup.realm, smart_setup.client_id,
                                       {"attributes": {"use.jwks.string": "true",
                                                       "jwks.string": orjson.dumps(both).decode()}})
    pulled = tmp_path / "pulled.ndjson"
    code, _, err = run(capsys, "pull", "--server", smart_setup.base_url, "--out", pulled,
                       "--auth", smart_setup.auth(key_file=keys / "private-key.pem"),
                       "--token-url", smart_setup.keycloak.token_url(smart_setup.realm))
    assert code == 0, err


def test_expired_assertion_is_one_line_exit_2(
        smart_setup: SmartSetup, capsys: pytest.CaptureFixture[str], debug_logs: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The clinic's clock is 15 minutes slow: its assertions expired before they were signed.
    monkeypatch.setattr("ims_fhir.client.transport.Clock", lambda: Clock(now=lambda: time.time() - 900))
    code, out, err = run(capsys, "pull", "--server", smart_setup.base_url, "--auth", smart_setup.auth(),
                         "--out", tmp_path / "p.ndjson")
    assert code == 2
    line = error_line(err)
    assert "SMART backend authorization failed" in line and smart_setup.client_id in line
    assert "invalid_client" in line
    assert_clean(smart_setup, debug_logs, out, err)


def test_wrong_key_is_one_line_exit_2(
        smart_setup: SmartSetup, capsys: pytest.CaptureFixture[str], debug_logs: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert run(capsys, "keys", "generate", "--out", other, "--alg", "ES384")[0] == 0
    code, out, err = run(capsys, "push", CLINIC, "--server", smart_setup.base_url,
                         "--auth", smart_setup.auth(key_file=other / "private-key.pem"))
    assert code == 2
    line = error_line(err)
    assert "refused client" in line and "invalid_client" in line
    assert_clean(smart_setup, debug_logs, out, err)
    assert not JWT.search((other / "jwks.json").read_text())  # the JWKS is public, never a token


def test_missing_scope_is_403_one_line_exit_2(
        smart_setup: SmartSetup, capsys: pytest.CaptureFixture[str], debug_logs: pytest.LogCaptureFixture) -> None:
    # Asking for everything push needs but Observation: Keycloak grants it, the server refuses the transaction.
    from ims_fhir.client.smart import scopes_for
    from ims_fhir.delivery import DELIVERED_TYPES
    from ims_fhir.sync.reconcile import sync_requirements

    scopes = " ".join(s for s in scopes_for(sync_requirements(DELIVERED_TYPES)) if "/Observation." not in s)
    code, out, err = run(capsys, "push", CLINIC, "--server", smart_setup.base_url, "--auth", smart_setup.auth(scopes))
    assert code == 2
    line = error_line(err)
    assert "HTTP 403" in line and "system/Observation." in line  # the first Observation interaction refused
    assert_clean(smart_setup, debug_logs, out, err)


def test_revoked_client_fails_the_cli_and_the_service_target(
        smart_setup: SmartSetup, capsys: pytest.CaptureFixture[str], debug_logs: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    from .test_service import drain, states

    app = create_app(config_from_mapping(service_settings(
        tmp_path, base_url=smart_setup.base_url, worker={"lease_seconds": 300},
        targets=[{"name": "hospital", "base_url": smart_setup.base_url, "auth": smart_setup.auth(),
                  "timeout": 120, "retry_budget": 60, "max_attempts": 2}]), environ={}))
    app.config["TESTING"] = True
    client = app.test_client()
    lines = [orjson.loads(x) for x in (EXAMPLES / "records.ndjson").read_bytes().splitlines() if x.strip()]
    posted = client.post("/records", data=b"".join(orjson.dumps(r) + b"\n" for r in lines[:13]), headers=rw(),
                         content_type="application/x-ndjson")
    assert posted.status_code == 202, posted.json
    drain(app)
    assert states(app) == {"synced": 13}

    smart_setup.keycloak.update_client(smart_setup.realm, smart_setup.client_id, {"enabled": False})
    try:
        code, out, err = run(capsys, "push", CLINIC, "--server", smart_setup.base_url, "--auth", smart_setup.auth())
        assert code == 2
        line = error_line(err)
        assert "refused client" in line and smart_setup.client_id in line

        # The service: access tokens are self-contained, so the one it holds stays good until it
        # expires (5 min); expire it now. The next token request is refused: the target fails
        # with the reason, nothing is lost.
        for target in app.extensions["ims_fhir"].config.targets:
            target.client.auth.on_unauthorized()
        treatment = next(r for r in lines[:13] if r["record_type"] == "treatment")
        edited = treatment | {"notes": "edited while the hospital had revoked the clinic"}
        assert client.post("/records", data=orjson.dumps(edited), headers=rw()).status_code == 202
        one_round(app)
        status = client.get(f"/records/{edited['record_type']}/{edited['id']}", headers=rw()).json
        (target,) = status["targets"]
        assert target["state"] in ("queued", "failed", "dead"), target
        reason = orjson.dumps(target).decode()
        assert "refused client" in reason, target
        assert_clean(smart_setup, debug_logs, out, err, reason)
    finally:
        smart_setup.keycloak.update_client(smart_setup.realm, smart_setup.client_id, {"enabled": True})
    drain(app)
    assert app.extensions["ims_fhir"].outbox.pending() == 0
