"""SMART Backend Services: OAuth2 client credentials with a signed JWT client assertion.

How a system (the clinic's ims-fhir, no person involved) gets an access token from a
hospital's authorization server (SMART App Launch 2.x, "Backend Services"; RFC 7523):

1. discovery: ``GET [base]/.well-known/smart-configuration`` names the
   ``token_endpoint``, the scopes and the ``capabilities`` (``permission-v2`` /
   ``permission-v1``). ``token_url=`` skips it.
2. the client signs a short-lived JWT, the *client assertion*, with its private key and
   POSTs ``grant_type=client_credentials``, ``scope``, ``client_assertion_type`` and
   ``client_assertion`` to the token endpoint. The hospital checks the signature with the
   public key it was given at registration (the client's JWKS).
3. the access token is cached until shortly before it expires and fetched again after a
   401 (see :class:`~ims_fhir.client.auth.CachedTokenAuth`).

Terms
-----
signing key
    :class:`SigningKey`: an RSA (>= 2048 bit, signs ``RS384``) or EC P-384 (signs
    ``ES384``) private key read from a PEM file, with its ``kid``: the RFC 7638 JWK
    thumbprint of the public key, so the same key always has the same kid.
JWKS
    JSON Web Key Set, ``{"keys": [...]}``: the public half of the signing key(s), each with
    ``kid``, ``alg`` and ``use: sig``. This is what a clinic hands to the hospital.
client assertion
    A JWT with header ``alg``, ``kid``, ``typ: JWT`` and claims ``iss`` = ``sub`` = the
    client id, ``aud`` = the token endpoint URL, ``exp`` at most five minutes ahead
    (:data:`ASSERTION_LIFETIME`), ``iat`` and a unique ``jti`` (128 random bits). A new
    one is made for every token request.
scopes, v2 and v1
    SMART v2 system scopes name a resource type and the interactions allowed, in the
    order ``c r u d s`` (create, read, update, delete, search): ``system/Patient.cus``.
    SMART v1 has only ``.read`` and ``.write``: ``system/Patient.read
    system/Patient.write``. :func:`scopes_for` turns the command's needs (see
    :meth:`~ims_fhir.client.auth.Auth.declare_needs`) into the least set of scopes; v1
    is used only when the server advertises ``permission-v1`` without ``permission-v2``.
    Explicit scopes (the ``SCOPES`` part of ``--auth smart:...``) replace that.

Nothing secret leaves this module: the private key, the assertion and the token are
never in a ``repr()``, an error message or a log line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jwt
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ims_fhir.client.auth import AccessToken, AuthContext, CachedTokenAuth, request_token
from ims_fhir.client.capability import Requirement
from ims_fhir.client.errors import shown_url
from ims_fhir.errors import ConfigurationError, FhirAuthError, FhirCapabilityError, UsageError

_log = logging.getLogger(__name__)

Algorithm = Literal["RS384", "ES384"]
ALGORITHMS: tuple[Algorithm, ...] = ("RS384", "ES384")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Seconds an assertion is valid; SMART allows at most five minutes.
ASSERTION_LIFETIME = 300
WELL_KNOWN = ".well-known/smart-configuration"
RSA_BITS = 3072
MIN_RSA_BITS = 2048
_HIDDEN = "***"

#: v2 interaction letters, in the order SMART writes them.
_V2_ORDER = "cruds"
_V2_LETTER = {
    "create": "c",
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "update": "u",
    "patch": "u",
    "delete": "d",
    "search-type": "s",
    "history-type": "s",
}


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key that signs client assertions (see the module docstring)."""

    private_key: Any = field(repr=False)
    alg: Algorithm
    kid: str

    @classmethod
    def from_private_key(cls, private_key: Any) -> SigningKey:
        if isinstance(private_key, rsa.RSAPrivateKey):
            if private_key.key_size < MIN_RSA_BITS:
                raise UsageError(f"an RSA signing key needs at least {MIN_RSA_BITS} bits, not {private_key.key_size}")
            alg: Algorithm = "RS384"
        elif isinstance(private_key, ec.EllipticCurvePrivateKey):
            if private_key.curve.name != "secp384r1":
                raise UsageError(f"an EC signing key must be on curve P-384 (ES384), not {private_key.curve.name}")
            alg = "ES384"
        else:
            raise UsageError("the signing key must be an RSA or EC P-384 private key")
        return cls(private_key=private_key, alg=alg, kid=_thumbprint(_public_members(private_key)))

    @classmethod
    def generate(cls, alg: Algorithm = "RS384") -> SigningKey:
        if alg == "RS384":
            return cls.from_private_key(rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS))
        if alg == "ES384":
            return cls.from_private_key(ec.generate_private_key(ec.SECP384R1()))
        raise UsageError(f"--alg must be one of {', '.join(ALGORITHMS)}, not {alg!r}")

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        """Read an unencrypted PEM private key (PKCS#8 or traditional) from ``path``."""
        where = Path(path)
        try:
            data = where.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the SMART private key file {where} ({exc.strerror})") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ConfigurationError(
                f"the SMART private key {where} is encrypted; store it unencrypted with mode 0600"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            # Never quote the file: it may be some other secret.
            raise ConfigurationError(f"{where} is not a PEM private key (RSA or EC P-384)") from None
        return cls.from_private_key(key)

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK with ``kid``, ``alg`` and ``use: sig``."""
        return {**_public_members(self.private_key), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [self.public_jwk()]}

    def private_pem(self) -> bytes:
        return bytes(
            self.private_key.private_bytes(
                encoding=serialization.Encoding.PEM,
                format=serialization.PrivateFormat.PKCS8,
                encryption_algorithm=serialization.NoEncryption(),
            )
        )

    def sign(self, claims: Mapping[str, Any]) -> str:
        headers = {"kid": self.kid, "typ": "JWT"}
        return str(jwt.encode(dict(claims), self.private_key, algorithm=self.alg, headers=headers))


def _public_members(private_key: Any) -> dict[str, str]:
    """The required members of the public JWK (RFC 7518 section 6), nothing else."""
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"kty": "RSA", "e": _b64url_uint(numbers.e), "n": _b64url_uint(numbers.n)}
    point = public.public_numbers()
    size = (public.curve.key_size + 7) // 8

    def coord(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode("ascii")

    return {"kty": "EC", "crv": "P-384", "x": coord(point.x), "y": coord(point.y)}


def _thumbprint(members: Mapping[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, no whitespace; base64url."""
    canonical = json.dumps(dict(sorted(members.items())), separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode("ascii")


def write_key_files(out_dir: str | Path, alg: Algorithm = "RS384", *, overwrite: bool = False) -> SigningKey:
    """Generate a key; write ``private-key.pem`` (mode 0600) and ``jwks.json`` into ``out_dir``."""
    key = SigningKey.generate(alg)
    folder = Path(out_dir)
    private_path = folder / "private-key.pem"
    jwks_path = folder / "jwks.json"
    if not overwrite:
        for existing in (private_path, jwks_path):
            if existing.exists():
                raise UsageError(f"{existing} already exists; not overwriting a key (remove it first)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Created with 0600 from the start: never a moment where others could read it.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(private_path, flags, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_pem())
        os.chmod(private_path, 0o600)
        jwks_path.write_bytes(orjson.dumps(key.jwks(), option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as exc:
        raise ConfigurationError(f"cannot write the key files into {folder} ({exc.strerror})") from None
    return key


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True, slots=True)
class SmartConfiguration:
    """What ``.well-known/smart-configuration`` says (the parts a backend client uses)."""

    token_endpoint: str
    scopes_supported: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    auth_methods: tuple[str, ...] = ()
    signing_algs: tuple[str, ...] = ()

    @property
    def scope_version(self) -> Literal["v1", "v2"]:
        """v1 only when the server advertises ``permission-v1`` and not ``permission-v2``."""
        if "permission-v2" in self.capabilities:
            return "v2"
        if "permission-v1" in self.capabilities:
            return "v1"
        return "v2"

    @classmethod
    def from_document(cls, document: Any, *, url: str) -> SmartConfiguration:
        if not isinstance(document, dict):
            raise FhirCapabilityError(f"{shown_url(url)} is not a JSON object")
        endpoint = document.get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise FhirCapabilityError(f"{shown_url(url)} names no http(s) token_endpoint; give --token-url")

        def strings(key: str) -> tuple[str, ...]:
            items = document.get(key)
            return tuple(str(i) for i in items if isinstance(i, str)) if isinstance(items, list) else ()

        return cls(
            token_endpoint=endpoint,
            scopes_supported=strings("scopes_supported"),
            capabilities=strings("capabilities"),
            auth_methods=strings("token_endpoint_auth_methods_supported"),
            signing_algs=strings("token_endpoint_auth_signing_alg_values_supported"),
        )


def discover(context: AuthContext, base_url: str | None = None) -> SmartConfiguration:
    """Fetch and read ``[base]/.well-known/smart-configuration`` (no credentials sent)."""
    base = (base_url or context.base_url).rstrip("/")
    if context.get is None or not base:
        raise UsageError("SMART discovery needs the FHIR base URL; give --token-url")
    url = f"{base}/{WELL_KNOWN}"
    response = context.get(url, {"Accept": "application/json"})
    if response.status_code != 200:
        raise FhirCapabilityError(
            f"GET {shown_url(url)} answered HTTP {response.status_code}: the server publishes no SMART "
            "configuration; give the token endpoint with --token-url"
        )
    try:
        document = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise FhirCapabilityError(f"GET {shown_url(url)} did not answer JSON") from None
    return SmartConfiguration.from_document(document, url=url)


# --------------------------------------------------------------------------- scopes


def scopes_for(needs: Iterable[Requirement], version: Literal["v1", "v2"] = "v2") -> list[str]:
    """The least SMART system scopes that allow ``needs`` (see the module docstring).

    System-level needs (``transaction``, ``batch``) ask for no scope: servers check each
    entry of a transaction against the scopes of its resource type.
    """
    letters: dict[str, set[str]] = {}
    for need in needs:
        if need.resource_type is None:
            continue
        letter = _V2_LETTER.get(need.interaction)
        if letter is None:
            continue
        letters.setdefault(need.resource_type, set()).add(letter)
    scopes: list[str] = []
    for resource_type in sorted(letters):
        granted = letters[resource_type]
        if version == "v2":
            scopes.append(f"system/{resource_type}.{''.join(c for c in _V2_ORDER if c in granted)}")
        else:
            if granted & {"r", "s"}:
                scopes.append(f"system/{resource_type}.read")
            if granted & {"c", "u", "d"}:
                scopes.append(f"system/{resource_type}.write")
    return scopes


# --------------------------------------------------------------------------- the auth scheme


class SmartBackendAuth(CachedTokenAuth):
    """SMART Backend Services (``private_key_jwt``) as an :class:`~ims_fhir.client.auth.Auth`.

    ``key`` is a :class:`SigningKey` or the path of its PEM file. ``scopes`` (a space
    separated string) overrides the least-privilege scopes derived from the declared
    needs; ``token_url`` overrides discovery. ``assertion_lifetime`` is capped at five
    minutes.
    """

    def __init__(
        self,
        client_id: str,
        key: SigningKey | str | Path,
        *,
        scopes: str | None = None,
        token_url: str | None = None,
        assertion_lifetime: int = ASSERTION_LIFETIME,
        refresh_margin: float = 60.0,
    ) -> None:
        super().__init__(refresh_margin=refresh_margin)
        if not client_id or any(c.isspace() for c in client_id):
            raise UsageError("SMART auth needs a client id without spaces")
        if token_url is not None and not token_url.startswith(("https://", "http://")):
            raise UsageError("--token-url must start with https:// or http://")
        if not 0 < assertion_lifetime <= ASSERTION_LIFETIME:
            raise UsageError(f"the assertion lifetime must be 1-{ASSERTION_LIFETIME} seconds")
        self.client_id = client_id
        self.key = key if isinstance(key, SigningKey) else SigningKey.load(key)
        self.scopes = " ".join(scopes.split()) if scopes and scopes.strip() else None
        self.token_url = token_url
        self.assertion_lifetime = assertion_lifetime
        self._needs: set[Requirement] = set()
        self._configuration: SmartConfiguration | None = None

    def __repr__(self) -> str:
        return (
            f"SmartBackendAuth(client_id={self.client_id!r}, alg={self.key.alg!r}, kid={self.key.kid!r}, "
            f"key={_HIDDEN}, scopes={self.scopes!r}, token_url={self.token_url!r})"
        )

    def declare_needs(self, needs: Iterable[Requirement]) -> None:
        new = set(needs) - self._needs
        if new:
            with self._lock:
                self._needs |= new
                self._token = None  # wider needs: the next request asks for a token that covers them

    def configuration(self, context: AuthContext) -> SmartConfiguration | None:
        """The discovered SMART configuration (None when ``token_url`` was given)."""
        if self.token_url is not None:
            return None
        if self._configuration is None:
            self._configuration = discover(context)
        return self._configuration

    def requested_scopes(self, context: AuthContext) -> str:
        if self.scopes:
            return self.scopes
        if not self._needs:
            raise UsageError(
                "SMART auth: no scopes given and the command declared none; "
                "give them as smart:CLIENT_ID:KEY_FILE:SCOPES"
            )
        config = self.configuration(context)
        version = config.scope_version if config is not None else "v2"
        return " ".join(scopes_for(self._needs, version))

    def assertion(self, context: AuthContext, token_url: str) -> str:
        """A fresh signed client assertion for ``token_url`` (a new ``jti`` every time)."""
        now = int(context.clock.now())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "iat": now,
            "exp": now + self.assertion_lifetime,
            "jti": secrets.token_urlsafe(16),
        }
        return self.key.sign(claims)

    def fetch_token(self, context: AuthContext) -> AccessToken:
        config = self.configuration(context)
        token_url = self.token_url or (config.token_endpoint if config is not None else "")
        scope = self.requested_scopes(context)
        form = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": self.assertion(context, token_url)}
        _log.debug("requesting a SMART token for client %r at %s, scope %r",
                   self.client_id, shown_url(token_url), scope)
        try:
            return request_token(self, context, token_url, self.client_id, form, scope=scope)
        except FhirAuthError as exc:
            raise FhirAuthError(
                f"SMART backend authorization failed: {exc.message}", status=exc.status, url=exc.url
            ) from None


__all__ = [
    "ALGORITHMS",
    "ASSERTION_LIFETIME",
    "ASSERTION_TYPE",
    "Algorithm",
    "SigningKey",
    "SmartBackendAuth",
    "SmartConfiguration",
    "discover",
    "scopes_for",
    "write_key_files",
]
