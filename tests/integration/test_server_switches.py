"""Servers that support less: the test server with ``--ims.disable=...``, and push adapting.

A hospital server may lack transactions, batches or conditional create/update; the test
server is made to lack them too (nothing else changes): its CapabilityStatement no longer
declares them and using them anyway answers 501 with an OperationOutcome. ``ims-fhir push``
reads the CapabilityStatement and adapts. Two servers (each start costs CI a minute):

- ``per-resource``: neither transaction nor batch: entries one by one in dependency order
  (:mod:`ims_fhir.client.entrywise`);
- ``batch``: no transaction and no conditional update, batch and conditional create kept:
  a few batch Bundles per Bundle, in dependency levels (:mod:`ims_fhir.client.batchwise`),
  conditional creates as batch entries, and for the missing conditional update a search
  (in a batch of lookups) then ``PUT`` by id with ``If-Match``, or a create.

Shown for both: the examples and generated records land exactly once, a second push changes
nothing, and an edited record is updated in place (same id, version 2); with ``--concurrency``,
entry by entry, one Bundle's independent entries go out together, at most ``--concurrency``
at once (its fan-out).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from ims_fhir.dev import hapi as devserver
from ims_fhir.dev.synthetic.cli import main as synthetic_main
from ims_fhir.errors import ToolchainError
from tests.conftest import EXAMPLES, SOURCE, output_resources

from .faultproxy import Fault, FaultProxy, LogEntry, ProxyRequest
from .test_push import counts, search

HEADERS = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
SYSTEM = "https://clinic.example.org/ims/patient"
MODES = {"per-resource": "transaction,batch", "batch": "transaction,conditional-update"}


@pytest.fixture(scope="module", params=sorted(MODES))
def reduced_server(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(mode, FHIR base) of a server started with ``--ims.disable=<MODES[mode]>``."""
    logs = tmp_path_factory.mktemp(f"reduced-{request.param}")
    failure = None
    try:
        artifact = devserver.build(log_path=logs / "build.log")
        server = devserver.start(log_path=logs / "hapi.log", artifact=artifact,
                                 server_args=[f"--ims.disable={MODES[request.param]}"])
    except ToolchainError as exc:
        failure = str(exc)
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    try:
        yield request.param, server.base_url
    finally:
        server.stop()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False
        s.headers.update(HEADERS)
        yield s


def patient(value: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}], "gender": "unknown"}


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def test_capability_statement_no_longer_declares_them(reduced_server: tuple[str, str], http: requests.Session) -> None:
    mode, base = reduced_server
    statement = http.get(f"{base}/metadata", timeout=60).json()
    (rest,) = statement["rest"]
    interactions = {i["code"] for i in rest.get("interaction", [])}
    patient_type = next(r for r in rest["resource"] if r["type"] == "Patient")
    # HAPI serves batches without declaring them (the client asks with a batch of one search); the
    # switch only ever removes the interaction
    assert "transaction" not in interactions and "batch" not in interactions
    if mode == "per-resource":
        assert patient_type["conditionalUpdate"] is True
    else:
        assert patient_type["conditionalCreate"] is True and patient_type["conditionalUpdate"] is False


def test_using_them_anyway_is_501_with_an_operation_outcome(
        reduced_server: tuple[str, str], http: requests.Session) -> None:
    mode, base = reduced_server
    value = f"sw-{mode}"
    entry = {"resource": patient(value), "request": {"method": "POST", "url": "Patient"}}
    refused = [http.post(base, json=bundle("transaction", entry), timeout=60)]
    if mode == "per-resource":
        refused.append(http.post(base, json=bundle("batch", entry), timeout=60))
    else:
        refused += [
            http.put(f"{base}/Patient", params={"identifier": f"{SYSTEM}|{value}"}, json=patient(value), timeout=60),
            http.post(base, timeout=60, json=bundle("batch", {"resource": patient(value), "request": {
                "method": "PUT", "url": f"Patient?identifier={SYSTEM}|{value}"}})),
        ]
    for response in refused:
        assert response.status_code == 501, response.text[:300]
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert "disabled on this server" in outcome["issue"][0]["diagnostics"]
    hits = http.get(f"{base}/Patient", params={"identifier": f"{SYSTEM}|{value}"}, timeout=60).json()
    assert hits.get("total", 0) == 0  # nothing of it was stored
    # what stays enabled still works
    if mode == "per-resource":
        created = http.put(f"{base}/Patient", params={"identifier": f"{SYSTEM}|{value}-b"}, json=patient(value + "-b"),
                           timeout=60)
        assert created.status_code == 201, created.text[:300]
    else:
        batch = http.post(base, timeout=60, json=bundle("batch", {"resource": patient(value + "-b"), "request": {
            "method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|{value}-b"}}))
        assert batch.status_code == 200 and batch.json()["entry"][0]["response"]["status"].startswith("201")


def _expected(run_cli: Any, tmp_path: Path, source: Path, *extra: str) -> dict[str, int]:
    out = tmp_path / f"expected-{source.stem}"
    assert run_cli("convert", source, "--out", out, *extra).code == 0
    return {t: len(rs) for t, rs in output_resources(out).items()}


def test_push_adapts_exactly_once_idempotent_edits_in_place(
        reduced_server: tuple[str, str], run_cli: Any, tmp_path: Path) -> None:
    _, base = reduced_server
    empty = counts(base)  # the test before may have left a Patient or two of its own
    first = run_cli("push", EXAMPLES / "clinic.json", "--server", base, "--json")
    assert first.code == 0, first.err
    summary = orjson.loads(first.out)
    assert summary["failed_records"] == 0 and summary["created"] > 200
    expected = _expected(run_cli, tmp_path, EXAMPLES / "clinic.json")
    added = {t: counts(base)[t] - empty[t] for t in expected}
    assert added == expected

    second = orjson.loads(run_cli("push", EXAMPLES / "clinic.json", "--server", base, "--json").out)
    # the identity map knows every resource and its content: nothing is even sent
    assert second["created"] == 0 and second["updated"] == 0 and second["sent"] == 0
    assert {t: counts(base)[t] - empty[t] for t in expected} == expected
    # without the map everything is sent again (one by one, or in batches): found, written with no
    # change. The Procedure and its Consent refer to each other (a cycle): the Procedure is found
    # first, its final update changes nothing
    fresh = orjson.loads(run_cli("push", EXAMPLES / "clinic.json", "--server", base, "--json",
                                 "--state", tmp_path / "fresh-state.sqlite").out)
    assert fresh["created"] == 0 and fresh["updated"] == 0 and fresh["failed_records"] == 0
    assert fresh["sent"] > 200 and fresh["by_type"]["Procedure"] == {"unchanged": expected["Procedure"]}
    assert {t: counts(base)[t] - empty[t] for t in expected} == expected

    doc = orjson.loads((EXAMPLES / "clinic.json").read_bytes())
    treatment = doc["treatments"][0]
    (procedure,) = search(base, "Procedure", identifier=f"{SOURCE['system_base']}/treatment|{treatment['id']}")
    treatment["notes"] = "Edited after the session, pushed to a server that supports less."
    edited = tmp_path / "edited.json"
    edited.write_bytes(orjson.dumps({**doc, "treatments": [treatment]}))
    third = orjson.loads(run_cli("push", edited, "--server", base, "--json").out)
    assert third["by_type"]["Procedure"] == {"updated": 1}
    (after,) = search(base, "Procedure", identifier=f"{SOURCE['system_base']}/treatment|{treatment['id']}")
    assert after["id"] == procedure["id"] and after["meta"]["versionId"] == str(int(procedure["meta"]["versionId"]) + 1)


def test_generated_records_land_exactly_once(reduced_server: tuple[str, str], run_cli: Any, tmp_path: Path) -> None:
    mode, base = reduced_server
    export = tmp_path / "generated.json"
    assert synthetic_main(["export", "--patients", "6", "--seed", "41", "--format", "json", "--out", str(export)]) == 0
    with FaultProxy(base) as proxy:  # passes everything; its log shows how push talked to the server
        report = tmp_path / "report.ndjson"
        pushed = run_cli("push", export, "--server", proxy.base_url, "--json", "--bundle-size", "40",
                         "--report", report)
        assert pushed.code == 0, pushed.err + (report.read_text()[:2000] if report.exists() else "")
        first = orjson.loads(pushed.out)
        assert first["failed_records"] == 0
        after_first = counts(base)
        writes = [e for e in proxy.log if e.method in ("POST", "PUT")]
        to_base = [e for e in writes if proxy.is_transaction(ProxyRequest(e.index, e.method, e.path, {}, b""))]
        if mode == "batch":  # batch Bundles only, a few per Bundle: far fewer requests than resources
            assert writes and to_base == writes
            assert len(proxy.log) * 3 < first["sent"], (len(proxy.log), first["sent"])
        else:  # one request per resource (a batch was tried once per client, and refused)
            assert all(e.upstream_status == 501 for e in to_base) and len(writes) - len(to_base) >= first["sent"]
        again = orjson.loads(run_cli("push", export, "--server", proxy.base_url, "--json").out)
    assert again["created"] == 0 and again["updated"] == 0 and again["failed_records"] == 0
    assert counts(base) == after_first
    # Exactly one resource per business identifier (ids may coincide with the examples'
    # records pushed before: those are then updated, never duplicated).
    out = tmp_path / "generated-out"
    assert run_cli("convert", export, "--out", out).code == 0
    for rtype in ("Patient", "Procedure", "Encounter"):
        for resource in output_resources(out)[rtype]:
            ident = resource["identifier"][0]
            hits = search(base, rtype, identifier=f"{ident['system']}|{ident['value']}")
            assert len(hits) == 1, (rtype, ident)


def _most_in_flight(log: list[LogEntry]) -> int:
    """The most requests the proxy held at once (arrival to answer)."""
    events = sorted([(e.at, 1) for e in log] + [(e.answered, -1) for e in log], key=lambda t: (t[0], t[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_one_bundle_fans_out_within_concurrency_exactly_once(
        reduced_server: tuple[str, str], run_cli: Any, tmp_path: Path) -> None:
    """One Bundle of two patients over a slow link: entry by entry, its entries that do not
    wait for each other go out together, and so do its two patients' parts, never more than
    N x min(N, 8) requests at once (``--concurrency`` N); exactly once all the same."""
    mode, base = reduced_server
    export = tmp_path / "one-bundle.json"
    assert synthetic_main(["export", "--patients", "2", "--seed", "77", "--format", "json", "--out", str(export)]) == 0
    with FaultProxy(base) as proxy:
        proxy.inject(Fault.delay(0.05), times=100_000)  # 50 ms on every request: overlaps show
        pushed = run_cli("push", export, "--server", proxy.base_url, "--json", "--bundle-size", "1000",
                         "--concurrency", "3", "--state", tmp_path / "state.sqlite")
        assert pushed.code == 0, pushed.err
        first = orjson.loads(pushed.out)
        assert first["bundles"] == 1 and first["failed_records"] == 0 and first["conflicts"] == 0, first
        most = _most_in_flight(proxy.log)
    assert most <= 3 * 3, most
    if mode == "per-resource":  # one request per entry: independent entries, and both patients, overlap
        assert most > 3, most
    after_first = counts(base)
    again = orjson.loads(run_cli("push", export, "--server", base, "--json", "--concurrency", "3",
                                 "--state", tmp_path / "state.sqlite").out)
    assert again["created"] == 0 and again["updated"] == 0 and again["failed_records"] == 0, again
    assert counts(base) == after_first
    out = tmp_path / "out"
    assert run_cli("convert", export, "--out", out).code == 0
    for rtype in ("Patient", "Procedure", "Observation", "Consent"):
        for resource in output_resources(out)[rtype]:
            ident = resource["identifier"][0]
            assert len(search(base, rtype, identifier=f"{ident['system']}|{ident['value']}")) == 1, (rtype, ident)
