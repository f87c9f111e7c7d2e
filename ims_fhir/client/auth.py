"""How the FHIR client proves who it is: no auth, a static bearer token, HTTP basic, OAuth2.

Terms
-----
auth
    An :class:`Auth` object. Before each request the transport asks it for headers
    (:meth:`Auth.headers`); after a 401 it calls :meth:`Auth.on_unauthorized`, and if
    that returns True (fresh credentials may help) the request is sent once more.
access token
    A bearer token obtained from an OAuth2 token endpoint (:class:`AccessToken`), cached
    on the auth object and fetched again shortly before it expires (``refresh_margin``
    seconds, or a tenth of its lifetime if shorter) or after the server answered 401.
client credentials
    The OAuth2 grant (RFC 6749 section 4.4) where a system, not a person, asks for a
    token with its client id and secret: :class:`OAuth2ClientCredentials`.
client authentication
    How the client proves itself to the token endpoint. Here: ``client_secret_basic``
    (default) or ``client_secret_post``. The seam for SMART Backend Services
    (``private_key_jwt``: a signed JWT assertion instead of a secret) is
    :meth:`OAuth2ClientCredentials.client_authentication`; a subclass overrides it to
    return ``client_assertion_type``/``client_assertion`` form fields and no secret.
    Any other token scheme can subclass :class:`CachedTokenAuth` and implement
    :meth:`CachedTokenAuth.fetch_token`.
auth context
    :class:`AuthContext`, what the transport lends an auth object: a way to POST a form
    and to GET a document (same session, TLS settings, timeouts and retry policy as FHIR
    calls), the FHIR base URL and the clock.
needs
    The interactions the running command will perform (a list of
    :class:`~ims_fhir.client.capability.Requirement`), announced by
    :meth:`FhirClient.require` through :meth:`Auth.declare_needs` before the first
    request. Schemes that ask for scopes (SMART Backend Services) derive least-privilege
    scopes from them; the others ignore them.

Secrets are never part of ``repr()``/``str()`` of these objects, nor of error messages.
"""

from __future__ import annotations

import abc
import base64
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote_plus

import orjson
import requests

from ims_fhir.client.errors import error_for_response
from ims_fhir.client.retry import Clock
from ims_fhir.errors import FhirAuthError, UsageError

if TYPE_CHECKING:
    from ims_fhir.client.capability import Requirement

#: POST a form: (url, form fields, extra headers) -> the final response (any status).
FormPoster = Callable[[str, Mapping[str, str], Mapping[str, str]], requests.Response]
#: GET a document without credentials: (url, extra headers) -> the final response (any status).
Getter = Callable[[str, Mapping[str, str]], requests.Response]

_HIDDEN = "***"


@dataclass(frozen=True, slots=True)
class AuthContext:
    """What the transport lends an :class:`Auth` to obtain credentials."""

    post_form: FormPoster
    clock: Clock
    get: Getter | None = None
    base_url: str = ""


class Auth(abc.ABC):
    """Base of every authentication scheme (the seam for new ones)."""

    @abc.abstractmethod
    def headers(self, context: AuthContext) -> dict[str, str]:
        """Headers to add to the next FHIR request (may fetch a token first)."""

    def on_unauthorized(self) -> bool:
        """The server answered 401: drop cached credentials; True if trying again may help."""
        return False

    def declare_needs(self, needs: Iterable[Requirement]) -> None:  # noqa: B027 - optional hook
        """The command will perform ``needs``; schemes that request scopes adapt (default: ignore)."""

    def __str__(self) -> str:
        return repr(self)


class NoAuth(Auth):
    """Send no credentials (open test servers)."""

    def headers(self, context: AuthContext) -> dict[str, str]:
        return {}

    def __repr__(self) -> str:
        return "NoAuth()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoAuth)

    def __hash__(self) -> int:
        return hash(NoAuth)


class BearerTokenAuth(Auth):
    """A static bearer token (``Authorization: Bearer <token>``); cannot be refreshed."""

    def __init__(self, token: str) -> None:
        if not token:
            raise UsageError("bearer auth needs a non-empty token")
        self._token = token

    def headers(self, context: AuthContext) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def __repr__(self) -> str:
        return f"BearerTokenAuth(token={_HIDDEN})"


class BasicAuth(Auth):
    """HTTP basic authentication (RFC 7617), user and password encoded as UTF-8."""

    def __init__(self, username: str, password: str) -> None:
        if not username or ":" in username:
            raise UsageError("basic auth needs a user name without ':'")
        self.username = username
        self._password = password

    def headers(self, context: AuthContext) -> dict[str, str]:
        raw = f"{self.username}:{self._password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password={_HIDDEN})"


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A token from a token endpoint. ``refresh_at`` is on the monotonic clock (None: never)."""

    value: str = field(repr=False)
    refresh_at: float | None
    token_type: str = "Bearer"  # noqa: S105  (the HTTP auth scheme name, not a secret)


class CachedTokenAuth(Auth):
    """A bearer-token scheme whose tokens are fetched, cached and refreshed.

    Subclasses implement :meth:`fetch_token`. The cache is per instance and guarded by
    a lock so one client may be shared by threads.
    """

    def __init__(self, *, refresh_margin: float = 60.0) -> None:
        self.refresh_margin = refresh_margin
        self._token: AccessToken | None = None
        self._lock = threading.Lock()

    @abc.abstractmethod
    def fetch_token(self, context: AuthContext) -> AccessToken:
        """Obtain a new token (raise FhirAuthError / FhirTransportError when that fails)."""

    def headers(self, context: AuthContext) -> dict[str, str]:
        with self._lock:
            token = self._token
            if token is None or (token.refresh_at is not None and context.clock.monotonic() >= token.refresh_at):
                token = self._token = self.fetch_token(context)
        return {"Authorization": f"Bearer {token.value}"}

    def on_unauthorized(self) -> bool:
        with self._lock:
            self._token = None
        return True

    def refresh_time(self, fetched_at: float, expires_in: float | None) -> float | None:
        """When to fetch again: ``refresh_margin`` (or a tenth of the lifetime) before expiry."""
        if expires_in is None:
            return None
        margin = min(self.refresh_margin, expires_in / 10)
        return fetched_at + expires_in - margin


class OAuth2ClientCredentials(CachedTokenAuth):
    """OAuth2 client credentials grant against ``token_url``.

    ``client_auth`` chooses ``"basic"`` (client_secret_basic, the RFC 6749 default) or
    ``"post"`` (client_secret_post: id and secret in the form body).
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        client_auth: Literal["basic", "post"] = "basic",
        refresh_margin: float = 60.0,
    ) -> None:
        super().__init__(refresh_margin=refresh_margin)
        if not token_url.startswith(("https://", "http://")):
            raise UsageError("oauth2 token URL must start with https:// or http://")
        if not client_id:
            raise UsageError("oauth2 needs a client id")
        if client_auth not in ("basic", "post"):
            raise UsageError(f"oauth2 client_auth must be 'basic' or 'post', not {client_auth!r}")
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope or None
        self.client_auth = client_auth

    def __repr__(self) -> str:
        return (
            f"OAuth2ClientCredentials(token_url={self.token_url!r}, client_id={self.client_id!r}, "
            f"client_secret={_HIDDEN}, scope={self.scope!r}, client_auth={self.client_auth!r})"
        )

    def client_authentication(self, context: AuthContext) -> tuple[dict[str, str], dict[str, str]]:
        """(headers, form fields) proving the client's identity to the token endpoint.

        Override for ``private_key_jwt`` (SMART Backend Services): return no headers and
        ``{"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": <signed JWT>}``.
        """
        if self.client_auth == "post":
            return {}, {"client_id": self.client_id, "client_secret": self._client_secret}
        raw = f"{_form_escape(self.client_id)}:{_form_escape(self._client_secret)}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}, {}

    def fetch_token(self, context: AuthContext) -> AccessToken:
        headers, form = self.client_authentication(context)
        return request_token(self, context, self.token_url, self.client_id, form, headers=headers, scope=self.scope)


def request_token(
    auth: CachedTokenAuth,
    context: AuthContext,
    token_url: str,
    client_id: str,
    client_form: Mapping[str, str],
    *,
    headers: Mapping[str, str] | None = None,
    scope: str | None = None,
) -> AccessToken:
    """Run the client credentials grant against ``token_url`` and read the token response.

    ``client_form`` (and ``headers``) carry the client authentication. A refusal raises
    :class:`FhirAuthError` naming the endpoint, the client id and the server's
    ``error: error_description`` (never the request's secrets); 408/429/5xx after the
    retry policy raise the usual server-side error.
    """
    form = {"grant_type": "client_credentials", **client_form}
    if scope:
        form["scope"] = scope
    fetched_at = context.clock.monotonic()
    response = context.post_form(token_url, form, {"Accept": "application/json", **(headers or {})})
    body = _json_or_none(response.content)
    if response.status_code in (408, 429) or response.status_code >= 500:
        # The token endpoint is down or busy (after retries): a server problem, not a refusal.
        raise error_for_response(response, method="POST")
    if response.status_code != 200:
        reason = _oauth_error(body) or f"HTTP {response.status_code} {response.reason or ''}".strip()
        raise FhirAuthError(
            f"token endpoint {token_url} refused client {client_id!r}: {reason}",
            status=response.status_code,
            url=token_url,
        )
    value = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(value, str) or not value:
        raise FhirAuthError(
            f"token endpoint {token_url} answered without an access_token",
            status=response.status_code,
            url=token_url,
        )
    token_type = str(body.get("token_type") or "Bearer")
    if token_type.lower() != "bearer":
        raise FhirAuthError(
            f"token endpoint {token_url} issued a {token_type!r} token; only bearer tokens are supported",
            status=response.status_code,
            url=token_url,
        )
    expires_in = body.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, (int, float)) and expires_in > 0 else None
    return AccessToken(value=value, refresh_at=auth.refresh_time(fetched_at, lifetime))


def _form_escape(text: str) -> str:
    # RFC 6749 2.3.1: id and secret are form-urlencoded before being joined for basic auth.
    return quote_plus(text)


def _json_or_none(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def _oauth_error(body: Any) -> str | None:
    """``error: error_description`` of an RFC 6749 error response, if that is what it is."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return None
    description = body.get("error_description")
    return f"{body['error']}: {description}" if isinstance(description, str) else body["error"]


__all__ = [
    "AccessToken",
    "Auth",
    "AuthContext",
    "BasicAuth",
    "BearerTokenAuth",
    "CachedTokenAuth",
    "FormPoster",
    "Getter",
    "NoAuth",
    "OAuth2ClientCredentials",
    "request_token",
]
