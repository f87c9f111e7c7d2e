"""Fixtures for the integration layer: the real HAPI FHIR JPA server (R4, in-memory H2).

``fhir_server`` starts one server per test session (build once, then ~20-30 s to start);
``clean_fhir_server`` gives a test an empty server by wiping it with ``$expunge``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ims_fhir.dev import hapi
from ims_fhir.errors import ToolchainError
from ims_fhir.ig import BUILT_PACKAGE

FHIR_JSON = "application/fhir+json"
XDIST_GROUP = "hapi-fhir-server"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of this folder ``integration``; under xdist, keep them on one worker."""
    here = Path(__file__).parent
    with_xdist = config.pluginmanager.hasplugin("xdist")
    for item in items:
        if here not in Path(str(item.path)).parents:
            continue
        item.add_marker(pytest.mark.integration)
        if with_xdist:
            item.add_marker(pytest.mark.xdist_group(name=XDIST_GROUP))


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[hapi.DevServer]:
    """The local HAPI FHIR server, started once per test session; ``.base_url`` is its FHIR base.

    The server validates every write against the IMS IG package shipped with ims-fhir
    (``ims_fhir/ig/ims-fhir-ig.tgz``, passed by path), strictly: see hapi-server's
    ImsIgValidationConfig. Builds the server jar if the cache has none for the current ``hapi-server/`` sources
    (see :mod:`ims_fhir.dev.hapi`), starts it on a free port of 127.0.0.1 and stops it at
    the end of the session. Maven's and the server's output go to ``hapi-build.log`` and
    ``hapi-server.log`` in a pytest temporary directory; when the build or start fails, the
    tests fail (never skip) with the toolchain message and the tail of the log.

    One process: the integration tests share one server and wipe it between tests
    (``clean_fhir_server``), so they are meant to run in a single process, one after the
    other. Under pytest-xdist every worker that receives an integration test would start its
    own JVM (about 1 GB each, too heavy for a 2-core machine) and wipes would race, so
    the tests of this folder carry ``xdist_group("hapi-fhir-server")``: run xdist with
    ``--dist loadgroup`` and they all go to one worker, which starts one server.
    """
    logs = tmp_path_factory.mktemp("hapi-server")
    build_log = logs / "hapi-build.log"
    server_log = logs / "hapi-server.log"
    failure: str | None = None
    try:
        artifact = hapi.build(log_path=build_log)
        server = hapi.start(log_path=server_log, artifact=artifact, ig_package=BUILT_PACKAGE)
    except ToolchainError as exc:
        failure = str(exc)
        if "\n" not in failure:  # start failures already carry the server log's tail
            for log in (build_log, server_log):
                if log.exists():
                    failure += f"\n--- last lines of {log} ---\n{_tail(log)}"
    if failure is not None:  # outside the except: no chained traceback in the report
        pytest.fail(failure, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fhir(fhir_server: hapi.DevServer) -> Iterator[requests.Session]:
    """A requests session for the local server: FHIR JSON both ways, no proxies."""
    with requests.Session() as session:
        session.trust_env = False
        session.headers.update({"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
        yield session


def expunge_everything(base_url: str) -> None:
    """Delete every resource and its history on the server (``$expunge expungeEverything``)."""
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "expungeEverything", "valueBoolean": True}],
    }
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(
            f"{base_url}/$expunge",
            json=body,
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
            timeout=120,
        )
    assert response.status_code == 200, f"$expunge failed: {response.status_code} {response.text[:500]}"


@pytest.fixture
def clean_fhir_server(fhir_server: hapi.DevServer) -> hapi.DevServer:
    """The session's server, emptied with ``$expunge`` before the test."""
    expunge_everything(fhir_server.base_url)
    return fhir_server
