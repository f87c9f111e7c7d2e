"""SMART Backend Services on the client side: keys, assertions, discovery, scopes, caching.

The token endpoint and discovery document here are scripted (what each must contain is
asserted); the real exchange with Keycloak is tested in tests/integration/test_smart.py.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

import jwt
import orjson
import pytest
import requests

from ims_fhir.cli import main as cli_main
from ims_fhir.client import ClientConfig, FhirClient, on_type, parse_auth_spec, push_requirements
from ims_fhir.client.smart import (
    ASSERTION_TYPE,
    SigningKey,
    SmartBackendAuth,
    SmartConfiguration,
    scopes_for,
    write_key_files,
)
from ims_fhir.errors import ConfigurationError, FhirAuthError, FhirCapabilityError, UsageError

from .scripted import BASE, FakeClock, Reply, ScriptedAdapter

TOKEN_URL = "https://auth.hospital.test/realms/h/protocol/openid-connect/token"
WELL_KNOWN = f"{BASE}/.well-known/smart-configuration"
PATIENT = {"resourceType": "Patient", "id": "p1"}


def smart_configuration(
    capabilities: tuple[str, ...] = ("permission-v2", "client-confidential-asymmetric"),
) -> dict[str, object]:
    return {"token_endpoint": TOKEN_URL, "capabilities": list(capabilities),
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"]}


class TokenEndpoint:
    """Records each token request's form; issues numbered tokens."""

    def __init__(self, *, status: int = 200, body: dict[str, object] | None = None) -> None:
        self.forms: list[dict[str, str]] = []
        self.status = status
        self.body = body

    def __call__(self, request: requests.PreparedRequest) -> Reply:
        text = request.body if isinstance(request.body, str) else (request.body or b"").decode()
        self.forms.append({k: v[0] for k, v in parse_qs(text).items()})
        body = self.body or {"access_token": f"tok-{len(self.forms)}", "token_type": "Bearer", "expires_in": 300}
        return Reply(self.status, body, {"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def es_key() -> SigningKey:
    return SigningKey.generate("ES384")


@pytest.fixture(scope="module")
def rs_key() -> SigningKey:
    return SigningKey.generate("RS384")


@pytest.fixture
def smart_server(adapter: ScriptedAdapter) -> TokenEndpoint:
    endpoint = TokenEndpoint()
    adapter.route("GET", WELL_KNOWN, lambda r: Reply(200, smart_configuration(), {"Content-Type": "application/json"}))
    adapter.route("POST", TOKEN_URL, endpoint)
    return endpoint


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_keys_generate_writes_a_private_pem_0600_and_a_public_jwks(tmp_path: Path, alg: str) -> None:
    out = tmp_path / "keys"
    assert cli_main(["keys", "generate", "--out", str(out), "--alg", alg]) == 0
    private = out / "private-key.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    jwks = orjson.loads((out / "jwks.json").read_bytes())
    (jwk,) = jwks["keys"]
    assert jwk["alg"] == alg and jwk["use"] == "sig" and jwk["kid"]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)  # public members only
    key = SigningKey.load(private)
    assert key.alg == alg and key.kid == jwk["kid"]  # the kid is the key's thumbprint: stable
    # The public JWK verifies what the private key signs.
    token = key.sign({"iss": "x"})
    public = jwt.PyJWK.from_dict(jwk).key
    assert jwt.decode(token, public, algorithms=[alg]) == {"iss": "x"}
    # Never overwritten by accident.
    assert cli_main(["keys", "generate", "--out", str(out)]) == 2


def test_a_key_that_cannot_sign_rs384_or_es384_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p256 = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "p256.pem"
    path.write_bytes(p256.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    with pytest.raises(UsageError, match="P-384"):
        SigningKey.load(path)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key but maybe a secret\n")
    with pytest.raises(ConfigurationError) as info:
        SigningKey.load(junk)
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigurationError, match="cannot read"):
        SigningKey.load(tmp_path / "missing.pem")


# --------------------------------------------------------------------------- scopes


def test_least_privilege_scopes_v2_and_v1() -> None:
    push = push_requirements(["Patient", "Observation"], conditional_update=True)
    assert scopes_for(push) == ["system/Observation.cus", "system/Patient.cus"]
    assert scopes_for(push, "v1") == ["system/Observation.read", "system/Observation.write",
                                      "system/Patient.read", "system/Patient.write"]
    pull = [on_type("Procedure", "search-type"), on_type("Patient", "read")]
    assert scopes_for(pull) == ["system/Patient.r", "system/Procedure.s"]
    assert scopes_for(pull, "v1") == ["system/Patient.read", "system/Procedure.read"]


def test_v1_only_when_the_server_advertises_only_v1() -> None:
    def version(*caps: str) -> str:
        return SmartConfiguration(TOKEN_URL, capabilities=caps).scope_version

    assert version("permission-v2") == "v2"
    assert version("permission-v1", "permission-v2") == "v2"
    assert version("permission-v1") == "v1"
    assert version() == "v2"


# --------------------------------------------------------------------------- the exchange


def test_assertion_and_token_request_follow_smart_backend_services(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, smart_server: TokenEndpoint,
    es_key: SigningKey, clock: FakeClock,
) -> None:
    adapter.queue(Reply(200, PATIENT), Reply(200, PATIENT))
    client = make_client(auth=SmartBackendAuth("clinic-42", es_key))
    client.require([*push_requirements(["Patient"], conditional_update=True), on_type("Patient", "read")])
    client.read("Patient", "p1")
    client.read("Patient", "p1")
    (form,) = smart_server.forms  # one token for both reads
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == ASSERTION_TYPE
    assert form["scope"] == "system/Patient.crus"
    assert "client_secret" not in form and "client_id" not in form
    assertion = form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == "ES384" and header["kid"] == es_key.kid and header["typ"] == "JWT"
    public = jwt.PyJWK.from_dict(es_key.public_jwk()).key
    claims = jwt.decode(assertion, public, algorithms=["ES384"], audience=TOKEN_URL,
                        options={"verify_exp": False})
    assert claims["iss"] == claims["sub"] == "clinic-42"
    assert claims["aud"] == TOKEN_URL
    assert claims["iat"] == int(clock.wall) and 0 < claims["exp"] - claims["iat"] <= 300
    assert len(claims["jti"]) >= 16
    assert [s.headers.get("Authorization") for s in adapter.calls("GET") if "/Patient/" in s.url] == \
        ["Bearer tok-1", "Bearer tok-1"]
    # Discovery and the token request carry no credentials of the FHIR server.
    assert all("Authorization" not in s.headers for s in adapter.calls() if not s.url.startswith(BASE + "/Patient"))


def test_a_need_beyond_the_declared_ones_widens_the_scopes(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, smart_server: TokenEndpoint, es_key: SigningKey,
) -> None:
    adapter.queue(Reply(200, PATIENT))
    client = make_client(auth=SmartBackendAuth("clinic-42", es_key))
    client.require([on_type("Patient", "search-type")])
    client.read("Patient", "p1")
    assert [f["scope"] for f in smart_server.forms] == ["system/Patient.s", "system/Patient.rs"]


def test_every_token_request_has_a_new_jti_and_401_fetches_a_new_token(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, smart_server: TokenEndpoint,
    rs_key: SigningKey, clock: FakeClock,
) -> None:
    adapter.queue(Reply(401), Reply(200, PATIENT), Reply(200, PATIENT))
    client = make_client(auth=SmartBackendAuth("clinic-42", rs_key, scopes="system/Patient.r"))
    client.read("Patient", "p1")  # 401 -> new token -> 200
    clock.advance(280)  # inside the refresh margin of a 300 s token
    client.read("Patient", "p1")
    assert len(smart_server.forms) == 3
    jtis = {jwt.decode(f["client_assertion"], options={"verify_signature": False})["jti"] for f in smart_server.forms}
    assert len(jtis) == 3
    assert {f["scope"] for f in smart_server.forms} == {"system/Patient.r"}
    assert jwt.get_unverified_header(smart_server.forms[0]["client_assertion"])["alg"] == "RS384"


def test_v1_scopes_when_discovery_says_v1(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, es_key: SigningKey,
) -> None:
    endpoint = TokenEndpoint()
    adapter.route("GET", WELL_KNOWN, lambda r: Reply(200, smart_configuration(("permission-v1",))))
    adapter.route("POST", TOKEN_URL, endpoint)
    client = make_client(auth=SmartBackendAuth("clinic-42", es_key))
    client.require([on_type("Procedure", "search-type")])
    assert endpoint.forms[0]["scope"] == "system/Procedure.read"


def test_token_url_skips_discovery(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, es_key: SigningKey,
) -> None:
    endpoint = TokenEndpoint()
    other = "https://other-auth.test/token"
    adapter.route("POST", other, endpoint)
    client = make_client(auth=SmartBackendAuth("clinic-42", es_key, token_url=other))
    client.require([on_type("Patient", "read")])
    assert jwt.decode(endpoint.forms[0]["client_assertion"], options={"verify_signature": False})["aud"] == other
    assert not [s for s in adapter.calls() if ".well-known" in s.url]


def test_no_smart_configuration_is_a_capability_error(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, es_key: SigningKey,
) -> None:
    adapter.route("GET", WELL_KNOWN, lambda r: Reply(404, "<html><title>Not Found</title></html>"))
    with pytest.raises(FhirCapabilityError, match="--token-url"):
        make_client(auth=SmartBackendAuth("clinic-42", es_key)).require([on_type("Patient", "read")])


def test_refusal_is_one_line_without_secrets(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, es_key: SigningKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    refusal = {"error": "invalid_client", "error_description": "Invalid client credentials"}
    endpoint = TokenEndpoint(status=401, body=refusal)
    adapter.route("GET", WELL_KNOWN, lambda r: Reply(200, smart_configuration()))
    adapter.route("POST", TOKEN_URL, endpoint)
    auth = SmartBackendAuth("clinic-42", es_key)
    with pytest.raises(FhirAuthError) as info:
        make_client(auth=auth).require([on_type("Patient", "read")])
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    assert "refused client 'clinic-42': invalid_client: Invalid client credentials" in message
    assertion = endpoint.forms[0]["client_assertion"]
    pem = es_key.private_pem().decode()
    for text in (message, caplog.text, repr(auth), str(auth)):
        assert assertion not in text and pem not in text
        assert "PRIVATE KEY" not in text
    assert "kid=" in repr(auth) and "key=***" in repr(auth)


def test_no_needs_and_no_scopes_is_a_usage_error(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, smart_server: TokenEndpoint, es_key: SigningKey,
) -> None:
    adapter.queue(Reply(200, PATIENT))
    client = make_client(auth=SmartBackendAuth("clinic-42", es_key), check_capabilities=False)
    with pytest.raises(UsageError, match="no scopes"):
        client.read("Patient", "p1")


# --------------------------------------------------------------------------- the auth spec and config


def test_auth_spec_smart(tmp_path: Path) -> None:
    key = write_key_files(tmp_path / "k")
    path = tmp_path / "k" / "private-key.pem"
    auth = parse_auth_spec(f"smart:clinic-42:{path}")
    assert isinstance(auth, SmartBackendAuth) and auth.client_id == "clinic-42" and auth.key.kid == key.kid
    assert auth.scopes is None and auth.token_url is None
    scoped = parse_auth_spec(f"smart:clinic-42:{path}:system/Patient.cus  system/Observation.cus", token_url=TOKEN_URL)
    assert isinstance(scoped, SmartBackendAuth)
    assert scoped.scopes == "system/Patient.cus system/Observation.cus" and scoped.token_url == TOKEN_URL
    with pytest.raises(UsageError, match="smart:CLIENT_ID:KEY_FILE"):
        parse_auth_spec("smart:clinic-42")
    with pytest.raises(UsageError, match="--token-url"):
        parse_auth_spec("none", token_url=TOKEN_URL)
    with pytest.raises(ConfigurationError):
        parse_auth_spec(f"smart:clinic-42:{tmp_path / 'nope.pem'}")


def test_cli_smart_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["pull", "--server", "https://fhir.test/r4", "--auth", f"smart:c:{tmp_path / 'missing.pem'}",
                     "--out", str(tmp_path / "x.ndjson")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot read the SMART private key file" in err


def test_client_certificate_is_passed_for_mutual_tls(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, tmp_path: Path,
) -> None:
    cert, key, ca = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem"))
    for f in (cert, key, ca):
        f.write_text("-")
    adapter.queue(Reply(200, PATIENT))
    make_client(client_cert=str(cert), client_key=str(key), ca_bundle=str(ca)).read("Patient", "p1")
    sent = adapter.calls("GET")[0]
    assert sent.cert == (str(cert), str(key)) and sent.verify == str(ca)
    assert "k.pem" not in repr(ClientConfig(BASE, client_cert=str(cert), client_key=str(key)))
    with pytest.raises(UsageError, match="without a client certificate"):
        ClientConfig(BASE, client_key=str(key))

