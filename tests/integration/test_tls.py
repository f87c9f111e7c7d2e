"""TLS as hospitals run it: a private CA, and mutual TLS with a client certificate.

A TLS-terminating proxy (the fault proxy with a server certificate from a CA made at test
time) stands in front of the real HAPI server, as a hospital's gateway would. Shows:
``push`` and ``pull`` work with the hospital's CA as ``--ca-bundle`` and fail with one line,
exit 2, without it or with the wrong CA; behind a gateway that demands a client
certificate, they fail without one and work with ``--client-cert``/``--client-key``; the
sync service's target takes the same settings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from ims_fhir.dev.hapi import DevServer
from ims_fhir.sync import SyncWorker
from ims_fhir_service import create_app
from ims_fhir_service.config import config_from_mapping
from tests.conftest import EXAMPLES
from tests.service.conftest import rw, service_settings

from .faultproxy import FaultProxy
from .pki import Pki, make_pki, server_context

CLINIC = EXAMPLES / "clinic.json"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def one_error_line(result: Any) -> str:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ims-fhir: error: "), result.err
    return str(lines[0])


def test_private_ca_bundle(run_cli: Any, clean_fhir_server: DevServer, pki: Pki, tmp_path: Path) -> None:
    with FaultProxy(clean_fhir_server.base_url, tls=server_context(pki, require_client_cert=False)) as gateway:
        assert gateway.base_url.startswith("https://127.0.0.1:")
        untrusted = run_cli("push", CLINIC, "--server", gateway.base_url)
        assert untrusted.code == 2
        assert "TLS error" in one_error_line(untrusted) and "CERTIFICATE_VERIFY_FAILED" in untrusted.err
        wrong_ca = run_cli("pull", "--server", gateway.base_url, "--ca-bundle", pki.other_ca,
                           "--out", tmp_path / "x.ndjson")
        assert wrong_ca.code == 2 and "TLS error" in one_error_line(wrong_ca)

        pushed = run_cli("push", CLINIC, "--server", gateway.base_url, "--ca-bundle", pki.ca, "--json")
        assert pushed.code == 0, pushed.err
        assert orjson.loads(pushed.out)["created"] > 100
        pulled = run_cli("pull", "--server", gateway.base_url, "--ca-bundle", pki.ca, "--out", tmp_path / "p.ndjson")
        assert pulled.code == 0, pulled.err
        assert (tmp_path / "p.ndjson").read_bytes().count(b"\n") > 20


def test_mutual_tls_needs_the_client_certificate(
        run_cli: Any, clean_fhir_server: DevServer, pki: Pki, tmp_path: Path) -> None:
    with FaultProxy(clean_fhir_server.base_url, tls=server_context(pki, require_client_cert=True)) as gateway:
        anonymous = run_cli("push", CLINIC, "--server", gateway.base_url, "--ca-bundle", pki.ca)
        assert anonymous.code == 2
        one_error_line(anonymous)
        assert not [e for e in gateway.log if e.action == "pass"]  # nothing got through the gateway

        pushed = run_cli("push", CLINIC, "--server", gateway.base_url, "--ca-bundle", pki.ca,
                         "--client-cert", pki.client, "--client-key", pki.client_key, "--json")
        assert pushed.code == 0, pushed.err
        pulled = run_cli("pull", "--server", gateway.base_url, "--ca-bundle", pki.ca, "--client-cert", pki.client,
                         "--client-key", pki.client_key, "--out", tmp_path / "p.ndjson")
        assert pulled.code == 0, pulled.err


def test_service_target_with_private_ca_and_client_certificate(
        clean_fhir_server: DevServer, pki: Pki, tmp_path: Path) -> None:
    with FaultProxy(clean_fhir_server.base_url, tls=server_context(pki, require_client_cert=True)) as gateway:
        target = {"name": "hospital", "base_url": gateway.base_url, "timeout": 120, "retry_budget": 60,
                  "max_attempts": 3, "ca_bundle": str(pki.ca), "client_cert": str(pki.client),
                  "client_key": str(pki.client_key)}
        settings = service_settings(tmp_path, targets=[target], worker={"lease_seconds": 300})
        app = create_app(config_from_mapping(settings, environ={}))
        client = app.test_client()
        body = (EXAMPLES / "records.ndjson").read_bytes()
        assert client.post("/records", data=body, headers=rw(), content_type="application/x-ndjson").status_code == 202
        st = app.extensions["ims_fhir"]
        worker = SyncWorker(st.outbox, list(st.config.targets), st.organization, st.config.worker)
        deadline = time.monotonic() + 240
        try:
            while st.outbox.pending():
                assert time.monotonic() < deadline
                if not worker.run_once():
                    time.sleep(0.1)
        finally:
            worker.close()
        depth = {s: n for (t, s), n in st.outbox.stats().depth.items()}
        assert depth == {"synced": 26}
        assert [e for e in gateway.log if e.action == "pass"]
