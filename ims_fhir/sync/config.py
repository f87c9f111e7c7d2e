"""The sync worker's configuration: a TOML file, then ``IMS_FHIR_*`` environment variables.

``ims-fhir worker`` and the service (``ims_fhir_service``) read the same file; this module
reads the sections the worker needs and builds a frozen :class:`SyncConfig`. The service's
configuration extends it with its own sections (see ``ims_fhir_service.config``). No code
reads the environment after the configuration is built. The worker's sections::

    [source]                      # the one clinic this service speaks for
    clinic_id = "synthetic-7"
    clinic_name = "Synthetic IMS Clinic 7"
    system_base = "https://clinic.example.org/ims"

    [storage]
    url = "sqlite:///var/lib/ims-fhir/outbox.sqlite"
    # or "postgresql://ims@db.example.org:5432/imsfhir" (extra [postgres]; several
    # `ims-fhir worker` processes on several hosts; the password in PGPASSWORD or ~/.pgpass)

    [worker]                      # the background sender (in serve, or ims-fhir worker)
    enabled = true                # false: serve runs no worker thread; run ims-fhir worker beside it
    batch_records = 100
    bundle_size = 200
    lease_seconds = 300
    poll_seconds = 1.0
    max_attempts = 8
    backoff_base = 5.0
    backoff_cap = 600.0
    dead_after_seconds = 259200   # a transient failure (connection, 5xx, 429) is dead only after
                                  # max_attempts attempts AND this long since the first (72 h)
    concurrency = 1               # Bundles in flight per target (a patient's still in order)

    [convert]
    lenient = false
    default_tz = "America/Vancouver"   # optional
    # cpt = true                   # CPT 20560/20561: default only when [source] country = "US"

    [[targets]]                   # FHIR servers; only ever from here, never from a request
    name = "hospital"
    base_url = "https://fhir.hospital.example.org/r4"
    auth = "bearer:env:HOSPITAL_FHIR_TOKEN"   # the client's auth spec: secrets stay in the environment
    # auth = "smart:clinic-42:/etc/ims-fhir/private-key.pem"   # SMART Backend Services (private_key_jwt)
    # token_url = "https://auth.hospital.example.org/token"     # optional: else discovered from base_url
    # ca_bundle = "/etc/ims-fhir/hospital-ca.pem"               # the hospital's private CA
    # client_cert = "/etc/ims-fhir/clinic.crt"                  # mutual TLS (client_key if separate)
    timeout = 60
    max_attempts = 5
    retry_budget = 120

Environment variables override the file: ``IMS_FHIR_<SECTION>_<KEY>`` for the sections
above (``IMS_FHIR_STORAGE_URL``, ``IMS_FHIR_SOURCE_CLINIC_ID``, ``IMS_FHIR_WORKER_ENABLED``
...) and ``IMS_FHIR_TARGET_<NAME>_<KEY>`` for a target (``IMS_FHIR_TARGET_HOSPITAL_BASE_URL``,
``..._AUTH``; a new NAME adds a target). Other ``IMS_FHIR_*`` variables belong to other
commands and are ignored.

Terms used here:

section
    A TOML table (``[worker]``) or array of tables (``[[targets]]``) of the file.
service sections
    ``[server]`` and ``[[tokens]]``: read by the service only; the worker accepts a file
    that has them and leaves them alone.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from ims_fhir.client import ClientConfig
from ims_fhir.delivery import DELIVERED_TYPES
from ims_fhir.errors import ConfigurationError, UsageError
from ims_fhir.records.models import Source
from ims_fhir.sync.reconcile import sync_requirements

from .postgres import is_postgres_url
from .sqlite import path_from_url
from .worker import Target, WorkerOptions

#: What the service does on a target, push (the worker, through TargetSync: identity, If-Match,
#: Provenance) and pull (POST /pull): pull's searches are among them.
SERVICE_NEEDS = tuple(sync_requirements(DELIVERED_TYPES))

#: The tables of the file the worker reads (``[[targets]]`` is an array of tables).
SYNC_SECTIONS: tuple[str, ...] = ("source", "storage", "worker", "convert")
#: Read by the service (``ims_fhir_service.config``); the worker leaves them alone.
SERVICE_SECTIONS: tuple[str, ...] = ("server", "tokens")

#: Names of targets (and of the service's tokens): lower-case letters, digits and '-'.
NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ConvertSettings:
    """How records taken in by the service are read and mapped (as the ``convert`` options)."""

    lenient: bool = False
    default_tz: str | None = None
    #: CPT on treatments: True always, False never, None (unset) only for a source with country US
    cpt: bool | None = None

    def __post_init__(self) -> None:
        value: object = self.cpt
        if isinstance(value, str):  # from the environment
            value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(value.lower(), value)
            object.__setattr__(self, "cpt", value)
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"convert.cpt: {value!r} is not true or false")


@dataclass(frozen=True)
class SyncConfig:
    """What the sync worker needs: the clinic, the storage, the targets and how to send."""

    source: Source
    storage_url: str
    targets: tuple[Target, ...]
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    worker_enabled: bool = True
    convert: ConvertSettings = field(default_factory=ConvertSettings)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)


def coerce(value: Any, like: Any, where: str) -> Any:
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


def section(cls: type[_T], data: Mapping[str, Any], where: str) -> _T:
    """A settings dataclass (all fields defaulted) from one table, keys checked and values coerced."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigurationError(f"[{where}]: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    defaults = cls()
    values = {k: coerce(v, getattr(defaults, k), f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, UsageError) as exc:
        raise ConfigurationError(f"[{where}]: {exc}") from exc


def merge_environ(data: Mapping[str, Any], environ: Mapping[str, str], *, sections: tuple[str, ...],
                  tables: Mapping[str, str]) -> dict[str, Any]:
    """Fold ``IMS_FHIR_*`` variables into the parsed file (see the module docstring).

    ``sections`` are the tables that ``IMS_FHIR_<SECTION>_<KEY>`` sets; ``tables`` maps a
    variable prefix (``TARGET_``) to the array of tables whose entry ``<NAME>_<KEY>`` sets.
    """
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    entries = {name: {str(t.get("name")): dict(t) for t in merged.get(name, [])} for name in tables.values()}
    for key, value in sorted(environ.items()):
        if not key.startswith("IMS_FHIR_"):
            continue
        rest = key[len("IMS_FHIR_"):]
        for name in sections:
            prefix = name.upper() + "_"
            if rest.startswith(prefix):
                merged.setdefault(name, {})[rest[len(prefix):].lower()] = value
        for prefix, name in tables.items():
            if rest.startswith(prefix) and "_" in rest[len(prefix):]:
                entry_name, _, item = rest[len(prefix):].partition("_")
                entry = entries[name].setdefault(entry_name.lower(), {"name": entry_name.lower()})
                entry[item.lower()] = value
    for name, by_name in entries.items():
        merged[name] = list(by_name.values())
    return merged


def target_from_mapping(data: Mapping[str, Any], environ: Mapping[str, str]) -> Target:
    """One ``[[targets]]`` entry: a name and the FHIR client's configuration."""
    name = str(data.get("name", ""))
    if not NAME.fullmatch(name):
        raise ConfigurationError(f"target name {name!r}: use lower-case letters, digits and '-'")
    allowed = {"name", "base_url", "auth", "timeout", "connect_timeout", "max_attempts", "retry_budget",
               "ca_bundle", "verify", "check_capabilities", "token_url", "client_cert", "client_key"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigurationError(f"target {name}: unknown key(s) {', '.join(unknown)}")
    if not data.get("base_url"):
        raise ConfigurationError(f"target {name}: base_url is required")
    try:
        client = ClientConfig.from_values(
            str(data["base_url"]), auth=str(data.get("auth", "none")),
            read_timeout=float(coerce(data.get("timeout", 60.0), 60.0, f"target {name}.timeout")),
            connect_timeout=float(coerce(data.get("connect_timeout", 10.0), 10.0, f"target {name}.connect_timeout")),
            max_attempts=int(coerce(data.get("max_attempts", 5), 5, f"target {name}.max_attempts")),
            total_budget=float(coerce(data.get("retry_budget", 120.0), 120.0, f"target {name}.retry_budget")),
            ca_bundle=data.get("ca_bundle"), verify=bool(coerce(data.get("verify", True), True, "verify")),
            check_capabilities=bool(coerce(data.get("check_capabilities", True), True, "check_capabilities")),
            environ=environ, token_url=_optional(data, "token_url"), client_cert=_optional(data, "client_cert"),
            client_key=_optional(data, "client_key"))
    except UsageError as exc:
        raise ConfigurationError(f"target {name}: {exc}") from exc
    # The service pushes (the worker) and pulls (POST /pull) on every target: a SMART auth asks
    # for the scopes of both, and no more.
    client.auth.declare_needs(SERVICE_NEEDS)
    return Target(name, client)


def _optional(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return str(value) if value not in (None, "") else None


def sync_config_from_merged(merged: Mapping[str, Any], environ: Mapping[str, str], *, where: str,
                            other_sections: tuple[str, ...] = SERVICE_SECTIONS) -> SyncConfig:
    """The worker's configuration from a file already merged with the environment.

    ``other_sections`` are accepted and left to whoever reads them; any other unknown
    section is an error.
    """
    unknown = sorted(set(merged) - set(SYNC_SECTIONS) - {"targets"} - set(other_sections))
    if unknown:
        raise ConfigurationError(f"{where}: unknown section(s) {', '.join(unknown)}")
    try:
        source = Source.model_validate(dict(merged.get("source", {})))
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise ConfigurationError(f"{where}: [source] needs clinic_id and system_base ({detail})") from None
    storage = merged.get("storage", {})
    unknown_storage = sorted(set(storage) - {"url"})
    if unknown_storage or not storage.get("url"):
        raise ConfigurationError(f"{where}: [storage] needs url (sqlite:///PATH or postgresql://...) and nothing else")
    if not is_postgres_url(str(storage["url"])):
        path_from_url(str(storage["url"]))  # a URL the storage layer understands, or ConfigurationError now
    worker_data = dict(merged.get("worker", {}))
    enabled = coerce(worker_data.pop("enabled", True), True, "worker.enabled")
    targets = tuple(target_from_mapping(t, environ) for t in merged.get("targets", []))
    if not targets:
        raise ConfigurationError(f"{where}: at least one [[targets]] entry is needed")
    if len({t.name for t in targets}) != len(targets):
        raise ConfigurationError(f"{where}: two targets share a name")
    worker = section(WorkerOptions, worker_data, "worker")
    try:
        worker.check_lease(list(targets))
    except UsageError as exc:
        raise ConfigurationError(str(exc)) from exc
    return SyncConfig(source=source, storage_url=str(storage["url"]), targets=targets, worker=worker,
                      worker_enabled=bool(enabled), convert=section(ConvertSettings, merged.get("convert", {}), "convert"))


def read_config_file(path: str | Path | None) -> tuple[dict[str, Any], str]:
    """The parsed TOML file (empty without one) and how to name it in messages."""
    if path is None:
        return {}, "environment"
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8")), str(path)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML ({exc})") from exc


def load_sync_config(path: str | Path | None, *, environ: Mapping[str, str] | None = None) -> SyncConfig:
    """The worker's configuration: the TOML file (if any), then the environment."""
    environ = os.environ if environ is None else environ
    data, where = read_config_file(path)
    merged = merge_environ(data, environ, sections=SYNC_SECTIONS, tables={"TARGET_": "targets"})
    return sync_config_from_merged(merged, environ, where=where)


__all__ = ["NAME", "SERVICE_SECTIONS", "SYNC_SECTIONS", "ConvertSettings", "SyncConfig", "coerce", "load_sync_config",
           "merge_environ", "read_config_file", "section", "sync_config_from_merged", "target_from_mapping"]
