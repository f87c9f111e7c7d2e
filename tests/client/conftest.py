"""Fixtures for the client unit tests: a session with a scripted adapter and a fake clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from ims_fhir.client import ClientConfig, FhirClient, RetryPolicy

from .scripted import BASE, FakeClock, ScriptedAdapter


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def adapter(clock: FakeClock) -> ScriptedAdapter:
    return ScriptedAdapter(clock=clock)


@pytest.fixture
def session(adapter: ScriptedAdapter) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # no proxy or CA settings from the environment in unit tests
        s.mount("https://", adapter)
        s.mount("http://", adapter)
        yield s


@pytest.fixture
def make_client(session: requests.Session, clock: FakeClock) -> Callable[..., FhirClient]:
    """Build a FhirClient on the scripted session; keyword arguments go to ClientConfig."""

    def make(**overrides: Any) -> FhirClient:
        values: dict[str, Any] = {"base_url": BASE, "retry": RetryPolicy(max_attempts=4, total_budget=60.0)}
        values.update(overrides)
        return FhirClient(ClientConfig(**values), session=session, clock=clock.clock())

    return make


@pytest.fixture
def client(make_client: Callable[..., FhirClient]) -> FhirClient:
    return make_client()
