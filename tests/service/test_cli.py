"""``ims-fhir serve`` and ``ims-fhir worker`` on the command line (no FHIR server needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ims_fhir_service import create_app
from ims_fhir_service.config import config_from_mapping
from tests.conftest import EXAMPLES

from .conftest import rw, service_settings


def test_a_missing_configuration_is_one_line_and_exit_2(run_cli: Any, tmp_path: Path) -> None:
    for command in ("serve", "worker"):
        result = run_cli(command, "--config", tmp_path / "nope.toml")
        assert result.code == 2 and "cannot read" in result.err and "Traceback" not in result.err


def test_worker_once_sends_what_is_due_and_leaves_the_rest_queued(run_cli: Any, tmp_path: Path,
                                                                   monkeypatch: Any) -> None:
    settings = service_settings(tmp_path, targets=[{"name": "down", "base_url": "http://127.0.0.1:9/fhir",
                                                    "max_attempts": 1, "timeout": 2, "retry_budget": 5}])
    app = create_app(config_from_mapping(settings, environ={}))
    assert app.test_client().post("/records", data=(EXAMPLES / "records.ndjson").read_bytes(),
                                  headers=rw()).status_code == 202
    config = tmp_path / "service.toml"
    config.write_text(f'[storage]\nurl = "{settings["storage"]["url"]}"\n', encoding="utf-8")
    monkeypatch.setenv("IMS_FHIR_SOURCE_CLINIC_ID", settings["source"]["clinic_id"])
    monkeypatch.setenv("IMS_FHIR_SOURCE_SYSTEM_BASE", settings["source"]["system_base"])
    monkeypatch.setenv("IMS_FHIR_TARGET_DOWN_BASE_URL", "http://127.0.0.1:9/fhir")
    monkeypatch.setenv("IMS_FHIR_TARGET_DOWN_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("IMS_FHIR_TARGET_DOWN_TIMEOUT", "2")
    result = run_cli("worker", "--config", config, "--once")
    assert result.code == 0, result.err
    (delivery,) = app.extensions["ims_fhir"].outbox.status("patient", "P000001").deliveries
    assert delivery.state == "queued" and delivery.attempts == 1 and "127.0.0.1:9" in (delivery.error or "")
