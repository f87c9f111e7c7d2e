"""The auth spec: one string that says how to authenticate, as given to ``--auth``.

Syntax (``SECRET`` may always be written ``env:VAR``, which reads environment variable
``VAR`` when the spec is parsed; prefer that form, since command lines are visible to
other users of the machine through ``ps`` and shell history)::

    none                                          no credentials
    bearer:TOKEN          bearer:env:VAR          static bearer token
    basic:USER:PASSWORD   basic:USER:env:VAR      HTTP basic (USER has no ':'; PASSWORD may)
    oauth2:TOKEN_URL:CLIENT_ID:env:VAR[:SCOPE]    OAuth2 client credentials; the client
                                                  secret is read from VAR (env only);
                                                  SCOPE is the rest of the string and may
                                                  hold spaces, e.g. "system/*.read system/*.write"
    smart:CLIENT_ID:KEY_FILE[:SCOPES]             SMART Backend Services (private_key_jwt): the
                                                  assertion is signed with the PEM private key in
                                                  KEY_FILE (RS384 or ES384); the token endpoint is
                                                  discovered from [base]/.well-known/smart-configuration
                                                  unless ``token_url`` (--token-url) is given;
                                                  without SCOPES the least-privilege scopes of the
                                                  command are asked for

Examples::

    --auth none
    --auth bearer:env:FHIR_TOKEN
    --auth basic:importer:env:FHIR_PASSWORD
    --auth "oauth2:https://auth.example.org:8443/token:ims-fhir:env:IMS_FHIR_SECRET:system/*.write"
    --auth smart:clinic-42:/etc/ims-fhir/private-key.pem
    --auth "smart:clinic-42:/etc/ims-fhir/private-key.pem:system/Patient.cus system/Observation.cus"

Terms: *spec* is the whole string, *scheme* the part before the first ``:``. An unknown
scheme or malformed spec is a :class:`~ims_fhir.errors.UsageError`; an ``env:`` variable
that is unset or empty is a :class:`~ims_fhir.errors.ConfigurationError`. Error messages
never repeat a literal secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from ims_fhir.client.auth import Auth, BasicAuth, BearerTokenAuth, NoAuth, OAuth2ClientCredentials
from ims_fhir.errors import ConfigurationError, UsageError

AUTH_SPEC_HELP = (
    "none | bearer:TOKEN | bearer:env:VAR | basic:USER:PASSWORD | basic:USER:env:VAR | "
    "oauth2:TOKEN_URL:CLIENT_ID:env:VAR[:SCOPE] | smart:CLIENT_ID:KEY_FILE[:SCOPES]"
)

_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_OAUTH2 = re.compile(
    r"(?P<url>https?://(?:\[[0-9A-Fa-f:.]+\]|[^/:\s\[\]]+)(?::\d+)?(?:/[^:\s]*)?)"
    r":(?P<client>[^:\s]+)"
    rf":env:(?P<var>{_ENV_NAME})"
    r"(?::(?P<scope>.*))?"
)


def parse_auth_spec(
    spec: str, *, environ: Mapping[str, str] | None = None, token_url: str | None = None
) -> Auth:
    """Build the :class:`Auth` an auth spec describes (syntax in the module docstring).

    ``environ`` defaults to ``os.environ``; pass a mapping to keep tests hermetic.
    ``token_url`` (``--token-url``) applies to ``smart:`` only.
    """
    env = os.environ if environ is None else environ
    scheme, sep, rest = spec.strip().partition(":")
    scheme = scheme.lower()
    if token_url is not None and scheme != "smart":
        raise UsageError("--token-url applies to --auth smart:... only")
    if scheme == "smart":
        client, sep1, tail = rest.partition(":")
        key_file, _, scopes = tail.partition(":")
        if not client or not sep1 or not key_file:
            raise UsageError("auth spec 'smart:...' must be smart:CLIENT_ID:KEY_FILE[:SCOPES]")
        from ims_fhir.client.smart import SmartBackendAuth

        return SmartBackendAuth(client, key_file, scopes=scopes or None, token_url=token_url)
    if scheme == "none" and not sep:
        return NoAuth()
    if scheme == "bearer" and rest:
        return BearerTokenAuth(_secret(rest, env, scheme))
    if scheme == "basic":
        user, sep, password = rest.partition(":")
        if user and sep:
            return BasicAuth(user, _secret(password, env, scheme))
        raise UsageError(f"auth spec 'basic:...' must be basic:USER:PASSWORD or basic:USER:env:VAR ({AUTH_SPEC_HELP})")
    if scheme == "oauth2":
        match = _OAUTH2.fullmatch(rest)
        if match is None:
            raise UsageError(
                "auth spec 'oauth2:...' must be oauth2:TOKEN_URL:CLIENT_ID:env:VAR[:SCOPE] "
                "with an http(s) token URL and the client secret in an environment variable"
            )
        secret = _secret(f"env:{match['var']}", env, scheme)
        return OAuth2ClientCredentials(match["url"], match["client"], secret, scope=match["scope"] or None)
    # An unknown scheme is not echoed: a token pasted without "bearer:" would be the scheme.
    what = f"malformed {scheme!r} auth spec" if scheme in ("none", "bearer") else "unknown auth scheme"
    raise UsageError(f"{what}; expected one of: {AUTH_SPEC_HELP}")


def _secret(text: str, env: Mapping[str, str], scheme: str) -> str:
    """A literal secret, or the value of ``VAR`` for ``env:VAR``."""
    if not text.startswith("env:"):
        if not text:
            raise UsageError(f"auth spec '{scheme}:...' has an empty secret")
        return text
    name = text[len("env:") :]
    if not re.fullmatch(_ENV_NAME, name):
        raise UsageError(f"auth spec '{scheme}:...': {name!r} is not an environment variable name")
    value = env.get(name)
    if not value:
        raise ConfigurationError(f"environment variable {name} (named in the {scheme} auth spec) is not set or empty")
    return value


__all__ = ["AUTH_SPEC_HELP", "parse_auth_spec"]
