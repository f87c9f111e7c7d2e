"""Fixtures for the integration layer: the real HAPI FHIR JPA server (R4, in-memory H2).

``fhir_server`` starts one server per test session (build once, then ~20-30 s to start);
``clean_fhir_server`` gives a test an empty server by wiping it with ``$expunge``;
``smart_setup`` starts Keycloak and a second HAPI server that requires Keycloak's tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import requests

from ims_fhir.dev import hapi
from ims_fhir.dev import keycloak as devkeycloak
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


# --------------------------------------------------------------------------- SMART: Keycloak + protected HAPI

REALM_FILE = Path(__file__).parent / "keycloak" / "realm.json"
SMART_AUDIENCE = "ims-fhir-test-server"


@dataclass
class SmartSetup:
    """Keycloak with the test realm, and a HAPI server that requires its tokens.

    ``key_dir`` holds ``private-key.pem`` and ``jwks.json`` made by ``ims-fhir keys
    generate``; the JWKS is registered on ``client_id`` in the realm (``jwks.string``), as
    a hospital would register a clinic's.
    """

    keycloak: devkeycloak.KeycloakServer
    server: hapi.DevServer
    realm: str
    client_id: str
    key_dir: Path

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def key_file(self) -> Path:
        return self.key_dir / "private-key.pem"

    def auth(self, scopes: str | None = None, *, key_file: Path | None = None) -> str:
        spec = f"smart:{self.client_id}:{key_file or self.key_file}"
        return spec + (f":{scopes}" if scopes else "")


@pytest.fixture(scope="session")
def smart_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmartSetup]:
    """Keycloak (dev mode) and a SMART-protected HAPI, started once per session, side by side.

    Keycloak comes from Maven Central on first use (~165 MB, cached in
    ~/.cache/ims-fhir/keycloak) and takes 30-90 s to start (more on its first start, which
    "augments" the distribution); the HAPI server starts in parallel with
    ``--ims.auth.issuer``/``--ims.auth.audience``. Missing Java 21 or Maven fails the tests.
    """
    from ims_fhir.cli import main as cli_main

    logs = tmp_path_factory.mktemp("smart")
    key_dir = logs / "clinic-keys"
    assert cli_main(["keys", "generate", "--out", str(key_dir), "--alg", "ES384"]) == 0
    realm = orjson.loads(REALM_FILE.read_bytes())
    client_id = realm["clients"][0]["clientId"]
    realm["clients"][0]["attributes"]["jwks.string"] = (key_dir / "jwks.json").read_text(encoding="utf-8")

    failure: str | None = None
    keycloak: devkeycloak.KeycloakServer | None = None
    server: hapi.DevServer | None = None
    kc_port = hapi.free_port()
    issuer = f"http://{hapi.HOST}:{kc_port}/realms/{realm['realm']}"
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = pool.submit(devkeycloak.start, kc_port, log_path=logs / "keycloak.log")
        try:
            artifact = hapi.build(log_path=logs / "hapi-build.log")
            server = hapi.start(log_path=logs / "hapi-smart.log", artifact=artifact, server_args=[
                f"--ims.auth.issuer={issuer}", f"--ims.auth.audience={SMART_AUDIENCE}"])
        except ToolchainError as exc:
            failure = f"protected HAPI server: {exc}"
        try:
            keycloak = started.result()
            keycloak.import_realm(realm)
        except ToolchainError as exc:
            failure = (failure + "\n" if failure else "") + f"Keycloak: {exc}"
    if failure is not None:
        for running in (server, keycloak):
            if running is not None:
                running.stop()
        pytest.fail(failure, pytrace=False)
    assert keycloak is not None and server is not None
    try:
        yield SmartSetup(keycloak, server, realm["realm"], client_id, key_dir)
    finally:
        server.stop()
        keycloak.stop()
