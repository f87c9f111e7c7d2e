"""Send a transaction Bundle to a server that lacks transactions, one entry at a time.

Hospital servers differ: some have no ``transaction`` interaction, some no conditional
update or create. :func:`send_entrywise` gives such a server the same effect as the
transaction ims-fhir builds, with individual requests, and answers a
``transaction-response`` Bundle shaped like a server's (status, location, etag, outcome per
entry), so callers treat both paths alike.

Terms
-----
dependency order
    An entry is sent after every entry it refers to by ``urn:uuid`` (its ``fullUrl``); the
    references are then rewritten to the ``Type/id`` the server gave. A cycle is a usage
    error (ims-fhir's Bundles have none).
conditional reference
    ``Observation?identifier=sys|val`` inside a resource: resolved by a search, which must
    find exactly one match (servers resolve these only inside transactions).
steps
    ``POST`` with ``ifNoneExist``: a conditional create when the server declares
    ``conditionalCreate``, otherwise a search by the query and a plain create only when
    nothing matches. ``PUT Type?query``: a conditional update when declared, otherwise a
    search: one match is updated by id with ``If-Match`` its version (a concurrent change
    answers 412 and is searched again, once), no match is created (conditionally if the
    server can). ``PUT Type/id``: an update. Several matches are a
    :class:`~ims_fhir.errors.FhirAmbiguousMatchError`.
exactly once
    Every step is idempotent: re-sending the whole Bundle after a failure finds what the
    earlier attempt stored (search or conditional create) and changes nothing twice. A
    plain create (no conditional create on the server) is never retried blindly: the
    transport does not resend it after a timeout, and the next attempt searches first.
    Not atomic: entries before a refused one stay stored, as separate requests must.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ims_fhir.client.capability import ServerCapabilities
from ims_fhir.client.response import FhirResponse, Resource, parse_location
from ims_fhir.errors import FhirAmbiguousMatchError, FhirConflictError, FhirNotFoundError, UsageError

if TYPE_CHECKING:
    from ims_fhir.client.fhir_client import FhirClient

NO_CHANGE = "SUCCESSFUL_UPDATE_NO_CHANGE"
_HAPI_CODES = "https://hapifhir.io/fhir/CodeSystem/hapi-fhir-storage-response-code"


def _references(node: Any) -> Iterator[dict[str, Any]]:
    """Every Reference-like object (a dict with a string ``reference``) inside ``node``."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def dependency_order(entries: list[dict[str, Any]]) -> list[int]:
    """Indices of ``entries`` so that each comes after the entries it refers to by fullUrl."""
    by_url = {e.get("fullUrl"): i for i, e in enumerate(entries) if e.get("fullUrl")}
    needs = [
        sorted({by_url[r["reference"]] for r in _references(e.get("resource")) if r["reference"] in by_url} - {i})
        for i, e in enumerate(entries)
    ]
    order: list[int] = []
    state = [0] * len(entries)  # 0 new, 1 on the stack, 2 done
    for start in range(len(entries)):
        if state[start]:
            continue
        stack: list[tuple[int, int]] = [(start, 0)]
        state[start] = 1
        while stack:
            node, at = stack[-1]
            if at < len(needs[node]):
                stack[-1] = (node, at + 1)
                nxt = needs[node][at]
                if state[nxt] == 1:
                    raise UsageError("the Bundle's entries refer to each other in a cycle; cannot send them one by one")
                if state[nxt] == 0:
                    state[nxt] = 1
                    stack.append((nxt, 0))
            else:
                stack.pop()
                state[node] = 2
                order.append(node)
    return order


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{
        "severity": "information", "code": "informational", "diagnostics": text,
        "details": {"coding": [{"system": _HAPI_CODES, "code": code}]}}]}


def _entry(status: int, resource_type: str, resource_id: str | None, version: str | None,
           outcome: dict[str, Any] | None = None) -> dict[str, Any]:
    reason = {200: "OK", 201: "Created"}.get(status, "")
    response: dict[str, Any] = {"status": f"{status} {reason}".strip()}
    if resource_id:
        response["location"] = f"{resource_type}/{resource_id}" + (f"/_history/{version}" if version else "")
    if version:
        response["etag"] = f'W/"{version}"'
    if outcome is not None:
        response["outcome"] = outcome
    return {"response": response}


class _Sender:
    def __init__(self, client: FhirClient, capabilities: ServerCapabilities) -> None:
        self.client = client
        self.capabilities = capabilities
        self.resolved: dict[str, str] = {}  # fullUrl or conditional reference -> Type/id

    def can(self, resource_type: str, what: str) -> bool:
        kind = self.capabilities.types.get(resource_type)
        if kind is None:
            return False
        return kind.conditional_create if what == "create" else kind.conditional_update

    def matches(self, resource_type: str, query: str) -> list[Resource]:
        found = list(self.client.search(resource_type, query, no_cache=True))
        if len(found) > 1:
            raise FhirAmbiguousMatchError(
                f"{resource_type}?{query} matches {len(found)} resources on the server; expected at most one")
        return found

    def rewrite(self, resource: Resource) -> Resource:
        resource = copy.deepcopy(resource)
        for ref in _references(resource):
            target = ref["reference"]
            if target in self.resolved:
                ref["reference"] = self.resolved[target]
            elif "?" in target and not target.startswith(("urn:", "http:", "https:")):
                resource_type, _, query = target.partition("?")
                found = self.matches(resource_type, query)
                if not found:
                    raise FhirNotFoundError(f"reference {resource_type}?… matches nothing on the server",
                                            status=404)
                self.resolved[target] = ref["reference"] = f"{resource_type}/{found[0]['id']}"
        return resource

    def send(self, entry: dict[str, Any]) -> dict[str, Any]:
        request = entry.get("request") or {}
        method = str(request.get("method", "")).upper()
        url = str(request.get("url", ""))
        resource = self.rewrite(entry["resource"])
        resource_type = resource["resourceType"]
        if method == "POST":
            result = self.create(resource, request.get("ifNoneExist"))
        elif method == "PUT" and "?" in url:
            result = self.update_matching(resource, url.partition("?")[2])
        elif method == "PUT":
            resource_id = url.rpartition("/")[2]
            response = self.client.update(resource | {"id": resource_id}, prefer="OperationOutcome")
            result = self._from(response, resource_type, resource_id)
        else:
            raise UsageError(f"cannot send a {method or '?'} entry one by one (only POST and PUT)")
        location = result["response"].get("location", "")
        if entry.get("fullUrl") and location:
            self.resolved[entry["fullUrl"]] = "/".join(location.split("/")[:2])
        return result

    def create(self, resource: Resource, if_none_exist: str | None) -> dict[str, Any]:
        resource_type = resource["resourceType"]
        if if_none_exist and self.can(resource_type, "create"):
            return self._from(self.client.create(resource, if_none_exist=if_none_exist), resource_type)
        if if_none_exist:
            found = self.matches(resource_type, if_none_exist)
            if found:
                meta = found[0].get("meta") or {}
                return _entry(200, resource_type, found[0].get("id"), meta.get("versionId"))
        return self._from(self.client.create(resource), resource_type)

    def update_matching(self, resource: Resource, query: str) -> dict[str, Any]:
        resource_type = resource["resourceType"]
        if self.can(resource_type, "update"):
            response = self.client.conditional_update(resource_type, query, resource, prefer="OperationOutcome")
            return self._from(response, resource_type)
        for attempt in (1, 2):
            found = self.matches(resource_type, query)
            if not found:
                return self.create(resource, query)
            current = found[0]
            before = (current.get("meta") or {}).get("versionId")
            try:
                response = self.client.update(resource | {"id": current["id"]}, if_match=before,
                                              prefer="OperationOutcome")
            except FhirConflictError as exc:
                if exc.status == 412 and attempt == 1:
                    continue  # changed meanwhile: look again
                raise
            result = self._from(response, resource_type, current["id"])
            if before is not None and response.version_id == before:
                result["response"]["outcome"] = _outcome(NO_CHANGE, "no change")
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _from(response: FhirResponse, resource_type: str, resource_id: str | None = None) -> dict[str, Any]:
        """The entry response of one write. After an update HAPI names the stored version in
        ``Content-Location`` only (no ``Location``), so that is read too."""
        body = response.resource if response.resource and response.resource.get("resourceType") == "OperationOutcome" \
            else None
        where = parse_location(response.location) or parse_location(response.content_location)
        found_id = response.resource_id or (where[1] if where else None) or resource_id
        version = response.version_id or (where[2] if where else None)
        return _entry(response.status, (where[0] if where else None) or resource_type, found_id, version, body)


def send_entrywise(client: FhirClient, bundle: Resource) -> FhirResponse:
    """Apply a transaction Bundle with individual requests (see the module docstring)."""
    entries = list(bundle.get("entry") or [])
    sender = _Sender(client, client.capabilities())
    results: list[dict[str, Any] | None] = [None] * len(entries)
    for index in dependency_order(entries):
        results[index] = sender.send(entries[index])
    response_bundle = {"resourceType": "Bundle", "type": "transaction-response", "entry": results}
    return FhirResponse(status=200, resource=response_bundle, url=client.base_url)


__all__ = ["NO_CHANGE", "dependency_order", "send_entrywise"]
