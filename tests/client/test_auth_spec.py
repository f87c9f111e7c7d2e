"""The --auth spec string: every form, and errors that never echo a secret."""

from __future__ import annotations

import pytest

from ims_fhir.client import BasicAuth, BearerTokenAuth, NoAuth, OAuth2ClientCredentials, parse_auth_spec
from ims_fhir.errors import ConfigurationError, UsageError

ENV = {"FHIR_TOKEN": "t0k", "FHIR_PW": "p:w", "IMS_SECRET": "cs", "EMPTY": ""}


def test_none() -> None:
    assert isinstance(parse_auth_spec("none", environ=ENV), NoAuth)
    assert isinstance(parse_auth_spec(" NONE ", environ=ENV), NoAuth)


@pytest.mark.parametrize(
    ("spec", "token"), [("bearer:abc", "abc"), ("bearer:a:b:c", "a:b:c"), ("bearer:env:FHIR_TOKEN", "t0k")]
)
def test_bearer(spec: str, token: str) -> None:
    auth = parse_auth_spec(spec, environ=ENV)
    assert isinstance(auth, BearerTokenAuth)
    assert auth.headers(None) == {"Authorization": f"Bearer {token}"}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "user", "password"),
    [
        ("basic:alice:pw", "alice", "pw"),
        ("basic:alice:p:w", "alice", "p:w"),
        ("basic:alice:env:FHIR_PW", "alice", "p:w"),
    ],
)
def test_basic(spec: str, user: str, password: str) -> None:
    auth = parse_auth_spec(spec, environ=ENV)
    assert isinstance(auth, BasicAuth)
    assert auth.username == user and auth._password == password


@pytest.mark.parametrize(
    ("spec", "url", "client_id", "scope"),
    [
        ("oauth2:https://auth.example.org/token:ims:env:IMS_SECRET", "https://auth.example.org/token", "ims", None),
        (
            "oauth2:https://auth.example.org:8443/oauth/token:ims-fhir:env:IMS_SECRET:system/*.read system/*.write",
            "https://auth.example.org:8443/oauth/token",
            "ims-fhir",
            "system/*.read system/*.write",
        ),
        ("oauth2:http://[::1]:9000/t:c:env:IMS_SECRET:a:b", "http://[::1]:9000/t", "c", "a:b"),
    ],
)
def test_oauth2(spec: str, url: str, client_id: str, scope: str | None) -> None:
    auth = parse_auth_spec(spec, environ=ENV)
    assert isinstance(auth, OAuth2ClientCredentials)
    assert (auth.token_url, auth.client_id, auth.scope) == (url, client_id, scope)
    assert auth._client_secret == "cs"


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "bearer",
        "bearer:",
        "basic:alice",
        "basic::pw",
        "digest:x",
        "oauth2:https://auth/token:id:literal-secret",
        "oauth2:ftp://auth/token:id:env:IMS_SECRET",
        "oauth2:https://auth/token:env:IMS_SECRET",
        "bearer:env:not-a-name",
        "none:extra",
    ],
)
def test_malformed_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_auth_spec(spec, environ=ENV)


@pytest.mark.parametrize(
    "spec", ["bearer:env:MISSING", "bearer:env:EMPTY", "basic:u:env:MISSING", "oauth2:https://a/t:c:env:MISSING"]
)
def test_missing_environment_variables_are_configuration_errors(spec: str) -> None:
    with pytest.raises(ConfigurationError, match="MISSING|EMPTY"):
        parse_auth_spec(spec, environ=ENV)


@pytest.mark.parametrize(
    "spec", ["hunter2-secret", "token:hunter2-secret", "basic:hunter2-secret", "none:hunter2-secret"]
)
def test_errors_never_echo_secrets(spec: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_auth_spec(spec, environ=ENV)
    assert "hunter2" not in str(info.value)


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMS_FHIR_TEST_TOKEN", "from-env")
    auth = parse_auth_spec("bearer:env:IMS_FHIR_TEST_TOKEN")
    assert auth.headers(None) == {"Authorization": "Bearer from-env"}  # type: ignore[arg-type]
