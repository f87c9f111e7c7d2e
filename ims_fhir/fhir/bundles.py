"""Pack mapped records into self-contained FHIR transaction Bundles.

Terms:

- *group*: the resources of one record (:class:`~ims_fhir.mapping.MappedRecord`); a group
  is never split across Bundles.
- *shared entry*: an Organization, Patient or Practitioner entry, a conditional create
  (``POST`` with ``ifNoneExist`` on its identifiers) that may appear in many Bundles, so
  that each Bundle can be posted on its own and a Patient already on the server is matched,
  never overwritten.
- every other resource is a conditional update (``PUT Type?identifier=...``) on its
  business identifier: posting the same Bundle twice changes nothing, an edited record
  updates in place.

Inside a Bundle, references use the entries' ``urn:uuid:`` full URLs (the server turns
them into its own ids). A reference to a resource that is not in the Bundle and not known
in this run becomes a conditional reference (``Observation?identifier=...``) that the server
resolves against what it already holds; such a group is first held back to the end of the
run in case its dependency still comes later in the input.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import orjson

from ..identifiers import identifiers_of
from ..mapping.context import Dependency, MappedRecord, Resource

SHARED_TYPES = ("Organization", "Patient", "Practitioner")
#: R4 types with no ``identifier`` search parameter (so no conditional update): written by id,
#: ``PUT Type/id``; the id is derived from the business identifier, so it is as stable
BY_ID_TYPES = ("AdverseEvent",)


def escape_token(text: str) -> str:
    """FHIR search escaping of ``\\ , | $`` inside a token value."""
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


@lru_cache(maxsize=8192)
def _token_part(text: str) -> str:
    """An escaped, URL-encoded system or value (the same few systems and ids come again and again)."""
    return quote(escape_token(text), safe="")


def identifier_query(identifiers: list[dict[str, Any]]) -> str:
    """``identifier=sys|val[,sys|val...]`` URL-encoded (an OR over the identifiers)."""
    tokens = [_token_part(i.get("system", "")) + "|" + _token_part(i["value"]) for i in identifiers if i.get("value")]
    return "identifier=" + ",".join(tokens)


def conditional_reference(dep: Dependency) -> str:
    return f"{dep.resource_type}?{identifier_query([{'system': dep.system, 'value': dep.value}])}"


def entry_for(resource: Resource) -> dict[str, Any]:
    """The transaction entry of one resource (its id left out: the server decides it)."""
    rtype, rid = resource["resourceType"], resource["id"]
    body = {k: v for k, v in resource.items() if k != "id"}
    identifiers = identifiers_of(resource)
    if rtype in SHARED_TYPES:
        request = {"method": "POST", "url": rtype, "ifNoneExist": identifier_query(identifiers)}
    elif rtype in BY_ID_TYPES:
        request = {"method": "PUT", "url": f"{rtype}/{rid}"}
    else:
        request = {"method": "PUT", "url": f"{rtype}?{identifier_query(identifiers[:1])}"}
    return {"fullUrl": f"urn:uuid:{rid}", "resource": body, "request": request}


def _ref(rtype: str, rid: str) -> bytes:
    return orjson.dumps(f"{rtype}/{rid}")


def _urn(rid: str) -> bytes:
    return orjson.dumps(f"urn:uuid:{rid}")


class BundlePacker:
    """Streams groups in, calls ``emit(bundle_bytes, entry_count)`` for each full Bundle.

    ``lookup(resource_id)`` answers for a dependency: the ready entry bytes of a shared
    resource produced earlier in this run, ``b""`` for a resource produced earlier that is
    not shared (an assessment panel or one of its Conditions, already in an earlier Bundle),
    or None if unknown.
    ``defer(group)`` stores a group to come back to in :meth:`finish`.
    """

    def __init__(
        self,
        *,
        max_entries: int,
        organization: Resource,
        lookup: Callable[[str], bytes | None],
        remember: Callable[[str, bytes], None],
        defer: Callable[[MappedRecord], None],
        emit: Callable[[bytes, int], None],
    ) -> None:
        if max_entries < 2:
            raise ValueError("a Bundle needs room for at least 2 entries")
        self.max_entries = max_entries
        self._org_id = organization["id"]
        self._org_entry = orjson.dumps(entry_for(organization))
        self._lookup = lookup
        self._remember = remember
        self._defer = defer
        self._emit = emit
        self._entries: list[bytes] = []
        self._ids: set[str] = set()
        self._start()

    def _start(self) -> None:
        self._entries = [self._org_entry]
        self._ids = {self._org_id}

    def flush(self) -> None:
        if len(self._entries) > 1:
            body = b'{"resourceType":"Bundle","type":"transaction","entry":[' + b",".join(self._entries) + b"]}"
            self._emit(body, len(self._entries))
        self._start()

    def _plan(self, group: MappedRecord, final: bool) -> tuple[list[tuple[Dependency, bytes]], bool] | None:
        """Shared entries this group needs added; None if it must wait for a dependency."""
        needed: list[tuple[Dependency, bytes]] = []
        for dep in group.dependencies:
            if dep.id in self._ids:
                continue
            body = self._lookup(dep.id)
            if body is None and not final:
                return None
            if body:
                needed.append((dep, body))
        return needed, True

    def add(self, group: MappedRecord, *, final: bool = False) -> None:
        plan = self._plan(group, final)
        if plan is None:
            self._defer(group)
            return
        needed, _ = plan
        if len(self._entries) + len(needed) + len(group.resources) > self.max_entries and len(self._entries) > 1:
            self.flush()
            needed, _ = self._plan(group, True) or ([], True)
        for dep, body in needed:
            self._entries.append(body)
            self._ids.add(dep.id)
        own_ids = [(r["resourceType"], r["id"]) for r in group.resources]
        # a session series (EpisodeOfCare, ServiceRequest) an earlier session of this Bundle carries
        carried = {rid for _, rid in own_ids if rid in self._ids}
        self._ids.update(rid for _, rid in own_ids)
        replacements = [(_ref(t, rid), _urn(rid)) for t, rid in own_ids]
        replacements.append((_ref("Organization", self._org_id), _urn(self._org_id)))
        for dep in group.dependencies:
            if dep.id in self._ids:
                replacements.append((_ref(dep.resource_type, dep.id), _urn(dep.id)))
            else:
                replacements.append((_ref(dep.resource_type, dep.id), orjson.dumps(conditional_reference(dep))))
        for res in group.resources:
            if res["id"] in carried:
                continue
            entry = orjson.dumps(entry_for(res))
            for old, new in replacements:
                if old in entry:
                    entry = entry.replace(old, new)
            if res["resourceType"] in BY_ID_TYPES:  # its request names the resource itself, not a reference
                entry = entry.replace(b'"url":' + _urn(res["id"]), b'"url":' + _ref(res["resourceType"], res["id"]))
            self._entries.append(entry)
            if res["resourceType"] in SHARED_TYPES:
                self._remember(res["id"], entry)
        if group.record_type == "assessment" and group.primary_id:
            self._remember(group.primary_id, b"")  # known to later groups as "in an earlier Bundle"
            for res in group.resources:  # its diagnoses, which its treatments name as their reason too
                if res["resourceType"] == "Condition":
                    self._remember(res["id"], b"")
        if len(self._entries) >= self.max_entries:
            self.flush()


def group_to_bytes(group: MappedRecord) -> bytes:
    return orjson.dumps({
        "t": group.record_type, "i": group.record_id, "r": group.resources, "p": group.primary_id,
        "d": [[d.resource_type, d.id, d.system, d.value] for d in group.dependencies],
    })


def group_from_bytes(body: bytes) -> MappedRecord:
    data = orjson.loads(body)
    return MappedRecord(data["t"], data["i"], data["r"], [Dependency(*d) for d in data["d"]], data["p"])
