"""The service's configuration: a TOML file, then ``IMS_FHIR_*`` environment variables.

Built once into a frozen :class:`ServiceConfig` and handed to ``create_app(config)``; no
code reads the environment after that. The file::

    [source]                      # the one clinic this service speaks for
    clinic_id = "synthetic-7"
    clinic_name = "Synthetic IMS Clinic 7"
    system_base = "https://clinic.example.org/ims"

    [storage]
    url = "sqlite:///var/lib/ims-fhir/outbox.sqlite"

    [server]                      # ims-fhir serve (waitress)
    host = "127.0.0.1"
    port = 8000
    threads = 4
    max_body_bytes = 10485760     # larger request bodies get 413
    secret_key_env = "IMS_FHIR_SECRET_KEY"   # signs the dashboard's session cookie
    secure_cookies = false        # true behind TLS

    [worker]                      # the background sender (in serve, or ims-fhir worker)
    enabled = true
    batch_records = 100
    bundle_size = 200
    lease_seconds = 300
    poll_seconds = 1.0
    max_attempts = 8
    backoff_base = 5.0
    backoff_cap = 600.0

    [convert]
    lenient = false
    default_tz = "America/Vancouver"   # optional
    # cpt = true                   # CPT 20560/20561: default only when [source] country = "US"

    [[targets]]                   # FHIR servers; only ever from here, never from a request
    name = "hospital"
    base_url = "https://fhir.hospital.example.org/r4"
    auth = "bearer:env:HOSPITAL_FHIR_TOKEN"   # the client's auth spec: secrets stay in the environment
    timeout = 60
    max_attempts = 5
    retry_budget = 120

    [[tokens]]                    # API tokens, stored as SHA-256 digests, never in clear
    name = "clinic-export"
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    scope = "read-write"          # or "read"

Environment variables override the file: ``IMS_FHIR_<SECTION>_<KEY>`` for the sections
above (``IMS_FHIR_STORAGE_URL``, ``IMS_FHIR_SOURCE_CLINIC_ID``, ``IMS_FHIR_SERVER_PORT``,
``IMS_FHIR_WORKER_ENABLED`` ...), ``IMS_FHIR_TARGET_<NAME>_<KEY>`` for a target
(``IMS_FHIR_TARGET_HOSPITAL_BASE_URL``, ``..._AUTH``; a new NAME adds a target) and
``IMS_FHIR_TOKEN_<NAME>_SHA256`` / ``_SCOPE`` for a token. Other ``IMS_FHIR_*`` variables
belong to other commands and are ignored. ``python -m service.auth`` prints a token's digest.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ims_fhir.client import ClientConfig
from ims_fhir.errors import ConfigurationError, UsageError
from ims_fhir.records.models import Source
from ims_fhir.sync import Target, WorkerOptions
from ims_fhir.sync.sqlite import path_from_url

SCOPES = ("read", "read-write")
_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
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
    secret_key_env: str = "IMS_FHIR_SECRET_KEY"
    secure_cookies: bool = False


@dataclass(frozen=True, slots=True)
class ConvertSettings:
    lenient: bool = False
    default_tz: str | None = None
    cpt: bool | None = None


@dataclass(frozen=True)
class ServiceConfig:
    source: Source
    storage_url: str
    targets: tuple[Target, ...]
    tokens: tuple[TokenConfig, ...] = ()
    server: ServerSettings = field(default_factory=ServerSettings)
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    worker_enabled: bool = True
    convert: ConvertSettings = field(default_factory=ConvertSettings)
    #: signs the dashboard session cookie; None = a random key per process (sessions end at restart)
    secret_key: str | None = field(default=None, repr=False)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)


def _coerce(value: Any, like: Any, where: str) -> Any:
    """An environment string (or TOML value) as the type of the default ``like``."""
    if not isinstance(value, str) or isinstance(like, str) or like is None:
        return value
    try:
        if isinstance(like, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(like, int):
            return int(value)
        if isinstance(like, float):
            return float(value)
    except ValueError:
        raise ConfigurationError(f"{where}: {value!r} is not a {type(like).__name__}") from None
    return value


def _section(cls: type, data: Mapping[str, Any], where: str, *, ignore: tuple[str, ...] = ()) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known) - set(ignore))
    if unknown:
        raise ConfigurationError(f"[{where}]: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    defaults = cls()
    values = {k: _coerce(v, getattr(defaults, k), f"{where}.{k}") for k, v in data.items() if k in known}
    try:
        return cls(**values)
    except (TypeError, UsageError) as exc:
        raise ConfigurationError(f"[{where}]: {exc}") from exc


def _target(data: Mapping[str, Any], environ: Mapping[str, str]) -> Target:
    name = str(data.get("name", ""))
    if not _NAME.fullmatch(name):
        raise ConfigurationError(f"target name {name!r}: use lower-case letters, digits and '-'")
    allowed = {"name", "base_url", "auth", "timeout", "connect_timeout", "max_attempts", "retry_budget",
               "ca_bundle", "verify", "check_capabilities"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigurationError(f"target {name}: unknown key(s) {', '.join(unknown)}")
    if not data.get("base_url"):
        raise ConfigurationError(f"target {name}: base_url is required")
    try:
        client = ClientConfig.from_values(
            str(data["base_url"]), auth=str(data.get("auth", "none")),
            read_timeout=float(_coerce(data.get("timeout", 60.0), 60.0, f"target {name}.timeout")),
            connect_timeout=float(_coerce(data.get("connect_timeout", 10.0), 10.0, f"target {name}.connect_timeout")),
            max_attempts=int(_coerce(data.get("max_attempts", 5), 5, f"target {name}.max_attempts")),
            total_budget=float(_coerce(data.get("retry_budget", 120.0), 120.0, f"target {name}.retry_budget")),
            ca_bundle=data.get("ca_bundle"), verify=bool(_coerce(data.get("verify", True), True, "verify")),
            check_capabilities=bool(_coerce(data.get("check_capabilities", True), True, "check_capabilities")),
            environ=environ)
    except UsageError as exc:
        raise ConfigurationError(f"target {name}: {exc}") from exc
    return Target(name, client)


def _token(data: Mapping[str, Any]) -> TokenConfig:
    name = str(data.get("name", ""))
    if not _NAME.fullmatch(name):
        raise ConfigurationError(f"token name {name!r}: use lower-case letters, digits and '-'")
    digest = str(data.get("sha256", "")).lower().removeprefix("sha256:")
    if not _DIGEST.fullmatch(digest):
        raise ConfigurationError(f"token {name}: sha256 must be the token's SHA-256 digest, 64 hex digits "
                                 "(python -m service.auth prints it); tokens are never configured in clear")
    scope = str(data.get("scope", "read"))
    if scope not in SCOPES:
        raise ConfigurationError(f"token {name}: scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    return TokenConfig(name, digest, scope)


def _from_environ(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Fold ``IMS_FHIR_*`` variables into the parsed file (see the module docstring)."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    targets = {str(t.get("name")): dict(t) for t in data.get("targets", [])}
    tokens = {str(t.get("name")): dict(t) for t in data.get("tokens", [])}
    for key, value in sorted(environ.items()):
        if not key.startswith("IMS_FHIR_"):
            continue
        rest = key[len("IMS_FHIR_"):]
        for section in ("SOURCE", "STORAGE", "SERVER", "WORKER", "CONVERT"):
            if rest.startswith(section + "_"):
                data.setdefault(section.lower(), {})[rest[len(section) + 1:].lower()] = value
        for prefix, table in (("TARGET_", targets), ("TOKEN_", tokens)):
            if rest.startswith(prefix) and "_" in rest[len(prefix):]:
                name, _, item = rest[len(prefix):].partition("_")
                entry = table.setdefault(name.lower(), {"name": name.lower()})
                entry[item.lower()] = value
    data["targets"] = list(targets.values())
    data["tokens"] = list(tokens.values())
    return data


def config_from_mapping(data: Mapping[str, Any], *, environ: Mapping[str, str] | None = None,
                        where: str = "configuration") -> ServiceConfig:
    """Build the configuration from parsed TOML (or a dict in tests) plus the environment."""
    environ = os.environ if environ is None else environ
    merged = _from_environ(dict(data), environ)
    unknown = sorted(set(merged) - {"source", "storage", "server", "worker", "convert", "targets", "tokens"})
    if unknown:
        raise ConfigurationError(f"{where}: unknown section(s) {', '.join(unknown)}")
    try:
        source = Source.model_validate({k: v for k, v in merged.get("source", {}).items()})
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise ConfigurationError(f"{where}: [source] needs clinic_id and system_base ({detail})") from None
    storage = merged.get("storage", {})
    unknown_storage = sorted(set(storage) - {"url"})
    if unknown_storage or not storage.get("url"):
        raise ConfigurationError(f"{where}: [storage] needs url (sqlite:///PATH) and nothing else")
    path_from_url(str(storage["url"]))  # a URL the storage layer understands, or ConfigurationError now
    worker_data = dict(merged.get("worker", {}))
    enabled = _coerce(worker_data.pop("enabled", True), True, "worker.enabled")
    targets = tuple(_target(t, environ) for t in merged.get("targets", []))
    if not targets:
        raise ConfigurationError(f"{where}: at least one [[targets]] entry is needed")
    if len({t.name for t in targets}) != len(targets):
        raise ConfigurationError(f"{where}: two targets share a name")
    tokens = tuple(_token(t) for t in merged.get("tokens", []))
    server = _section(ServerSettings, merged.get("server", {}), "server")
    worker = _section(WorkerOptions, worker_data, "worker")
    try:
        worker.check_lease(list(targets))
    except UsageError as exc:
        raise ConfigurationError(str(exc)) from exc
    return ServiceConfig(
        source=source, storage_url=str(storage["url"]), targets=targets, tokens=tokens, server=server,
        worker=worker, worker_enabled=bool(enabled), convert=_section(ConvertSettings, merged.get("convert", {}), "convert"),
        secret_key=environ.get(server.secret_key_env) or None)


def load_config(path: str | Path | None, *, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read the TOML file (if any) and the environment."""
    data: dict[str, Any] = {}
    where = "environment"
    if path is not None:
        where = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{path}: not valid TOML ({exc})") from exc
    return config_from_mapping(data, environ=environ, where=where)


__all__ = ["SCOPES", "ConvertSettings", "ServerSettings", "ServiceConfig", "TokenConfig", "config_from_mapping",
           "load_config", "replace"]
