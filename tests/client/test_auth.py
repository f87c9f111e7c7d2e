"""Auth schemes: headers sent, OAuth2 token caching and refresh, secrets kept out of repr."""

from __future__ import annotations

import base64
from collections.abc import Callable
from urllib.parse import parse_qs

import pytest
import requests

from ims_fhir.client import (
    BasicAuth,
    BearerTokenAuth,
    ClientConfig,
    FhirClient,
    NoAuth,
    OAuth2ClientCredentials,
    parse_auth_spec,
)
from ims_fhir.errors import FhirAuthError, FhirServerSideError

from .scripted import BASE, TOKEN_URL, FakeClock, Reply, ScriptedAdapter

PATIENT = {"resourceType": "Patient", "id": "p1"}
SECRET = "s3cr3t-Value"


class TokenEndpoint:
    """Issues numbered tokens and remembers the forms it received."""

    def __init__(self, *, expires_in: int | None = 300) -> None:
        self.expires_in = expires_in
        self.forms: list[dict[str, list[str]]] = []
        self.headers: list[requests.structures.CaseInsensitiveDict[str]] = []

    def __call__(self, request: requests.PreparedRequest) -> Reply:
        body = request.body if isinstance(request.body, str) else (request.body or b"").decode()
        self.forms.append(parse_qs(body))
        self.headers.append(request.headers)
        token = {"access_token": f"tok-{len(self.forms)}", "token_type": "bearer"}
        if self.expires_in is not None:
            token["expires_in"] = self.expires_in  # type: ignore[assignment]
        return Reply(200, token, {"Content-Type": "application/json"})


def oauth2(**kwargs: object) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(TOKEN_URL, "ims-fhir", SECRET, scope="system/*.write", **kwargs)  # type: ignore[arg-type]


def bearer_of(adapter: ScriptedAdapter) -> list[str | None]:
    return [s.headers.get("Authorization") for s in adapter.calls("GET")]


def test_no_auth_sends_no_authorization(client: FhirClient, adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(200, PATIENT))
    client.read("Patient", "p1")
    assert "Authorization" not in adapter.calls("GET")[0].headers


def test_bearer_token_is_sent(make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(200, PATIENT))
    make_client(auth=BearerTokenAuth("abc")).read("Patient", "p1")
    assert bearer_of(adapter) == ["Bearer abc"]


def test_basic_auth_is_sent_as_utf8(make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(200, PATIENT))
    make_client(auth=BasicAuth("zoë", "pa:ss")).read("Patient", "p1")
    header = bearer_of(adapter)[0]
    assert header is not None and header.startswith("Basic ")
    assert base64.b64decode(header[6:]).decode() == "zoë:pa:ss"


def test_static_token_401_is_not_retried(make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> None:
    adapter.queue(Reply(401), Reply(200, PATIENT))
    with pytest.raises(FhirAuthError) as info:
        make_client(auth=BearerTokenAuth("abc")).read("Patient", "p1")
    assert info.value.status == 401
    assert len(adapter.calls("GET")) == 1


class TestOAuth2ClientCredentials:
    def test_token_is_fetched_once_and_reused(
        self, make_client: Callable[..., FhirClient], adapter: ScriptedAdapter
    ) -> None:
        endpoint = TokenEndpoint()
        adapter.route("POST", TOKEN_URL, endpoint)
        adapter.queue(Reply(200, PATIENT), Reply(200, PATIENT), Reply(200, PATIENT))
        client = make_client(auth=oauth2())
        for _ in range(3):
            client.read("Patient", "p1")
        assert len(endpoint.forms) == 1
        assert endpoint.forms[0] == {"grant_type": ["client_credentials"], "scope": ["system/*.write"]}
        assert set(bearer_of(adapter)) == {"Bearer tok-1"}
        # client_secret_basic by default: the secret is in the token request's header only
        basic = endpoint.headers[0]["Authorization"]
        assert base64.b64decode(basic[6:]).decode() == f"ims-fhir:{SECRET}"

    def test_token_is_refreshed_before_expiry(
        self, make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, clock: FakeClock
    ) -> None:
        endpoint = TokenEndpoint(expires_in=300)
        adapter.route("POST", TOKEN_URL, endpoint)
        adapter.queue(Reply(200, PATIENT), Reply(200, PATIENT), Reply(200, PATIENT))
        client = make_client(auth=oauth2())
        client.read("Patient", "p1")
        clock.advance(200)  # well inside the lifetime: reuse
        client.read("Patient", "p1")
        clock.advance(75)  # 275 s: inside the 30 s margin (a tenth of 300 s) before expiry
        client.read("Patient", "p1")
        assert len(endpoint.forms) == 2
        assert bearer_of(adapter) == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]

    def test_401_refreshes_the_token_once_and_retries_once(
        self, make_client: Callable[..., FhirClient], adapter: ScriptedAdapter
    ) -> None:
        endpoint = TokenEndpoint(expires_in=None)
        adapter.route("POST", TOKEN_URL, endpoint)
        adapter.queue(Reply(401), Reply(200, PATIENT))
        assert make_client(auth=oauth2()).read("Patient", "p1").status == 200
        assert len(endpoint.forms) == 2
        assert bearer_of(adapter) == ["Bearer tok-1", "Bearer tok-2"]

    def test_a_second_401_is_final(self, make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> None:
        adapter.route("POST", TOKEN_URL, TokenEndpoint())
        adapter.queue(Reply(401), Reply(401), Reply(200, PATIENT))
        with pytest.raises(FhirAuthError):
            make_client(auth=oauth2()).read("Patient", "p1")
        assert len(adapter.calls("GET")) == 2

    def test_client_secret_post(self, make_client: Callable[..., FhirClient], adapter: ScriptedAdapter) -> None:
        endpoint = TokenEndpoint()
        adapter.route("POST", TOKEN_URL, endpoint)
        adapter.queue(Reply(200, PATIENT))
        make_client(auth=oauth2(client_auth="post")).read("Patient", "p1")
        assert endpoint.forms[0]["client_id"] == ["ims-fhir"]
        assert endpoint.forms[0]["client_secret"] == [SECRET]
        assert "Authorization" not in endpoint.headers[0]

    def test_refused_credentials_give_auth_error_without_the_secret(
        self, make_client: Callable[..., FhirClient], adapter: ScriptedAdapter
    ) -> None:
        refusal = {"error": "invalid_client", "error_description": "unknown client"}
        adapter.route("POST", TOKEN_URL, lambda request: Reply(401, refusal, {"Content-Type": "application/json"}))
        with pytest.raises(FhirAuthError) as info:
            make_client(auth=oauth2()).read("Patient", "p1")
        assert "invalid_client: unknown client" in str(info.value)
        assert SECRET not in str(info.value)
        assert adapter.calls("GET") == []  # nothing was sent to the FHIR server

    def test_token_endpoint_5xx_is_retried(
        self, make_client: Callable[..., FhirClient], adapter: ScriptedAdapter
    ) -> None:
        answers = [Reply(503), Reply(200, {"access_token": "t", "token_type": "Bearer"})]
        adapter.route("POST", TOKEN_URL, lambda request: answers.pop(0))
        adapter.queue(Reply(200, PATIENT))
        make_client(auth=oauth2()).read("Patient", "p1")
        assert bearer_of(adapter) == ["Bearer t"]

    def test_token_endpoint_down_is_a_server_side_error(
        self, make_client: Callable[..., FhirClient], adapter: ScriptedAdapter
    ) -> None:
        adapter.route("POST", TOKEN_URL, lambda request: Reply(503, "<html><title>Down</title></html>"))
        with pytest.raises(FhirServerSideError, match=r"POST https://auth.test/token failed.*Down \(HTTP 503\)"):
            make_client(auth=oauth2()).read("Patient", "p1")
        assert len(adapter.calls("POST")) == 4  # retried like any idempotent call

    @pytest.mark.parametrize(
        "body",
        [{"token_type": "bearer"}, {"access_token": "t", "token_type": "mac"}, "not json"],
    )
    def test_unusable_token_answers_are_refused(
        self, make_client: Callable[..., FhirClient], adapter: ScriptedAdapter, body: object
    ) -> None:
        adapter.route("POST", TOKEN_URL, lambda request: Reply(200, body))
        with pytest.raises(FhirAuthError):
            make_client(auth=oauth2()).read("Patient", "p1")


def test_secrets_are_not_in_repr_or_str() -> None:
    env = {"TOK": "tok-" + SECRET, "PW": "pw-" + SECRET, "CS": "cs-" + SECRET}
    auths = [
        BearerTokenAuth(SECRET),
        BasicAuth("user", SECRET),
        oauth2(),
        parse_auth_spec("bearer:env:TOK", environ=env),
        parse_auth_spec("basic:user:env:PW", environ=env),
        parse_auth_spec(f"oauth2:{TOKEN_URL}:id:env:CS:scope", environ=env),
        NoAuth(),
    ]
    for auth in auths:
        config = ClientConfig(BASE, auth=auth)
        client = FhirClient(config)
        for text in (
            repr(auth),
            str(auth),
            repr(config),
            str(config),
            repr(client),
            str(client),
            repr(client.transport),
        ):
            assert SECRET not in text, text
        client.close()
    assert "user" in repr(BasicAuth("user", SECRET))  # the user name is not secret and helps


def test_oauth2_token_is_not_in_repr_after_fetch(
    make_client: Callable[..., FhirClient], adapter: ScriptedAdapter
) -> None:
    adapter.route("POST", TOKEN_URL, lambda request: Reply(200, {"access_token": SECRET, "token_type": "Bearer"}))
    adapter.queue(Reply(200, PATIENT))
    auth = oauth2()
    client = make_client(auth=auth)
    client.read("Patient", "p1")
    assert SECRET not in repr(auth) and SECRET not in repr(client) and SECRET not in repr(auth._token)
