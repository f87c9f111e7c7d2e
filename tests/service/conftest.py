"""Fixtures of the service tests: a configuration factory, the app, its test client, tokens.

Tokens are made per session and configured only as digests, like in production.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from ims_fhir_service import create_app
from ims_fhir_service.auth import hash_token
from ims_fhir_service.config import ServiceConfig, config_from_mapping
from tests.conftest import SOURCE

RW_TOKEN = "rw-" + secrets.token_urlsafe(24)
RO_TOKEN = "ro-" + secrets.token_urlsafe(24)


def service_settings(tmp_path: Path, *, base_url: str = "http://127.0.0.1:9/fhir", source: dict[str, Any] | None = None,
                     **sections: Any) -> dict[str, Any]:
    """A configuration mapping (what the TOML file holds) for tests."""
    data: dict[str, Any] = {
        "source": dict(source or SOURCE),
        "storage": {"url": f"sqlite:///{tmp_path / 'outbox.sqlite'}"},
        "server": {"max_body_bytes": 256 * 1024},
        "worker": {"lease_seconds": 30, "poll_seconds": 0.2, "backoff_base": 0.2, "backoff_cap": 2.0,
                   "max_attempts": 4},
        "targets": [{"name": "hospital", "base_url": base_url, "timeout": 10, "retry_budget": 15, "max_attempts": 4}],
        "tokens": [{"name": "writer", "sha256": hash_token(RW_TOKEN), "scope": "read-write"},
                   {"name": "reader", "sha256": hash_token(RO_TOKEN), "scope": "read"}],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., ServiceConfig]:
    def make(**kwargs: Any) -> ServiceConfig:
        return config_from_mapping(service_settings(tmp_path, **kwargs), environ={})

    return make


@pytest.fixture
def app(make_config: Callable[..., ServiceConfig]) -> Iterator[Flask]:
    application = create_app(make_config())
    application.config["TESTING"] = True
    yield application
    application.extensions["ims_fhir"].outbox.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def rw() -> dict[str, str]:
    return {"Authorization": f"Bearer {RW_TOKEN}"}


def ro() -> dict[str, str]:
    return {"Authorization": f"Bearer {RO_TOKEN}"}
