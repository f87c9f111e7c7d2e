"""Helpers of the engine tests: real Bundles from the example records, a scripted FHIR endpoint.

The Bundles come from the project's own conversion (the examples, through the same
pipeline ``push`` uses); the server side is :class:`tests.client.scripted.ScriptedAdapter`
answering transactions from a handler (no FHIR server: what a real one does is tested
against HAPI in tests/integration).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import requests

from ims_fhir.client import ClientConfig, FhirClient, RetryPolicy
from ims_fhir.convert import Converter, ConvertOptions
from ims_fhir.identifiers import IdentifierScheme
from tests.client.scripted import BASE, FakeClock, Reply, ScriptedAdapter, outcome
from tests.conftest import EXAMPLES, SOURCE

SCHEME = IdentifierScheme(SOURCE["system_base"])
RECORDS = {(r["record_type"], r["id"]): r for r in (orjson.loads(line) for line in
                                                     (EXAMPLES / "records.ndjson").read_bytes().splitlines())}


def example_records(*keys: tuple[str, str]) -> list[dict[str, Any]]:
    return [RECORDS[k] for k in keys]


def bundles_of(tmp_path: Path, records: list[dict[str, Any]], *, bundle_size: int = 1000) -> list[dict[str, Any]]:
    """The transaction Bundles ``push`` would send for these records."""
    path = tmp_path / f"records-{len(list(tmp_path.iterdir()))}.ndjson"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    conv = Converter(ConvertOptions(out_dir=tmp_path, source=SOURCE, output_format="bundle", bundle_size=bundle_size))
    return [orjson.loads(item) for kind, item in conv.outputs([path]) if kind == "bundle"]


def entry_response(entry: dict[str, Any], status: int = 201, version: str = "1",
                   outcome_code: str | None = None) -> dict[str, Any]:
    resource = entry["resource"]
    server_id = resource.get("id") or entry["fullUrl"].rpartition(":")[2]
    response: dict[str, Any] = {
        "status": f"{status} {'Created' if status == 201 else 'OK'}",
        "location": f"{resource['resourceType']}/{server_id}/_history/{version}",
        "etag": f'W/"{version}"'}
    if outcome_code:
        response["outcome"] = {"resourceType": "OperationOutcome", "issue": [
            {"severity": "information", "code": "informational",
             "details": {"coding": [{"system": "https://hapifhir.io/fhir/CodeSystem/hapi-fhir-storage-response-code",
                                     "code": outcome_code}]}}]}
    return {"response": response}


def transaction_response(bundle: dict[str, Any], answer: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                         ) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction-response",
            "entry": [(answer or entry_response)(e) for e in bundle["entry"]]}


def refusal(status: int, code: str, diagnostics: str, expression: list[str] | None = None) -> Reply:
    return Reply(status, outcome(("error", code, diagnostics, expression)))


Rule = Callable[[dict[str, Any]], "Reply | None"]


class Server:
    """Answers each transaction with the first rule that returns a Reply, else accepts it."""

    def __init__(self, adapter: ScriptedAdapter) -> None:
        self.adapter = adapter
        self.rules: list[Rule] = []
        self.transactions: list[dict[str, Any]] = []
        self.answer: Callable[[dict[str, Any]], dict[str, Any]] = entry_response
        adapter.route("POST", BASE, self._handle)

    def refuse(self, rule: Rule) -> Server:
        self.rules.append(rule)
        return self

    def _handle(self, request: requests.PreparedRequest) -> Reply | BaseException:
        bundle = orjson.loads(request.body or b"{}")
        self.transactions.append(bundle)
        for rule in self.rules:
            reply = rule(bundle)
            if reply is not None:
                return reply
        return Reply(200, transaction_response(bundle, self.answer))


def has(bundle: dict[str, Any], resource_type: str, record: tuple[str, str]) -> bool:
    """Whether the Bundle carries an entry of that type belonging to that record."""
    return any(e["resource"]["resourceType"] == resource_type and SCHEME.record_of(e["resource"]) == record
               for e in bundle["entry"])


def scripted_session(adapter: ScriptedAdapter) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False
        s.mount("https://", adapter)
        yield s


def client_on(session: requests.Session, clock: FakeClock, **retry: Any) -> FhirClient:
    policy = RetryPolicy(**({"max_attempts": 1, "total_budget": 30.0} | retry))
    return FhirClient(ClientConfig(base_url=BASE, retry=policy), session=session, clock=clock.clock())


def urn_references_resolve(bundle: dict[str, Any]) -> bool:
    """Every ``urn:uuid`` reference of the Bundle names an entry of the same Bundle."""
    urls = {e["fullUrl"] for e in bundle["entry"]}
    text = orjson.dumps([e["resource"] for e in bundle["entry"]]).decode()


    return all(ref in urls for ref in re.findall(r'"(urn:uuid:[0-9a-f-]+)"', text))
