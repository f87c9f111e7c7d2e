"""Send a transaction Bundle to a server that offers ``batch`` but no ``transaction``.

Like :mod:`ims_fhir.client.entrywise`, :func:`send_batchwise` gives such a server the effect
of the transaction ims-fhir builds and answers a ``transaction-response`` Bundle shaped like
a server's, so callers treat every path alike; but it sends a few ``batch`` Bundles per
Bundle instead of one request per resource (over a WAN, round trips are what costs).

Terms
-----
batch
    ``POST [base]`` a Bundle of type ``batch``: the server handles each entry on its own (no
    atomicity) and answers each one in a ``batch-response`` (FHIR R4 3.1.0.11.3). A batch
    resolves nothing between its entries: no ``urn:uuid`` reference to another entry, no
    conditional reference (``Type?identifier=...`` inside a resource); both are replaced by
    ``Type/id`` before the entry is sent.
lookups
    One batch of ``GET`` entries first, only when needed: the conditional references inside
    the resources, and the search that stands in for a conditional create or update the
    server does not declare for that type (then a match is updated by id ``If-Match`` its
    version, no match is created). Several matches are a
    :class:`~ims_fhir.errors.FhirAmbiguousMatchError`, no match for a conditional reference a
    :class:`~ims_fhir.errors.FhirNotFoundError`, as entry by entry.
level
    The entries go in dependency levels: level 0 refers to no other entry (Organization,
    Practitioner, Patient, the ims-fhir Device), level *n* only to entries of lower levels,
    whose ids the earlier batches' answers gave. One batch per level.
cycle, pivot
    As in :mod:`ims_fhir.client.entrywise` (same :func:`~ims_fhir.client.entrywise.plan`):
    a reference cycle (a session's Procedure and its Consent) is broken at one edge; the
    pivot's stub goes in its level, the entries that refer to it follow, and the pivot's
    final update (by id, its full content, ``If-Match`` the version the stub got or found)
    rides with the first level after every entry it refers to. Whether the pivot exists
    already is told by the stub itself when it is a conditional create (``200``: it exists,
    and a conditional create of the entry's own then leaves it alone); where the server has
    no conditional create, by a lookup; a pivot the entry updates by id ``If-Match`` is
    known to exist and gets no stub.
refusals
    An entry the server refuses (4xx) makes :func:`send_batchwise` raise that entry's error
    (typed by its status, with its OperationOutcome) after the batch it was in: its level's
    other entries are stored, later levels are not sent. The caller (the sending engine's
    :class:`~ims_fhir.delivery.TransactionStrategy`) then sends each record's part alone,
    so only the record the refused entry belongs to fails; every step being idempotent, the
    entries already stored are found again, not written twice. A 5xx for an entry is an
    error of the target (raised, not a refusal).
exactly once
    Conditional creates and updates are idempotent, and so are updates by id; a batch that
    holds a plain create (the server has no conditional create for that type) is not resent
    blindly after a timeout (the transport's rule for non-idempotent requests): the next
    attempt looks the resource up first.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ims_fhir.client.capability import ServerCapabilities
from ims_fhir.client.entrywise import NO_CHANGE, _edges, _entry, _outcome, _references, _stub, plan, rewrite_references
from ims_fhir.client.errors import error_class_for_status
from ims_fhir.client.response import EntryResponse, FhirResponse, Resource, parse_location
from ims_fhir.errors import (
    FhirAmbiguousMatchError,
    FhirError,
    FhirServerError,
    UsageError,
    issues_from_outcome,
)

if TYPE_CHECKING:
    from ims_fhir.client.fhir_client import FhirClient

Entry = dict[str, Any]


@dataclass
class _Found:
    """The answer of one lookup: the resources it matched (none, one; several raise)."""

    matches: list[Resource] = field(default_factory=list)

    @property
    def one(self) -> Resource | None:
        return self.matches[0] if self.matches else None


def _is_conditional_reference(target: str) -> bool:
    return "?" in target and not target.startswith(("urn:", "http:", "https:"))


def _matches(answer: Entry, url: str) -> list[Resource]:
    """The matches of a searchset (or the one resource of a read) in a batch-response entry."""
    body = answer.get("resource")
    if not isinstance(body, dict):
        return []
    if body.get("resourceType") != "Bundle":
        return [body]
    found = [e["resource"] for e in body.get("entry") or () if isinstance(e, dict)
             and isinstance(e.get("resource"), dict) and (e.get("search") or {}).get("mode", "match") == "match"
             and e["resource"].get("resourceType") != "OperationOutcome"]
    more = any(link.get("relation") == "next" for link in body.get("link") or () if isinstance(link, dict))
    if len(found) > 1 or (found and more):
        raise FhirAmbiguousMatchError(
            f"{url.partition('?')[0]}?… matches {max(len(found), 2)} or more resources on the server; "
            "expected at most one")
    return found


def _entry_error(what: str, answer: EntryResponse, raw: Entry, *, version_aware: bool) -> FhirServerError:
    response = raw.get("response") if isinstance(raw.get("response"), dict) else {}
    outcome = response.get("outcome") if isinstance(response, dict) else None
    if not isinstance(outcome, dict):
        outcome = raw.get("resource") if isinstance(raw.get("resource"), dict) else None
    issues = issues_from_outcome(outcome)
    text = "; ".join(i.diagnostics for i in issues if i.diagnostics) or str((response or {}).get("status", ""))
    cls = error_class_for_status(answer.status or 500, version_aware=version_aware)
    return cls(f"{what} (batch entry) failed: {text}", status=answer.status or 500, issues=issues,
               outcome=outcome if isinstance(outcome, dict) and outcome.get("resourceType") == "OperationOutcome"
               else None)


class _Batcher:
    def __init__(self, client: FhirClient, capabilities: ServerCapabilities, entries: list[Entry]) -> None:
        self.client = client
        self.capabilities = capabilities
        self.entries = entries
        self.resolved: dict[str, str] = {}  # fullUrl or conditional reference -> Type/id
        self.found: dict[str, _Found] = {}  # lookup URL -> what it found

    def can(self, resource_type: str, what: str) -> bool:
        kind = self.capabilities.types.get(resource_type)
        if kind is None:
            return False
        return kind.conditional_create if what == "create" else kind.conditional_update

    # -- one batch ------------------------------------------------------------------------

    def post(self, requests: list[Entry], *, idempotent: bool) -> list[Entry]:
        """Send one batch; the batch-response entries, one per request, in order."""
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": requests}
        answers = self.client.batch(bundle, idempotent=idempotent).resource or {}
        out = [e if isinstance(e, dict) else {} for e in answers.get("entry") or ()]
        if len(out) != len(requests):
            raise FhirError(f"POST {self.client.base_url} (batch of {len(requests)}) answered {len(out)} entries")
        return out

    # -- lookups --------------------------------------------------------------------------

    def lookups(self, pivots: set[int]) -> None:
        urls: list[str] = []
        for index, entry in enumerate(self.entries):
            for ref in _references(entry.get("resource")):
                if _is_conditional_reference(ref["reference"]):
                    urls.append(ref["reference"])
            url = self.lookup_of(entry, pivot=index in pivots)
            if url is not None:
                urls.append(url)
        wanted = list(dict.fromkeys(u for u in urls if u not in self.found))
        if not wanted:
            return
        answers = self.post([{"request": {"method": "GET", "url": u}} for u in wanted], idempotent=True)
        for url, raw in zip(wanted, answers, strict=True):
            answer = EntryResponse.from_entry(raw)
            if answer.status in (404, 410) and "?" not in url:
                self.found[url] = _Found()
            elif not answer.ok:
                raise _entry_error(f"GET {url.partition('?')[0]}", answer, raw, version_aware=False)
            else:
                self.found[url] = _Found(_matches(raw, url))

    def lookup_of(self, entry: Entry, *, pivot: bool) -> str | None:
        """The lookup an entry needs before it is written, if any (see the module docstring)."""
        request = entry.get("request") or {}
        method, url = str(request.get("method", "")).upper(), str(request.get("url", ""))
        resource_type = entry["resource"]["resourceType"]
        if method == "POST" and request.get("ifNoneExist"):
            if not self.can(resource_type, "create"):
                return f"{resource_type}?{request['ifNoneExist']}"
        elif method == "PUT" and "?" in url:
            # a pivot's stub is a conditional create where the server has one: it tells by itself
            if not self.can(resource_type, "create" if pivot else "update"):
                return url
        elif method == "PUT" and pivot and not request.get("ifMatch"):
            return url  # an If-Match update is of a resource known to exist: no stub, no lookup
        return None

    # -- writing --------------------------------------------------------------------------

    def rewrite(self, resource: Resource) -> Resource:
        return rewrite_references(resource, self.resolved, lambda rtype, query: self.found[f"{rtype}?{query}"].one)

    def request_for(self, entry: Entry, resource: Resource) -> tuple[Entry | None, Entry | None]:
        """(the batch entry that writes ``entry``, or the result it already has without one)."""
        request = entry.get("request") or {}
        method, url = str(request.get("method", "")).upper(), str(request.get("url", ""))
        resource_type = resource["resourceType"]
        if_match = request.get("ifMatch")
        if method == "POST":
            query = request.get("ifNoneExist")
            if query and not self.can(resource_type, "create"):
                existing = self.found[f"{resource_type}?{query}"].one
                if existing is not None:  # a conditional create that matches does nothing
                    return None, _entry(200, resource_type, str(existing["id"]), _version(existing))
                query = None
            wanted = {"method": "POST", "url": resource_type} | ({"ifNoneExist": query} if query else {})
            return {"resource": resource, "request": wanted}, None
        if method == "PUT" and "?" in url:
            if self.can(resource_type, "update"):
                return {"resource": resource, "request": {"method": "PUT", "url": url}}, None
            existing = self.found[url].one
            if existing is None:
                query = url.partition("?")[2]
                wanted = {"method": "POST", "url": resource_type}
                if self.can(resource_type, "create"):
                    wanted["ifNoneExist"] = query
                return {"resource": resource, "request": wanted}, None
            return self.update_by_id(resource, str(existing["id"]), _version(existing)), None
        if method == "PUT":
            resource_id = url.rpartition("/")[2]
            return self.update_by_id(resource, resource_id, if_match), None
        raise UsageError(f"cannot send a {method or '?'} entry in a batch (only POST and PUT)")

    def with_full_url(self, index: int, request: Entry) -> Entry:
        """The entry with a ``fullUrl`` (validators require one on every entry with a resource,
        to resolve relative references): the server's URL of an update by id, else the
        entry's own (its ``urn:uuid``; nothing in a batch refers to it)."""
        if request["request"]["method"] == "PUT" and "?" not in request["request"]["url"]:
            return {"fullUrl": f"{self.client.base_url}/{request['request']['url']}", **request}
        own = self.entries[index].get("fullUrl")
        return {"fullUrl": own, **request} if own else {"fullUrl": f"urn:uuid:{uuid.uuid4()}", **request}

    @staticmethod
    def update_by_id(resource: Resource, resource_id: str, version: str | None) -> Entry:
        request: dict[str, str] = {"method": "PUT", "url": f"{resource['resourceType']}/{resource_id}"}
        if version:
            request["ifMatch"] = version if version.startswith("W/") else f'W/"{version}"'
        return {"resource": resource | {"id": resource_id}, "request": request}

    def write(self, items: list[tuple[int, Entry]]) -> list[tuple[int, Entry]]:
        """Send one level (entry index, batch entry); (index, its response entry) per item.
        Raises the first refused entry's error after the whole batch went."""
        if not items:
            return []
        idempotent = all(req["request"]["method"] == "PUT" or req["request"].get("ifNoneExist") for _, req in items)
        answers = self.post([self.with_full_url(index, req) for index, req in items], idempotent=idempotent)
        out, failure = [], None
        for (index, req), raw in zip(items, answers, strict=True):
            answer = EntryResponse.from_entry(raw)
            if not answer.ok:
                request = req["request"]
                error = _entry_error(f"{request['method']} {request['url'].partition('?')[0]}", answer, raw,
                                     version_aware=bool(request.get("ifMatch")))
                if failure is None or (failure.status or 0) < 500 <= (error.status or 0):
                    failure = error  # a server error (the target's) outranks a refusal
                continue
            response = raw.get("response")
            result = {"response": dict(response) if isinstance(response, dict) else {}}
            full_url = self.entries[index].get("fullUrl")
            where = parse_location(answer.location)
            if full_url and where is not None:
                self.resolved[str(full_url)] = f"{where[0]}/{where[1]}"
            out.append((index, result))
        if failure is not None:
            raise failure
        return out


def _version(resource: Resource) -> str | None:
    version = (resource.get("meta") or {}).get("versionId")
    return str(version) if version else None


def _levels(entries: list[Entry], broken: dict[int, set[int]]) -> list[int]:
    """The dependency level of each entry once the broken edges are left out (module docstring)."""
    needs = [set(e) - broken.get(i, set()) for i, e in enumerate(_edges(entries))]
    order, _ = plan(entries)
    level = [0] * len(entries)
    for index in order:  # every entry after those it needs
        level[index] = 1 + max((level[n] for n in needs[index]), default=-1)
    return level


def send_batchwise(client: FhirClient, bundle: Resource) -> FhirResponse:
    """Apply a transaction Bundle through ``batch`` Bundles (see the module docstring)."""
    entries: list[Entry] = list(bundle.get("entry") or [])
    _, broken = plan(entries)
    batcher = _Batcher(client, client.capabilities(), entries)
    batcher.lookups(set(broken))
    results: list[Entry | None] = [None] * len(entries)
    level = _levels(entries, broken)
    # a pivot's final update goes with the first level after every entry it refers to
    ready = {p: 1 + max([level[t] for t in targets] + [level[p]]) for p, targets in broken.items()}
    finals: dict[int, tuple[str, str | None, bool]] = {}  # pivot -> its id, the version to match, created now
    stubs: set[int] = set()  # pivots written as a stub in their level
    emulated: dict[int, str | None] = {}  # conditional updates done as search + update by id: the version found
    for depth in range(max([*level, *ready.values()], default=-1) + 1):
        items: list[tuple[int, Entry]] = []
        for index, (resource_id, version, _) in finals.items():
            if ready[index] == depth:
                resource = batcher.rewrite(entries[index]["resource"])
                items.append((index, batcher.update_by_id(resource, resource_id, version)))
        for index in [i for i, d in enumerate(level) if d == depth]:
            entry = entries[index]
            if index in broken:
                stub = _pivot(batcher, entry, index, broken, results, finals)
                if stub is not None:
                    stubs.add(index)
                    items.append((index, stub))
                continue
            request, done = batcher.request_for(entry, batcher.rewrite(entry["resource"]))
            if done is not None:
                results[index] = done
                where = parse_location(done["response"].get("location"))
                if entry.get("fullUrl") and where is not None:
                    batcher.resolved[str(entry["fullUrl"])] = f"{where[0]}/{where[1]}"
            elif request is not None:
                items.append((index, request))
                url = str((entry.get("request") or {}).get("url", ""))
                if "?" in url and request["request"]["method"] == "PUT" and "?" not in request["request"]["url"]:
                    emulated[index] = request["request"].get("ifMatch")
        for index, result in batcher.write(items):
            if index in stubs:
                stubs.discard(index)
                _stubbed(batcher, entries[index], index, result, results, finals)
            elif index in finals:
                _, version, created = finals[index]
                if created:
                    result["response"]["status"] = "201 Created"
                results[index] = result if created else _no_change(result, version)
            else:
                results[index] = _no_change(result, emulated[index]) if index in emulated else result
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise FhirError(f"batch delivery left entries {missing} without an answer")
    response_bundle = {"resourceType": "Bundle", "type": "transaction-response", "entry": results}
    return FhirResponse(status=200, resource=response_bundle, url=client.base_url)


def _stubbed(batcher: _Batcher, entry: Entry, index: int, result: Entry, results: list[Entry | None],
             finals: dict[int, tuple[str, str | None, bool]]) -> None:
    """A pivot's stub went through: queue its final update, unless it was a conditional create
    of the entry's own (``POST`` ``ifNoneExist``) that matched a resource already there (which
    a conditional create leaves alone)."""
    where = parse_location(result["response"].get("location"))
    if where is None:
        raise FhirError(f"the stub of entry {index} came back without a location")
    batcher.resolved[str(entry["fullUrl"])] = f"{where[0]}/{where[1]}"
    created = str(result["response"].get("status", "")).startswith("201")
    if not created and str((entry.get("request") or {}).get("method", "")).upper() == "POST":
        results[index] = result
        return
    # A conditional create that matched: HAPI names the version the match was first stored
    # with, not always the current one, so its final update goes without If-Match, as the
    # entry's own conditional update (``PUT Type?query``) would; the server's outcome says
    # whether it changed anything.
    finals[index] = (where[1], where[2] if created else None, created)


def _no_change(result: Entry, version: str | None) -> Entry:
    """An update by id ``If-Match`` ``version`` that kept that version changed nothing: say so
    as a server's conditional update does (the outcome ``unchanged``)."""
    if version is not None and EntryResponse.from_entry(result).version_id == version.removeprefix('W/"').rstrip('"'):
        result["response"]["outcome"] = _outcome(NO_CHANGE, "no change")
    return result


def _pivot(batcher: _Batcher, entry: Entry, index: int, broken: dict[int, set[int]],
           results: list[Entry | None], finals: dict[int, tuple[str, str | None, bool]]) -> Entry | None:
    """The stub request of a pivot, or None when its id is known already (found by the lookups,
    or the entry updates it by id ``If-Match``); then its final update, if any, is queued."""
    request = entry.get("request") or {}
    method, url = str(request.get("method", "")).upper(), str(request.get("url", ""))
    resource_type = entry["resource"]["resourceType"]
    full_url = str(entry["fullUrl"])
    if method not in ("POST", "PUT"):
        raise UsageError(f"cannot send a {method or '?'} entry in a batch (only POST and PUT)")
    if method == "PUT" and "?" not in url and request.get("ifMatch"):
        resource_id = url.rpartition("/")[2]
        batcher.resolved[full_url] = f"{resource_type}/{resource_id}"
        finals[index] = (resource_id, str(request["ifMatch"]), False)
        return None
    lookup = batcher.lookup_of(entry, pivot=True)
    existing = batcher.found[lookup].one if lookup is not None else None
    if existing is not None:
        resource_id = str(existing["id"])
        batcher.resolved[full_url] = f"{resource_type}/{resource_id}"
        if method == "POST":  # a conditional create that matches does nothing
            results[index] = _entry(200, resource_type, resource_id, _version(existing))
        else:
            finals[index] = (resource_id, request.get("ifMatch") or _version(existing), False)
        return None
    targets = {str(batcher.entries[t]["fullUrl"]) for t in broken[index]}
    stub = batcher.rewrite(_stub(entry["resource"], targets))
    if method == "PUT" and "?" not in url:
        return batcher.update_by_id(stub, url.rpartition("/")[2], None)
    query = request.get("ifNoneExist") if method == "POST" else url.partition("?")[2]
    wanted = {"method": "POST", "url": resource_type}
    if query and batcher.can(resource_type, "create"):
        wanted["ifNoneExist"] = query
    return {"resource": stub, "request": wanted}


__all__ = ["send_batchwise"]
