"""Fixtures of the engine tests: a scripted FHIR endpoint on a fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.client.scripted import FakeClock, ScriptedAdapter

from .support import Server, scripted_session


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def adapter(clock: FakeClock) -> ScriptedAdapter:
    return ScriptedAdapter(clock=clock)


@pytest.fixture
def session(adapter: ScriptedAdapter) -> Iterator[requests.Session]:
    yield from scripted_session(adapter)


@pytest.fixture
def server(adapter: ScriptedAdapter) -> Server:
    return Server(adapter)
