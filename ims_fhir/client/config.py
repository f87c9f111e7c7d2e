"""Configuration of the FHIR client, built once from plain values (CLI options, service config).

Terms
-----
base URL
    The FHIR service base (``[base]`` in the FHIR http spec), e.g.
    ``https://fhir.example.org/r4``. It is normalised: surrounding space and trailing
    slashes removed, scheme and host lower-cased; it must be http(s), and it may not
    carry a query, a fragment or ``user:password@`` (credentials go in the auth).
timeout
    :class:`Timeout`: seconds to open a connection (``connect``) and to wait between
    bytes of the answer (``read``), as ``requests`` understands them.
verify / CA bundle
    TLS certificates are verified by default; ``ca_bundle`` names a PEM file of the CAs to
    trust instead of the system's (a hospital's private CA). ``verify=False`` exists for
    local experiments only and cannot be combined with a bundle.
client certificate
    For mutual TLS: ``client_cert`` is a PEM file with the clinic's certificate (and its
    chain), ``client_key`` the PEM private key when it is not in the same file. The key
    must be unencrypted (``requests`` cannot ask for a passphrase); keep it mode 0600.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from ims_fhir import __version__
from ims_fhir.client.auth import Auth, NoAuth
from ims_fhir.client.auth_spec import parse_auth_spec
from ims_fhir.client.retry import RetryPolicy
from ims_fhir.errors import UsageError

DEFAULT_USER_AGENT = f"ims-fhir/{__version__}"


@dataclass(frozen=True, slots=True)
class Timeout:
    """Connect and read timeouts in seconds."""

    connect: float = 10.0
    read: float = 60.0

    def __post_init__(self) -> None:
        if not (self.connect > 0 and self.read > 0):
            raise UsageError(f"timeouts must be positive, got connect={self.connect} read={self.read}")

    def as_requests(self) -> tuple[float, float]:
        return (self.connect, self.read)


def normalize_base_url(url: str) -> str:
    """The canonical form of a FHIR base URL (see the module docstring), or UsageError."""
    text = url.strip()
    parts = urlsplit(text)
    if "@" in parts.netloc:
        # Never echo the URL here: it holds a password.
        raise UsageError("FHIR base URL must not contain user:password@; use the auth option instead")
    try:
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        raise UsageError(f"FHIR base URL has an invalid port: {text!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"FHIR base URL must be http(s)://host[:port]/path, got {text!r}")
    if parts.query or parts.fragment or text.endswith("?") or "#" in text:
        raise UsageError(f"FHIR base URL must not have a query or fragment, got {text!r}")
    netloc = parts.netloc.lower()
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything a :class:`~ims_fhir.client.fhir_client.FhirClient` needs besides a session.

    ``check_capabilities`` makes each operation first check the server's
    CapabilityStatement (fetched once per client); turn it off only for servers whose
    CapabilityStatement is known to be incomplete.
    """

    base_url: str
    auth: Auth = field(default_factory=NoAuth)
    timeout: Timeout = field(default_factory=Timeout)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    verify: bool = True
    ca_bundle: str | None = None
    user_agent: str = DEFAULT_USER_AGENT
    check_capabilities: bool = True
    client_cert: str | None = None
    client_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", normalize_base_url(self.base_url))
        if not isinstance(self.auth, Auth):
            raise UsageError(f"auth must be an Auth object, got {type(self.auth).__name__}")
        if self.ca_bundle is not None:
            if not self.verify:
                raise UsageError("a CA bundle was given but TLS verification is off; choose one")
            if not os.path.isfile(self.ca_bundle):
                raise UsageError(f"CA bundle {self.ca_bundle!r} is not a readable file")
        if self.client_key is not None and self.client_cert is None:
            raise UsageError("a client key was given without a client certificate (--client-cert)")
        for what, path in (("client certificate", self.client_cert), ("client key", self.client_key)):
            if path is not None and not os.path.isfile(path):
                raise UsageError(f"{what} {path!r} is not a readable file")

    @property
    def requests_cert(self) -> str | tuple[str, str] | None:
        """The ``cert=`` argument for ``requests`` (mutual TLS): the PEM file(s) or None."""
        if self.client_cert is None:
            return None
        return (self.client_cert, self.client_key) if self.client_key is not None else self.client_cert

    @property
    def requests_verify(self) -> bool | str:
        """The ``verify=`` argument for ``requests``: True, False or the CA bundle path."""
        return self.ca_bundle if self.ca_bundle is not None else self.verify

    @classmethod
    def from_values(
        cls,
        base_url: str,
        *,
        auth: str | Auth = "none",
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        total_budget: float = 120.0,
        retry_transactions: bool = True,
        verify: bool = True,
        ca_bundle: str | None = None,
        user_agent: str | None = None,
        check_capabilities: bool = True,
        environ: Mapping[str, str] | None = None,
        token_url: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
    ) -> ClientConfig:
        """Build a config from plain values; ``auth`` may be an auth spec string
        (see :mod:`ims_fhir.client.auth_spec`), read with ``environ`` (default ``os.environ``)."""
        return cls(
            base_url=base_url,
            auth=parse_auth_spec(auth, environ=environ, token_url=token_url) if isinstance(auth, str) else auth,
            timeout=Timeout(connect=connect_timeout, read=read_timeout),
            retry=RetryPolicy(
                max_attempts=max_attempts, total_budget=total_budget, retry_transactions=retry_transactions
            ),
            verify=verify,
            ca_bundle=ca_bundle,
            user_agent=user_agent or DEFAULT_USER_AGENT,
            check_capabilities=check_capabilities,
            client_cert=client_cert,
            client_key=client_key,
        )


__all__ = ["DEFAULT_USER_AGENT", "ClientConfig", "Timeout", "normalize_base_url"]
