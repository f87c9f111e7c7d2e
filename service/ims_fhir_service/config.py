"""The service's configuration: the worker's (``ims_fhir.sync.config``) plus the service's own.

One TOML file, then ``IMS_FHIR_*`` environment variables, built once into a frozen
:class:`ServiceConfig` and handed to ``create_app(config)``; no code reads the environment
after that. The sections ``[source]``, ``[storage]``, ``[worker]``, ``[convert]`` and
``[[targets]]`` are described in :mod:`ims_fhir.sync.config` (``ims-fhir worker`` reads
the same file); the service adds::

    [server]                      # ims-fhir serve (waitress)
    host = "127.0.0.1"
    port = 8000
    threads = 4
    max_body_bytes = 10485760     # larger request bodies get 413
    secret_key_env = "IMS_FHIR_SECRET_KEY"   # signs the dashboard's session cookie
    secure_cookies = false        # true behind TLS

    [[tokens]]                    # API tokens, stored as SHA-256 digests, never in clear
    name = "clinic-export"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    scope = "read-write"          # or "read"

Environment variables override the file: ``IMS_FHIR_SERVER_<KEY>`` (``IMS_FHIR_SERVER_PORT``)
and ``IMS_FHIR_TOKEN_<NAME>_SHA256`` / ``_SCOPE`` for a token, besides the worker's.
``python -m ims_fhir_service.auth`` prints a token's digest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ims_fhir.errors import ConfigurationError
from ims_fhir.sync.config import (
    NAME,
    SYNC_SECTIONS,
    ConvertSettings,
    SyncConfig,
    merge_environ,
    read_config_file,
    section,
    sync_config_from_merged,
)

SCOPES = ("read", "read-write")
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class TokenConfig:
    name: str
    sha256: str
    scope: str

    def __repr__(self) -> str:  # the digest stays out of logs and tracebacks too
        return f"TokenConfig(name={self.name!r}, scope={self.scope!r})"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 4
    max_body_bytes: int = 10 * 1024 * 1024
    secret_key_env: str = "IMS_FHIR_SECRET_KEY"  # noqa: S105  (the name of a variable, not a secret)
    secure_cookies: bool = False


@dataclass(frozen=True)
class ServiceConfig(SyncConfig):
    """The worker's configuration plus the HTTP server's settings, the API tokens and the cookie key."""

    tokens: tuple[TokenConfig, ...] = ()
    server: ServerSettings = field(default_factory=ServerSettings)
    #: signs the dashboard session cookie; None = a random key per process (sessions end at restart)
    secret_key: str | None = field(default=None, repr=False)


def _token(data: Mapping[str, Any]) -> TokenConfig:
    name = str(data.get("name", ""))
    if not NAME.fullmatch(name):
        raise ConfigurationError(f"token name {name!r}: use lower-case letters, digits and '-'")
    digest = str(data.get("sha256", "")).lower().removeprefix("sha256:")
    if not _DIGEST.fullmatch(digest):
        raise ConfigurationError(f"token {name}: sha256 must be the token's SHA-256 digest, 64 hex digits "
                                 "(python -m ims_fhir_service.auth prints it); tokens are never configured in clear")
    scope = str(data.get("scope", "read"))
    if scope not in SCOPES:
        raise ConfigurationError(f"token {name}: scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    return TokenConfig(name, digest, scope)


def config_from_mapping(data: Mapping[str, Any], *, environ: Mapping[str, str] | None = None,
                        where: str = "configuration") -> ServiceConfig:
    """Build the configuration from parsed TOML (or a dict in tests) plus the environment."""
    environ = os.environ if environ is None else environ
    merged = merge_environ(data, environ, sections=(*SYNC_SECTIONS, "server"),
                           tables={"TARGET_": "targets", "TOKEN_": "tokens"})
    sync = sync_config_from_merged(merged, environ, where=where)
    tokens = tuple(_token(t) for t in merged.get("tokens", []))
    server = section(ServerSettings, merged.get("server", {}), "server")
    return ServiceConfig(**{f.name: getattr(sync, f.name) for f in fields(SyncConfig)}, tokens=tokens, server=server,
                         secret_key=environ.get(server.secret_key_env) or None)


def load_config(path: str | Path | None, *, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read the TOML file (if any) and the environment."""
    data, where = read_config_file(path)
    return config_from_mapping(data, environ=environ, where=where)


__all__ = ["SCOPES", "ConvertSettings", "ServerSettings", "ServiceConfig", "TokenConfig", "config_from_mapping",
           "load_config", "replace"]
