"""The worker's configuration (ims_fhir.sync.config): the service's file, read without the service."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from ims_fhir.errors import ConfigurationError
from ims_fhir.sync.config import SyncConfig, load_sync_config

SERVICE_FILE = """
[source]
clinic_id = "synthetic-7"
system_base = "https://clinic.example.org/ims"

[storage]
url = "sqlite:///{db}"

[server]
port = 8123

[worker]
lease_seconds = 400

[convert]
cpt = false

[[targets]]
name = "hospital"
base_url = "https://fhir.hospital.example.org/r4/"

[[tokens]]
name = "ci"
sha256 = "{digest}"
scope = "read-write"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "service.toml"
    path.write_text(text.format(db=tmp_path / "o.sqlite", digest="0" * 64), encoding="utf-8")
    return path


def test_the_worker_reads_the_services_file_and_leaves_its_sections_alone(tmp_path: Path) -> None:
    env = {"IMS_FHIR_WORKER_BATCH_RECORDS": "7", "IMS_FHIR_TARGET_LAB_BASE_URL": "http://127.0.0.1:8080/fhir",
           "IMS_FHIR_SERVER_PORT": "not a port: the worker does not read it", "IMS_FHIR_TOKEN_X_SCOPE": "admin"}
    config = load_sync_config(_write(tmp_path, SERVICE_FILE), environ=env)
    assert type(config) is SyncConfig
    assert config.source.clinic_id == "synthetic-7" and config.storage_url.endswith("o.sqlite")
    assert config.worker.batch_records == 7 and config.worker.lease_seconds == 400 and config.convert.cpt is False
    assert [t.name for t in config.targets] == ["hospital", "lab"]
    assert config.target("lab") is not None and config.target("nope") is None


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s + "\n[queue]\nsize = 3\n", "unknown section(s) queue"),
    (lambda s: s.replace('lease_seconds = 400', 'lease_seconds = 400\nbatch_size = 5'), "unknown key(s) batch_size"),
    (lambda s: s.replace('cpt = false', 'cpt = "maybe"'), "convert.cpt"),
    (lambda s: s.replace('base_url = "https://fhir.hospital.example.org/r4/"', ''), "base_url is required"),
])
def test_a_bad_file_is_one_clear_error(tmp_path: Path, edit: Callable[[str], str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        load_sync_config(_write(tmp_path, edit(SERVICE_FILE)), environ={})


def test_an_unreadable_file_names_itself(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="missing.toml: cannot read"):
        load_sync_config(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[source\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="bad.toml: not valid TOML"):
        load_sync_config(bad, environ={})
