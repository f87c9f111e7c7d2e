"""The configuration: TOML file, IMS_FHIR_* environment, and the errors for a bad one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ims_fhir.errors import ConfigurationError
from ims_fhir_service.auth import hash_token
from ims_fhir_service.auth import main as auth_main
from ims_fhir_service.config import config_from_mapping, load_config

from .conftest import service_settings

TOML = """
[source]
clinic_id = "synthetic-7"
system_base = "https://clinic.example.org/ims"

[storage]
url = "sqlite:///{db}"

[server]
port = 8123

[worker]
enabled = false
lease_seconds = 400

[[targets]]
name = "hospital"
base_url = "https://fhir.hospital.example.org/r4/"
auth = "bearer:env:HOSPITAL_TOKEN"

[[tokens]]
name = "ci"
sha256 = "{digest}"
scope = "read-write"
"""


def test_a_toml_file_then_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "service.toml"
    path.write_text(TOML.format(db=tmp_path / "o.sqlite", digest=hash_token("t")), encoding="utf-8")
    env = {"HOSPITAL_TOKEN": "s3cr3t-value", "IMS_FHIR_SERVER_PORT": "9000", "IMS_FHIR_WORKER_BATCH_RECORDS": "7",
           "IMS_FHIR_TARGET_LAB_BASE_URL": "http://127.0.0.1:8080/fhir", "IMS_FHIR_TOKEN_RO_SHA256": hash_token("r"),
           "IMS_FHIR_TOKEN_RO_SCOPE": "read", "IMS_FHIR_AUTH": "none", "IMS_FHIR_SECRET_KEY": "k" * 32}
    config = load_config(path, environ=env)
    assert config.server.port == 9000 and config.worker.batch_records == 7 and config.worker.lease_seconds == 400
    assert config.worker_enabled is False
    assert [t.name for t in config.targets] == ["hospital", "lab"]
    assert config.targets[0].client.base_url == "https://fhir.hospital.example.org/r4"
    assert {t.name: t.scope for t in config.tokens} == {"ci": "read-write", "ro": "read"}
    assert config.secret_key == "k" * 32
    assert hash_token("t") not in repr(config) and "s3cr3t-value" not in repr(config)


@pytest.mark.parametrize(("change", "message"), [
    ({"source": {"clinic_id": "x"}}, "[source]"),
    ({"storage": {"url": "postgresql://db/ims"}}, "sqlite"),
    ({"targets": []}, "at least one"),
    ({"targets": [{"name": "Bad Name", "base_url": "http://x"}]}, "target name"),
    ({"targets": [{"name": "h", "base_url": "http://u:p@x/fhir"}]}, "user:password"),
    ({"targets": [{"name": "h", "base_url": "http://x", "auth": "bearer:env:NOT_SET_ANYWHERE"}]}, "NOT_SET_ANYWHERE"),
    ({"tokens": [{"name": "t", "sha256": "plain-text-token", "scope": "read"}]}, "digest"),
    ({"tokens": [{"name": "t", "sha256": hash_token("x"), "scope": "admin"}]}, "scope"),
    ({"worker": {"lease_seconds": 5}}, "lease_seconds"),
    ({"worker": {"batch_size": 5}}, "unknown key"),
    ({"server": {"port": "eighty"}}, "not a int"),
    ({"queue": {}}, "unknown section"),
])
def test_bad_configuration_is_one_clear_error(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    data = service_settings(tmp_path)
    data.update(change)
    with pytest.raises(ConfigurationError) as info:
        config_from_mapping(data, environ={})
    assert message in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_config(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[source\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_config(bad, environ={})


def test_the_token_digest_helper(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("abc\n"))
    assert auth_main([]) == 0
    assert capsys.readouterr().out.strip() == f'sha256 = "{hash_token("abc")}"'
