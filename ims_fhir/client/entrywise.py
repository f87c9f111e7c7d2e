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
    references are then rewritten to the ``Type/id`` the server gave.
cycle, pivot
    Entries may refer to each other in a cycle (a session's Procedure names its Consent in
    the ``ims-session-consent`` extension, the Consent names the Procedure in
    ``Consent.provision.data``); a transaction resolves that at once, single requests cannot.
    A cycle is broken at one reference (an *edge*); the entry holding it is the *pivot*. The
    pivot is written first without the references of the broken edges (its *stub*), the
    others follow and refer to its id, and at the end the pivot is updated by id with its
    full content, ``If-Match`` the version the stub got. When the pivot already exists on the
    server (found by its search, ``ifNoneExist`` or read by id) no stub is written: its id is
    known, and the final update changes nothing if nothing changed. So the server ends with
    what the transaction gives and a second push writes nothing new. A push that fails
    between the stub and the final update leaves the stub; the next push finds it and
    completes it. A concurrent change between the two answers a version conflict.
choice of the edge
    Generic code does not know the profiles' cardinalities, so the edge is chosen by where
    its reference sits, best first: inside an ``extension`` (extensions are optional unless a
    profile requires one; the stub drops that extension, the outermost one when nested); a
    Reference that also has an ``identifier`` (the stub keeps only the identifier, every
    element stays present); inside a repeating element (the stub drops that list item);
    anything else (the stub drops the element). Ties go to the entry first in the Bundle. A
    ``modifierExtension`` is never preferred: leaving one out changes what the stub means.
    For a session that is the Procedure's ``ims-session-consent`` extension (0..1 in the
    IG); ``Consent.provision.data`` is the Consent's only link to its session.
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
fan-out
    With ``--concurrency N`` (N Bundles in flight for the target, see
    :mod:`ims_fhir.client.throttle`), entries of one Bundle that do not wait for each other
    are sent together, up to N (at most :data:`~ims_fhir.client.throttle.MAX_FAN_OUT`) at
    once: an entry is sent once every entry it refers to is answered (and an earlier entry
    whose conditional request matches one of its conditional references). A Bundle is the
    unit a transaction would have been; one resource per round trip would leave the server
    idle behind a slow link. At most N x min(N, 8) requests of the target are on the wire
    (the throttle's request slots), however many Bundle parts the push has in flight
    (``ims_fhir.push``: to such a server it sends each patient's part of a Bundle on its own,
    several at once). The first refused entry stops the entries not
    yet sent; the ones on the wire are answered first. Pivots are completed at the end, one by
    one, as without fan-out. With concurrency 1, one request at a time, in dependency order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from ims_fhir.client.capability import ServerCapabilities
from ims_fhir.client.response import FhirResponse, Resource, parse_location
from ims_fhir.errors import FhirAmbiguousMatchError, FhirConflictError, FhirNotFoundError, UsageError

if TYPE_CHECKING:
    from ims_fhir.client.fhir_client import FhirClient

NO_CHANGE = "SUCCESSFUL_UPDATE_NO_CHANGE"
#: the most entries of one Bundle on the wire at once (one connection pool serves them)
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


def _reference_paths(node: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], dict[str, Any]]]:
    """(path, Reference) for every Reference-like object inside ``node``; a path is keys and list indices."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield path, node
        for key, value in node.items():
            yield from _reference_paths(value, (*path, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _reference_paths(item, (*path, index))


def _rank(path: tuple[str | int, ...], ref: dict[str, Any]) -> int:
    """How good a place to break a cycle this reference is (lower is better; see "choice of the edge")."""
    if "extension" in path:
        return 0
    if ref.get("identifier"):
        return 1
    if any(isinstance(step, int) for step in path):
        return 2
    return 3


def _edges(entries: list[dict[str, Any]]) -> list[dict[int, int]]:
    """For each entry, the entries it refers to by fullUrl -> the best rank of those references."""
    by_url = {e.get("fullUrl"): i for i, e in enumerate(entries) if e.get("fullUrl")}
    edges: list[dict[int, int]] = []
    for i, entry in enumerate(entries):
        found: dict[int, int] = {}
        for path, ref in _reference_paths(entry.get("resource")):
            target = by_url.get(ref["reference"])
            if target is not None and target != i:
                found[target] = min(found.get(target, 99), _rank(path, ref))
        edges.append(found)
    return edges


def _find_cycle(needs: list[list[int]]) -> list[int] | None:
    """The entries of one cycle in ``needs`` (in order, each needing the next), or ``None``;
    else ``needs`` is acyclic."""
    state = [0] * len(needs)  # 0 new, 1 on the stack, 2 done
    for start in range(len(needs)):
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
                    nodes = [n for n, _ in stack]
                    return nodes[nodes.index(nxt):]
                if state[nxt] == 0:
                    state[nxt] = 1
                    stack.append((nxt, 0))
            else:
                stack.pop()
                state[node] = 2
    return None


def _postorder(needs: list[list[int]]) -> list[int]:
    order: list[int] = []
    done = [False] * len(needs)

    def visit(start: int) -> None:
        stack: list[tuple[int, int]] = [(start, 0)]
        done[start] = True
        while stack:
            node, at = stack[-1]
            if at < len(needs[node]):
                stack[-1] = (node, at + 1)
                nxt = needs[node][at]
                if not done[nxt]:
                    done[nxt] = True
                    stack.append((nxt, 0))
            else:
                stack.pop()
                order.append(node)

    for start in range(len(needs)):
        if not done[start]:
            visit(start)
    return order


def plan(entries: list[dict[str, Any]]) -> tuple[list[int], dict[int, set[int]]]:
    """(order, broken): indices of ``entries`` so that each comes after the entries it refers
    to by fullUrl, once the edges in ``broken`` (pivot -> the entries whose references its
    stub leaves out) are removed; see "cycle, pivot" in the module docstring."""
    edges = _edges(entries)
    broken: dict[int, set[int]] = {}
    while True:
        needs = [sorted(e) for e in edges]
        cycle = _find_cycle(needs)
        if cycle is None:
            return _postorder(needs), broken
        pairs = [(cycle[k], cycle[(k + 1) % len(cycle)]) for k in range(len(cycle))]
        source, target = min(pairs, key=lambda p: (edges[p[0]][p[1]], p[0], p[1]))
        del edges[source][target]
        broken.setdefault(source, set()).add(target)


def dependency_order(entries: list[dict[str, Any]]) -> list[int]:
    """Indices of ``entries`` so that each comes after the entries it refers to by fullUrl.
    Raises UsageError on a cycle (use :func:`plan`, which breaks cycles)."""
    order, broken = plan(entries)
    if broken:
        raise UsageError("the Bundle's entries refer to each other in a cycle; cannot send them one by one")
    return order


def _stub(resource: Resource, targets: set[str]) -> Resource:
    """``resource`` without its references to ``targets`` (see "choice of the edge")."""
    stub = copy.deepcopy(resource)
    found = [(path, ref) for path, ref in _reference_paths(stub) if ref["reference"] in targets]
    removals: list[tuple[str | int, ...]] = []
    for path, ref in found:
        if "extension" in path:
            cut = path.index("extension")
            removals.append(path[:cut + 2])  # the whole (outermost) extension: no complex one is left half
        elif ref.get("identifier"):
            del ref["reference"]
        else:
            items = [k for k, step in enumerate(path) if isinstance(step, int)]
            removals.append(path[:items[-1] + 1] if items else path)
    # deepest and last first, so earlier paths stay valid
    for path in sorted(set(removals), key=lambda p: (len(p), p), reverse=True):
        parent: Any = stub
        for step in path[:-1]:
            parent = parent[step]
        del parent[path[-1]]
    _prune(stub)
    return stub


def _prune(node: Any) -> bool:
    """Drop the lists and objects the stub emptied; True when ``node`` itself is empty."""
    if isinstance(node, dict):
        for key in [k for k, v in node.items() if isinstance(v, (dict, list)) and _prune(v)]:
            del node[key]
        return not node
    if isinstance(node, list):
        node[:] = [v for v in node if not (isinstance(v, (dict, list)) and _prune(v))]
        return not node
    return False


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
        self.done: dict[str, dict[str, Any]] = {}  # fullUrl of a pivot that needs no more -> its result

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
        return rewrite_references(resource, self.resolved, lambda rtype, query: next(iter(self.matches(rtype, query)), None))

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

    def send_stub(self, entry: dict[str, Any], targets: set[str]) -> tuple[str, str | None, bool] | None:
        """Make the pivot ``entry`` exist on the server before the entries it refers to by the
        broken edges (``targets``: their fullUrls). Answers (id, version, created) for the final
        update, or ``None`` when the entry is done (an ``ifNoneExist`` create that matched)."""
        request = entry.get("request") or {}
        method = str(request.get("method", "")).upper()
        url = str(request.get("url", ""))
        resource = self.rewrite(_stub(entry["resource"], targets))
        resource_type = resource["resourceType"]
        existing: Resource | None = None
        if method == "POST":
            query = request.get("ifNoneExist")
            found = self.matches(resource_type, query) if query else []
            existing = found[0] if found else None
        elif method == "PUT" and "?" in url:
            query = url.partition("?")[2]
            found = self.matches(resource_type, query)
            existing = found[0] if found else None
        elif method == "PUT":
            try:
                existing = self.client.read(resource_type, url.rpartition("/")[2]).resource
            except FhirNotFoundError:
                existing = None
        else:
            raise UsageError(f"cannot send a {method or '?'} entry one by one (only POST and PUT)")
        if existing is not None:
            resource_id = str(existing["id"])
            self.resolved[str(entry["fullUrl"])] = f"{resource_type}/{resource_id}"
            version = (existing.get("meta") or {}).get("versionId")
            if method == "POST":  # a conditional create that matches does nothing
                self.done[str(entry["fullUrl"])] = _entry(200, resource_type, resource_id, version)
                return None
            return resource_id, version, False
        if method == "PUT" and "?" not in url:
            response = self.client.update(resource | {"id": url.rpartition("/")[2]}, prefer="OperationOutcome")
            result = self._from(response, resource_type, url.rpartition("/")[2])
        else:  # just searched: a conditional create only where the server has one
            query = request.get("ifNoneExist") if method == "POST" else url.partition("?")[2]
            result = self.create(resource, query if query and self.can(resource_type, "create") else None)
        location = result["response"]["location"].split("/")
        self.resolved[str(entry["fullUrl"])] = "/".join(location[:2])
        return location[1], location[3] if len(location) > 3 else None, result["response"]["status"].startswith("201")

    def complete(self, entry: dict[str, Any], resource_id: str, version: str | None, created: bool) -> dict[str, Any]:
        """The pivot's final update: its full content, by id, ``If-Match`` the version it had."""
        resource = self.rewrite(entry["resource"])
        resource_type = resource["resourceType"]
        response = self.client.update(resource | {"id": resource_id}, if_match=version, prefer="OperationOutcome")
        result = self._from(response, resource_type, resource_id)
        if created:
            result["response"]["status"] = "201 Created"
        elif version is not None and response.version_id == version:
            result["response"]["outcome"] = _outcome(NO_CHANGE, "no change")
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


def _waits_for(entries: list[dict[str, Any]], order: list[int], broken: dict[int, set[int]]) -> list[set[int]]:
    """For each entry, the entries that must be answered before it is sent (see "fan-out"):
    those it refers to by fullUrl (less the broken edges), and an earlier entry (in ``order``)
    whose conditional request matches one of its conditional references."""
    position = {index: at for at, index in enumerate(order)}
    by_query: dict[str, int] = {}
    for i, entry in enumerate(entries):
        request = entry.get("request") or {}
        url = str(request.get("url", ""))
        resource_type = (entry.get("resource") or {}).get("resourceType")
        query = request.get("ifNoneExist") if str(request.get("method", "")).upper() == "POST" \
            else (url.partition("?")[2] if "?" in url else None)
        if query and resource_type:
            by_query.setdefault(f"{resource_type}?{query}", i)
    waits: list[set[int]] = []
    for i, found in enumerate(_edges(entries)):
        needs = set(found) - broken.get(i, set())
        for ref in _references(entries[i].get("resource")):
            j = by_query.get(ref["reference"])
            if j is not None and j != i and position[j] < position[i]:
                needs.add(j)
        waits.append(needs)
    return waits


def _run(order: list[int], waits: list[set[int]], step: Callable[[int], None], fan_out: int) -> None:
    """Call ``step`` for every index of ``order``, an index only after those it waits for, up to
    ``fan_out`` at once; the first error stops what has not started and is raised once the
    started ones are answered."""
    if fan_out <= 1:
        for index in order:
            step(index)
        return
    left = {index: set(waits[index]) for index in order}
    waiting = list(order)
    with ThreadPoolExecutor(max_workers=fan_out, thread_name_prefix="ims-fhir-entry") as pool:
        running: dict[Future[None], int] = {}
        error: BaseException | None = None
        while waiting or running:
            if error is None:
                ready = [index for index in waiting if not left[index]]
                for index in ready[:max(0, fan_out - len(running))]:
                    waiting.remove(index)
                    running[pool.submit(step, index)] = index
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                index = running.pop(future)
                failure = future.exception()
                if failure is not None:
                    error = error or failure
                    continue
                for other in waiting:
                    left[other].discard(index)
        if error is not None:
            raise error


def send_entrywise(client: FhirClient, bundle: Resource) -> FhirResponse:
    """Apply a transaction Bundle with individual requests (see the module docstring)."""
    entries = list(bundle.get("entry") or [])
    order, broken = plan(entries)
    sender = _Sender(client, client.capabilities())
    results: list[dict[str, Any] | None] = [None] * len(entries)
    pending: list[tuple[int, str, str | None, bool]] = []

    def step(index: int) -> None:
        if index in broken:
            targets = {str(entries[t]["fullUrl"]) for t in broken[index]}
            stubbed = sender.send_stub(entries[index], targets)
            if stubbed is None:
                results[index] = sender.done[str(entries[index]["fullUrl"])]
            else:
                pending.append((index, *stubbed))
        else:
            results[index] = sender.send(entries[index])

    fan_out = client.transport.throttle.fan_out
    _run(order, _waits_for(entries, order, broken) if fan_out > 1 else [], step, fan_out)
    position = {index: at for at, index in enumerate(order)}
    for index, resource_id, version, created in sorted(pending, key=lambda p: position[p[0]]):
        results[index] = sender.complete(entries[index], resource_id, version, created)
    response_bundle = {"resourceType": "Bundle", "type": "transaction-response", "entry": results}
    return FhirResponse(status=200, resource=response_bundle, url=client.base_url)


__all__ = ["NO_CHANGE", "dependency_order", "plan", "send_entrywise"]


def rewrite_references(resource: Resource, resolved: dict[str, str],
                       find_one: Callable[[str, str], Resource | None]) -> Resource:
    """A copy of ``resource`` whose references name server resources: an earlier entry's by what
    ``resolved`` says, a conditional reference (``Type?query``) by what ``find_one`` finds
    (remembered in ``resolved``); a conditional reference that matches nothing is refused."""
    resource = copy.deepcopy(resource)
    for ref in _references(resource):
        target = ref["reference"]
        if target in resolved:
            ref["reference"] = resolved[target]
        elif "?" in target and not target.startswith(("urn:", "http:", "https:")):
            resource_type, _, query = target.partition("?")
            one = find_one(resource_type, query)
            if one is None:
                raise FhirNotFoundError(f"reference {resource_type}?… matches nothing on the server", status=404)
            resolved[target] = ref["reference"] = f"{resource_type}/{one['id']}"
    return resource
