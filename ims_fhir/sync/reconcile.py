"""Sending to a hospital's server as it really is: identity, ownership, If-Match, conflicts, Provenance.

:class:`TargetSync` sits between a transaction Bundle as the packer builds it (entries that are
conditional creates/updates on business identifiers, ``urn:uuid`` and conditional references)
and the sending engine (:class:`ims_fhir.delivery.Sender`). For one target it:

1. **resolves identity.** Each Patient/Practitioner entry and each conditional reference is
   looked up in the target's identity map (:class:`~ims_fhir.sync.store.TargetState`); what the
   map does not know is searched on the server, first by the clinic's identifier, then by the
   resource's other identifiers (health number, MRN). A record whose patient (or practitioner,
   or assessment) cannot be resolved fails with a reason naming it, and none of its entries is
   sent (nothing half-written).
2. **applies ownership.** A resource found only by another identifier existed before: it is the
   server's (``owner=server``), referenced as ``Type/id`` and never written; its entry reports
   ``kept (server-owned)``. A resource the adapter created (it carries the clinic's identifier)
   is the clinic's: when its *content hash* differs from the one last written it is sent as
   ``PUT Type/id`` with ``If-Match`` on the version last written; otherwise it is not sent
   (``unchanged``). Resources the map does not know are created as before (conditional create /
   conditional update on the business identifier).
3. **records conflicts.** A refused ``If-Match`` (409 from HAPI, 412 per the spec; both a
   :class:`~ims_fhir.errors.FhirVersionConflictError`) means someone at the hospital edited the
   resource: the adapter reads the server's version and records a conflict (both versions, a
   field diff); nothing of that record is written.
4. **adds Provenance** to every transaction it sends (:mod:`ims_fhir.mapping.provenance`) and
   writes an audit entry per written (or kept, or conflicting) resource, with its version.

Terms:

- *content hash*: SHA-256 of the resource without ``id``/``meta``/``text``, with every
  ``urn:uuid`` reference replaced by the conditional form (``Type?identifier=system|value``) of
  the entry it names, so that the same record hashes the same whether its patient travels in the
  same Bundle or was sent before.
- *resolutions* of a conflict (:func:`resolve_conflict`): ``resend`` writes the clinic's
  version over the server's (an explicit override, ``If-Match`` on the server's current
  version); ``accept`` takes the server's version as the base (the caller imports it back as the
  clinic's new revision, see :func:`record_resources`); ``dismiss`` leaves the server's version
  and does not send the clinic's edit (a later clinic edit is sent again, with ``If-Match``).

Ownership is recorded in the identity map only (no tag is written to the hospital's resources):
after the map is lost it is rebuilt from what the server holds, since only resources the adapter
created carry the clinic's identifiers.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

import orjson

from .. import __version__
from ..client import FhirClient, delivery_requirements, on_type
from ..client.capability import Requirement
from ..delivery import BundleResult, EntryResult, Refusal, Sender, TransactionStrategy, record_parts
from ..errors import FhirError, FhirNotFoundError, FhirVersionConflictError, UsageError
from ..fhir.bundles import SHARED_TYPES, escape_token
from ..fhir.diff import content, field_diff
from ..identifiers import IdentifierScheme, RecordKey, identifiers_of, split_system
from ..mapping.provenance import provenance_ids, with_provenance
from ..terminology import Terminology, default_terminology
from .store import AuditEntry, Conflict, Identity, TargetState

KEPT = "kept (server-owned)"
UNCHANGED = "unchanged"
CONFLICT = "conflict"

Resource = dict[str, Any]
Key = RecordKey
#: (type, clinic identifier) -> (owner, the resources found): searches done ahead (TargetSync._prefetch)
_Prefetched = dict[tuple[str, tuple[str, str]], tuple[str, list[Resource]]]
#: identities of one Bundle's keys (resource type, system, value), None where the map has none
_Memo = dict[tuple[str, str, str], Identity | None]
#: identifiers OR-ed in one search
PREFETCH_CHUNK = 40


@dataclass(frozen=True, slots=True)
class Unresolved:
    """Records that were not sent because a resource they refer to cannot be found anywhere."""

    records: list[Key]
    reason: str


@dataclass(frozen=True, slots=True)
class Conflicted:
    """A record not written because one of its resources moved on the server (see :class:`Conflict`)."""

    record: Key | None
    conflict_id: int
    resource: str  # Type/id
    base_version: str | None
    server_version: str | None


@dataclass
class Sent:
    """What became of one Bundle at one target."""

    delivery: BundleResult = field(default_factory=BundleResult)
    #: entries not sent: ``kept (server-owned)`` and ``unchanged`` (outcome), with the server's id
    skipped: list[EntryResult] = field(default_factory=list)
    conflicts: list[Conflicted] = field(default_factory=list)
    unresolved: list[Unresolved] = field(default_factory=list)
    provenance: list[str] = field(default_factory=list)

    @property
    def entries(self) -> list[EntryResult]:
        """Every entry's result, sent or not (not the Device/Provenance entries)."""
        sent = [e for e in self.delivery.entries if e.resource_type not in ("Device", "Provenance")]
        return sent + self.skipped

    @property
    def refusals(self) -> list[Refusal]:
        return self.delivery.refusals


def _resolve_refs(value: Any, urls: dict[str, str]) -> Any:
    """``value`` with every ``reference`` found in ``urls`` replaced by what it maps to."""
    if not urls:
        return value
    if isinstance(value, dict):
        return {k: (urls.get(v, v) if k == "reference" and isinstance(v, str) else _resolve_refs(v, urls))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, urls) for v in value]
    return value


def primary_identifier(resource: Resource) -> tuple[str, str] | None:
    """``(system, value)`` of a resource's first identifier: its key in the identity map."""
    ident = (identifiers_of(resource) or [{}])[0]
    system, value = ident.get("system"), ident.get("value")
    return (system, value) if isinstance(system, str) and isinstance(value, str) and value else None


def _token(system: str, value: str) -> str:
    return quote(escape_token(system), safe="") + "|" + quote(escape_token(value), safe="")


def conditional_form(resource_type: str, system: str, value: str) -> str:
    return f"{resource_type}?identifier={_token(system, value)}"


def parse_conditional(reference: str) -> tuple[str, str, str] | None:
    """(type, system, value) of ``Type?identifier=system|value`` (the first of an OR list), as
    :func:`ims_fhir.fhir.bundles.identifier_query` writes it: the ``,`` and ``|`` that separate are
    literal, those inside a system or value are percent-encoded and search-escaped."""
    rtype, sep, query = reference.partition("?")
    if not sep or not query.startswith("identifier="):
        return None
    first = query[len("identifier="):].split(",", 1)[0]
    system, bar, value = first.partition("|")
    if not bar or not value:
        return None
    return rtype, _unescape(unquote(system)), _unescape(unquote(value))


def _unescape(text: str) -> str:
    """Undo FHIR search escaping (``\\,`` ``\\|`` ``\\$`` ``\\\\``)."""
    out, i = "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out += text[i + 1]
            i += 2
        else:
            out += text[i]
            i += 1
    return out


def _map_references(node: Any, change: Callable[[str], str | None]) -> Any:
    """A copy of ``node`` with every ``reference`` string ``change`` answers for replaced."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if isinstance(value, dict | list):  # only containers are descended into (most values are not)
                out[key] = _map_references(value, change)
            elif key == "reference" and isinstance(value, str):
                new = change(value)
                out[key] = value if new is None else new
            else:
                out[key] = value
        return out
    if isinstance(node, list):
        return [_map_references(v, change) if isinstance(v, dict | list) else v for v in node]
    return node


def _references(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            elif isinstance(value, dict | list):
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                yield from _references(item)


def content_hash(resource: Resource, canonical: Callable[[str], str | None]) -> str:
    """See the terms: ``canonical`` gives the conditional form of a ``urn:uuid`` reference."""
    body = _map_references(content(resource), canonical)
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _weak(version: str) -> str:
    return f'W/"{version}"'


class TargetSync:
    """Identity, ownership, If-Match, conflicts, Provenance and audit for one target (module docstring)."""

    def __init__(self, client: FhirClient, state: TargetState, target: str, *,
                 term: Terminology | None = None, clock: Callable[[], float] = time.time,
                 software_version: str = __version__) -> None:
        self.client = client
        self.state = state
        self.target = target
        self.term = term or default_terminology()
        self.clock = clock
        self.software_version = software_version

    # -- identity --------------------------------------------------------------------------

    def _search_one(self, resource_type: str, identifiers: list[tuple[str, str]]) -> list[Resource]:
        tokens = ",".join(escape_token(s) + "|" + escape_token(v) for s, v in identifiers)
        return list(self.client.search(resource_type, [("identifier", tokens)], no_cache=True))

    def _known(self, memo: _Memo | None, resource_type: str, system: str, value: str) -> Identity | None:
        """The map's identity of a key: from ``memo`` (the keys of the Bundle being sent, read at
        once) when it was read there, else from the map."""
        key = (resource_type, system, value)
        if memo is not None and key in memo:
            return memo[key]
        return self.state.identity(self.target, resource_type, system, value)

    def _prefetch(self, wanted: list[tuple[str, tuple[str, str], list[tuple[str, str]]]],
                  memo: _Memo | None = None) -> _Prefetched:
        """What the server holds for the shared resources (patients, practitioners) of a Bundle
        the map does not know, in a few searches instead of one or two per resource: per type,
        the clinic identifiers OR-ed (chunks of :data:`PREFETCH_CHUNK`), then the other
        identifiers of those not found. Over a WAN each search is a round trip, and the Bundle
        that carries every Patient blocks every other Bundle of them until it is sent."""
        out: _Prefetched = {}
        by_type: dict[str, list[tuple[tuple[str, str], list[tuple[str, str]]]]] = {}
        for rtype, clinic, others in wanted:
            if self._known(memo, rtype, *clinic) is None:
                by_type.setdefault(rtype, []).append((clinic, others))
        for rtype, items in by_type.items():
            items = list({clinic: (clinic, others) for clinic, others in items}.values())
            holders = self._holders(rtype, [clinic for clinic, _ in items])
            for clinic, _ in items:
                out[(rtype, clinic)] = ("clinic", holders.get(clinic, []))
            missing = [(clinic, others) for clinic, others in items if not holders.get(clinic) and others]
            other_holders = self._holders(rtype, [o for _, others in missing for o in others])
            for clinic, others in missing:
                found = {r["id"]: r for o in others for r in other_holders.get(o, [])}
                out[(rtype, clinic)] = ("server", list(found.values()))
        return out

    def _holders(self, resource_type: str, identifiers: list[tuple[str, str]]) -> dict[tuple[str, str], list[Resource]]:
        """identifier -> the resources found that carry it (OR-ed searches, in chunks)."""
        wanted = set(identifiers)
        holders: dict[tuple[str, str], dict[str, Resource]] = {}
        ordered = list(dict.fromkeys(identifiers))
        for i in range(0, len(ordered), PREFETCH_CHUNK):
            for resource in self._search_one(resource_type, ordered[i:i + PREFETCH_CHUNK]):
                for ident in resource.get("identifier") or []:
                    key = (ident.get("system"), ident.get("value"))
                    if key in wanted:
                        holders.setdefault(key, {})[str(resource.get("id"))] = resource
        return {k: list(v.values()) for k, v in holders.items()}

    def resolve(self, resource_type: str, clinic: tuple[str, str], others: list[tuple[str, str]],
                *, record: Key | None, prefetched: _Prefetched | None = None,
                memo: _Memo | None = None) -> Identity | None:
        """The server's resource for a clinic identifier: the map, else a search by the clinic's
        identifier (found: the clinic's), else by the other identifiers (found: the server's).
        None when nothing matches; raises :class:`_Ambiguous` for several matches.
        ``prefetched``: those searches already done (:meth:`_prefetch`); ``memo``: see :meth:`_known`."""
        known = self._known(memo, resource_type, *clinic)
        if known is not None:
            return known
        if prefetched is not None and (resource_type, clinic) in prefetched:
            owner, found = prefetched[(resource_type, clinic)]
        else:
            found = self._search_one(resource_type, [clinic])
            owner = "clinic"
            if not found and others:
                found = self._search_one(resource_type, others)
                owner = "server"
        if not found:
            return None
        if len(found) > 1:
            what = f"{resource_type} {clinic[1]}"
            raise _Ambiguous(f"{what}: {len(found)} resources on the server match its identifiers")
        res = found[0]
        identity = Identity(self.target, resource_type, clinic[0], clinic[1], str(res["id"]),
                            (res.get("meta") or {}).get("versionId"), owner,
                            record_type=record[0] if record else None, record_id=record[1] if record else None)
        self.state.put_identities([identity], now=self.clock())
        if memo is not None:
            memo[(resource_type, *clinic)] = identity
        return identity

    # -- sending ---------------------------------------------------------------------------

    def send(self, bundle: Resource, *, again: bool = True) -> Sent:
        """Send one Bundle as the module docstring says; target-wide errors are raised. When a
        refused If-Match turned out to be the adapter's own earlier write (its answer was lost) the
        identity map now has that version: the Bundle is sent once more (``again``)."""
        sent = Sent()
        scheme = IdentifierScheme.from_bundle(bundle)

        def record_key(identifier: dict[str, Any]) -> Key | None:
            return scheme.record_key(identifier) if scheme is not None else None

        entries: list[dict[str, Any]] = list(bundle.get("entry") or [])
        by_url = {e["fullUrl"]: e for e in entries if e.get("fullUrl")}

        canonical_forms: dict[str, str | None] = {}

        def canonical(ref: str) -> str | None:
            if ref not in canonical_forms:  # an entry is referred to by many: its form is made once
                entry = by_url.get(ref)
                ident = primary_identifier(entry["resource"]) if entry is not None else None
                canonical_forms[ref] = (conditional_form(entry["resource"]["resourceType"], *ident)
                                        if entry is not None and ident else None)
            return canonical_forms[ref]

        hashes = {url: content_hash(e["resource"], canonical) for url, e in by_url.items()}
        replace: dict[str, str] = {}
        drop: set[str] = set()
        updates: dict[str, Identity] = {}
        failed_urls: dict[str, list[str]] = {}
        unresolvable: dict[str, str] = {}

        # the map's identities of the Bundle's entries, read at once (a statement per entry, each a
        # round trip to a PostgreSQL outbox, cost the worker more than the rest of its round)
        entry_keys = [(e["resource"]["resourceType"], *ident) for e in by_url.values()
                      if e["resource"]["resourceType"] != "Organization" and (ident := primary_identifier(e["resource"]))]
        mapped = self.state.identities_of(self.target, entry_keys)
        memo: _Memo = {key: mapped.get(key) for key in entry_keys}

        # 1. entries the map (or a search, for patients and practitioners) knows
        shared = [(e["resource"]["resourceType"], ident,
                   [(i["system"], i["value"]) for i in (e["resource"].get("identifier") or [])[1:]
                    if i.get("system") and i.get("value")])
                  for e in by_url.values() if e["resource"]["resourceType"] in SHARED_TYPES
                  and e["resource"]["resourceType"] != "Organization" and (ident := primary_identifier(e["resource"]))]
        prefetched = self._prefetch(shared, memo) if len(shared) > 1 else None
        for url, entry in by_url.items():
            resource = entry["resource"]
            rtype = resource["resourceType"]
            ident = primary_identifier(resource)
            if rtype == "Organization" or ident is None:
                continue
            record = record_key({"system": ident[0], "value": ident[1]})
            try:
                if rtype in SHARED_TYPES:
                    others = [(i["system"], i["value"]) for i in identifiers_of(resource)[1:]
                              if i.get("system") and i.get("value")]
                    known = self.resolve(rtype, ident, others, record=record, prefetched=prefetched, memo=memo)
                else:
                    known = self._known(memo, rtype, *ident)
            except _Ambiguous as exc:
                failed_urls.setdefault(url, []).append(str(exc))
                continue
            if known is None:
                continue
            replace[url] = f"{rtype}/{known.server_id}"
            if known.owner == "server":
                drop.add(url)
                sent.skipped.append(EntryResult(record, rtype, "-", KEPT, 200, known.server_id, known.version, ident))
            elif known.content_hash is not None and known.content_hash == hashes[url]:
                drop.add(url)
                sent.skipped.append(EntryResult(record, rtype, "-", UNCHANGED, 200, known.server_id, known.version,
                                                ident))
            else:
                updates[url] = known

        # 2. conditional references to what is not in the Bundle
        for entry in entries:
            for ref in _references(entry["resource"]):
                if ref in replace or ref in by_url or "?" not in ref:
                    continue
                if ref in unresolvable:
                    failed_urls.setdefault(entry["fullUrl"], []).append(unresolvable[ref])
                    continue
                parsed = parse_conditional(ref)
                if parsed is None:
                    continue
                rtype, system, value = parsed
                try:
                    if rtype in SHARED_TYPES:
                        known = self.resolve(rtype, (system, value), [], record=None, memo=memo)
                    else:
                        known = self._known(memo, rtype, system, value)
                        if known is None:
                            found = self._search_one(rtype, [(system, value)])
                            if len(found) == 1:
                                known = Identity(self.target, rtype, system, value, str(found[0]["id"]),
                                                 (found[0].get("meta") or {}).get("versionId"), "clinic")
                                self.state.put_identities([known], now=self.clock())
                                memo[(rtype, system, value)] = known
                            elif len(found) > 1:
                                raise _Ambiguous(f"{rtype} {value}: {len(found)} resources match")
                except _Ambiguous as exc:
                    unresolvable[ref] = str(exc)
                    failed_urls.setdefault(entry["fullUrl"], []).append(str(exc))
                    continue
                if known is None:
                    kind = (record_key({"system": system, "value": value}) or (rtype, value))
                    unresolvable[ref] = (
                        f"{kind[0]} {kind[1]} is neither on the server (searched by its identifier {system}|{value}) "
                        "nor in this push: send it first or with this record")
                    failed_urls.setdefault(entry["fullUrl"], []).append(unresolvable[ref])
                else:
                    replace[ref] = f"{rtype}/{known.server_id}"

        # 3. records that cannot be sent: all their entries stay out
        if failed_urls:
            keep: set[str] = set()
            for key, part in record_parts(bundle, scheme):
                keys = [key]
                urls = {e["fullUrl"] for e in part["entry"]}
                bad = [reason for u in urls for reason in failed_urls.get(u, [])]
                own = {e["fullUrl"] for e in part["entry"]
                       if record_key((identifiers_of(e["resource"]) or [{}])[0]) in keys}
                if bad:
                    # the records of the part, and the record of a shared entry that cannot be resolved
                    records = [record_key((identifiers_of(by_url[u]["resource"]) or [{}])[0]) or ("resource", u)
                               for u in urls if u in failed_urls and by_url[u]["resource"]["resourceType"]
                               in SHARED_TYPES]
                    records += [k for k in keys if k[0] != "resource" and k not in records]
                    sent.unresolved.append(Unresolved(records, "; ".join(sorted(set(bad)))))
                    drop.update(own)
                else:
                    keep.update(urls)
            drop.update(u for u in by_url if u not in keep)
            sent.skipped = [s for s in sent.skipped if not any(s.record in u.records for u in sent.unresolved)]

        # 4. the Bundle to send: known resources by id, updates with If-Match
        out_entries = []
        in_flight: list[tuple[str, str, str, dict[str, Any]]] = []
        for entry in entries:
            url = entry.get("fullUrl", "")
            if url in drop:
                continue
            resource = _map_references(entry["resource"], replace.get)
            new = {**entry, "resource": resource}
            known_id = updates.get(url)
            if known_id is not None:
                rtype = resource["resourceType"]
                new["resource"] = {**resource, "id": known_id.server_id}
                new["request"] = {"method": "PUT", "url": f"{rtype}/{known_id.server_id}"}
                if known_id.version:
                    new["request"]["ifMatch"] = _weak(known_id.version)
                in_flight.append((rtype, known_id.system, known_id.value,
                                  {"resource": new["resource"], "hash": hashes[url]}))
            out_entries.append(new)
        written = [e for e in out_entries if (e["resource"].get("resourceType") != "Organization")]
        now = self.clock()
        if not written:
            self._audit_skipped(sent, now)
            return sent
        to_send = {**bundle, "entry": out_entries}
        recorded = datetime.fromtimestamp(now, UTC)

        org_entries = [e for e in out_entries if e["resource"].get("resourceType") == "Organization"]

        def prepare(b: Resource) -> Resource:
            if org_entries and not any(e["resource"].get("resourceType") == "Organization" for e in b["entry"]):
                b = {**b, "entry": org_entries[:1] + list(b["entry"])}  # the Provenance's author, in every part
            full = with_provenance(b, recorded=recorded, term=self.term, version=self.software_version)
            sent.provenance.extend(p for p in provenance_ids(full) if p not in sent.provenance)
            return full

        sender = Sender(self.client, scheme=scheme, strategy=TransactionStrategy(prepare))
        if in_flight:
            # written ahead: the answer may be lost after the server made the writes, by a reset or
            # by this process being killed mid-send; remember what each update sends, so that a
            # refused If-Match later recognises its own write (see :meth:`_conflicts`)
            self.state.set_pending(self.target, in_flight)
        sent.delivery = sender.send(to_send)
        if self._after(sent, to_send, hashes, updates, now, record_key) and again:
            return self.send(bundle, again=False)
        return sent

    def _after(self, sent: Sent, bundle: Resource, hashes: dict[str, str], updates: dict[str, Identity],
               now: float, record_key: Callable[[dict[str, Any]], Key | None]) -> bool:
        """Record what became of a sent Bundle; True when a refused If-Match was the adapter's own
        earlier write (the identity map has its version now: worth sending again at once)."""
        by_ident: dict[tuple[str, str, str], str] = {}
        for entry in bundle["entry"]:
            ident = primary_identifier(entry["resource"])
            if ident and entry.get("fullUrl") in hashes:
                by_ident[(entry["resource"]["resourceType"], *ident)] = hashes[entry["fullUrl"]]
        txn = ",".join(f"Provenance/{p}" for p in sent.provenance) or None
        identities, audit = [], []
        for result in sent.delivery.entries:
            if result.resource_type in ("Device", "Provenance") or result.identifier is None or not result.resource_id:
                continue
            key = (result.resource_type, *result.identifier)
            matched_existing = result.method == "POST" and result.status == 200
            owner = "server" if matched_existing and result.resource_type in ("Patient", "Practitioner") else "clinic"
            identities.append(Identity(self.target, result.resource_type, result.identifier[0], result.identifier[1],
                                       result.resource_id, result.version_id, owner,
                                       content_hash=by_ident.get(key) if owner == "clinic" else None,
                                       record_type=result.record[0] if result.record else None,
                                       record_id=result.record[1] if result.record else None))
            outcome = KEPT if owner == "server" else result.outcome
            audit.append(AuditEntry(now, self.target, result.resource_type, outcome, result.resource_id,
                                    result.version_id, result.identifier[0], result.identifier[1],
                                    record_type=result.record[0] if result.record else None,
                                    record_id=result.record[1] if result.record else None, transaction=txn))
        self.state.put_identities(identities, now=now)
        kept_refusals = []
        healed = False
        for rejection in sent.delivery.refusals:
            if isinstance(rejection.error, FhirVersionConflictError):
                found, own = self._conflicts(rejection, updates, hashes, now, record_key)
                healed = healed or (own and not found)
                if found:
                    sent.conflicts.extend(found)
                    for c in found:
                        rtype, _, sid = c.resource.partition("/")
                        audit.append(AuditEntry(now, self.target, rtype, CONFLICT, sid, c.server_version,
                                                record_type=c.record[0] if c.record else None,
                                                record_id=c.record[1] if c.record else None,
                                                detail=f"conflict {c.conflict_id}: written version {c.base_version}, "
                                                       f"server version {c.server_version}"))
                    continue
            kept_refusals.append(rejection)
            for entry in rejection.part.get("entry", []):
                ident = primary_identifier(entry["resource"])
                rtype = entry["resource"]["resourceType"]
                if rtype in ("Organization", "Device", "Provenance") or ident is None:
                    continue
                rec = record_key({"system": ident[0], "value": ident[1]})
                audit.append(AuditEntry(now, self.target, rtype, "rejected", system=ident[0], value=ident[1],
                                        record_type=rec[0] if rec else None, record_id=rec[1] if rec else None,
                                        detail=f"HTTP {getattr(rejection.error, 'status', '?')}"))
        sent.delivery.refusals = kept_refusals
        self.state.add_audit(audit)
        self._audit_skipped(sent, now)
        return healed

    def _audit_skipped(self, sent: Sent, now: float) -> None:
        self.state.add_audit([
            AuditEntry(now, self.target, s.resource_type, s.outcome, s.resource_id, s.version_id,
                       system=s.identifier[0] if s.identifier else None,
                       value=s.identifier[1] if s.identifier else None,
                       record_type=s.record[0] if s.record else None, record_id=s.record[1] if s.record else None)
            for s in sent.skipped if s.outcome == KEPT])

    def _server_urls(self, part: Resource) -> dict[str, str]:
        """``urn:uuid`` fullUrl -> ``Type/server id`` for the part's entries the identity map knows."""
        urls: dict[str, str] = {}
        for entry in part.get("entry", []):
            full, res = entry.get("fullUrl"), entry.get("resource") or {}
            ident = primary_identifier(res)
            if not isinstance(full, str) or not full.startswith("urn:") or ident is None:
                continue
            known = self.state.identity(self.target, str(res.get("resourceType")), *ident)
            if known is not None and known.server_id:
                urls[full] = f"{known.resource_type}/{known.server_id}"
        return urls

    def _conflicts(self, rejection: Refusal, updates: dict[str, Identity], hashes: dict[str, str],
                   now: float, record_key: Callable[[dict[str, Any]], Key | None]) -> tuple[list[Conflicted], bool]:
        """The conflicts of a refused part, and whether one of its refused entries was the
        adapter's own earlier write (no conflict: its version is now the base)."""
        out = []
        own = False
        urls = self._server_urls(rejection.part)
        for entry in rejection.part.get("entry", []):
            request = entry.get("request") or {}
            if not request.get("ifMatch"):
                continue
            # compared as the server stores it: a urn:uuid reference to another entry is the
            # server's Type/id of that entry (else every lost answer would differ in its references)
            resource = _resolve_refs(entry["resource"], urls)
            rtype, sid = resource["resourceType"], str(resource.get("id"))
            known = updates.get(entry.get("fullUrl", ""))
            try:
                current = self.client.read(rtype, sid)
            except FhirNotFoundError:
                current = None
            server = current.resource if current is not None else None
            server_version = current.version_id if current is not None else None
            base = known.version if known else None
            if server_version is not None and server_version == base:
                continue  # this entry did not move; another one of the part did
            if server is not None and known is not None and not field_diff(resource, server):
                # the server holds exactly what we send: our own earlier write landed and its answer
                # was lost (a reset after the write), not a hospital edit. Take its version as the
                # base; the retry then finds the resource unchanged.
                self.state.put_identities([replace(known, version=server_version,
                                                   content_hash=hashes.get(entry.get("fullUrl", "")))], now=now)
                own = True
                continue
            landed = next((w for w in (known.pending or [])
                           if not field_diff(_resolve_refs(w["resource"], urls), server)), None) \
                if server is not None and known is not None else None
            if landed is not None and known is not None:
                # the server holds an earlier update whose answer never came (the clinic edited the
                # record again since): the adapter's own write, not a hospital edit. Its version is
                # the base; this edit goes with If-Match on it.
                self.state.put_identities([replace(known, version=server_version, content_hash=landed.get("hash"))],
                                          now=now)
                own = True
                continue
            ident = primary_identifier(resource)
            rec = record_key({"system": ident[0], "value": ident[1]}) if ident else None
            conflict = Conflict(
                id=0, target=self.target, resource_type=rtype, server_id=sid,
                record_type=rec[0] if rec else None, record_id=rec[1] if rec else None,
                base_version=base, server_version=server_version, clinic_resource=resource,
                server_resource=server, diff=field_diff(resource, server or {}), state="open", resolution=None,
                detected_at=now, clinic_hash=hashes.get(entry.get("fullUrl", "")),
                detail=None if server is not None else "the resource is gone from the server")
            cid = self.state.open_conflict(conflict, now=now)
            out.append(Conflicted(rec, cid, f"{rtype}/{sid}", base, server_version))
        return out, own


class _Ambiguous(FhirError):
    """Several server resources match one identifier."""


# -- resolutions ---------------------------------------------------------------------------------

RESOLUTION_HELP = {
    "resend": "write the clinic's version over the server's (explicit override)",
    "accept": "take the server's version: it becomes the clinic's new revision",
    "dismiss": "leave the server's version and do not send the clinic's edit",
}


@dataclass(frozen=True, slots=True)
class Resolved:
    conflict: Conflict
    resolution: str
    version: str | None  # the server's version after the resolution
    resources: list[Resource] = field(default_factory=list)  # for accept: the record's resources as the server has them


def record_resources(client: FhirClient, conflict: Conflict) -> list[Resource]:
    """The server's resources of a conflict's record, whole, for importing it back: a session's
    Procedure with its Observations, Encounter, Patient, Practitioner and Consent; an assessment's
    panel with its members, Encounter and Conditions; a Patient or Practitioner alone. With them
    the BodyStructures (sides of body sites) the record's resources name: only an extension names
    them, which no search can follow, so they are read by id. The record is found by its business
    identifier when the conflict names one (the resource that moved may be one of its
    Observations), else by the resource's id."""
    rtype, params = _record_search(conflict)
    out: list[Resource] = []
    seen: set[str] = set()

    def take(resources: Iterable[Resource]) -> None:
        for resource in resources:
            key = f"{resource.get('resourceType')}/{resource.get('id')}"
            if resource.get("resourceType") != "OperationOutcome" and key not in seen:
                seen.add(key)
                out.append(resource)

    take(_search_all(client, rtype, params))
    structures = sorted({ref.split("/_history/")[0].partition("/")[2] for res in out for ref in _references(res)
                         if ref.startswith("BodyStructure/")} - {k.partition("/")[2] for k in seen})
    for i in range(0, len(structures), 50):
        take(_search_all(client, "BodyStructure", [("_id", ",".join(structures[i:i + 50]))]))
    return out


def _search_all(client: FhirClient, rtype: str, params: list[tuple[str, str]]) -> Iterator[Resource]:
    for page in client.search_pages(rtype, params, no_cache=True):
        for entry in page.bundle.get("entry") or ():
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict):
                yield resource


#: what comes with a session's Procedure, and with an assessment's panel (as pull fetches them)
_SESSION = [("_include", "Procedure:subject"), ("_include", "Procedure:performer"),
            ("_include", "Procedure:encounter"), ("_include", "Procedure:based-on"),
            ("_revinclude", "Observation:part-of"), ("_revinclude", "Consent:data"),
            ("_revinclude", "AdverseEvent:substance"), ("_include:iterate", "Encounter:episode-of-care")]
_ASSESSMENT = [("_include", "Observation:has-member"), ("_include", "Observation:subject"),
               ("_include", "Observation:performer"), ("_include", "Observation:encounter"),
               ("_include:iterate", "Encounter:diagnosis")]


def _record_search(conflict: Conflict) -> tuple[str, list[tuple[str, str]]]:
    """(type, search parameters) that find a conflict's whole record on the server."""
    ident = primary_identifier(conflict.clinic_resource)
    found = split_system(ident[0]) if ident is not None else None
    if found is not None and conflict.record_id:
        scheme = IdentifierScheme(found[0])
        if conflict.record_type == "treatment":
            token = escape_token(scheme.system("treatment")) + "|" + escape_token(conflict.record_id)
            return "Procedure", [("identifier", token), *_SESSION]
        if conflict.record_type == "assessment":
            token = escape_token(scheme.system("assessment")) + "|" + escape_token(conflict.record_id)
            return "Observation", [("identifier", token), *_ASSESSMENT]
    rtype, sid = conflict.resource_type, conflict.server_id
    if rtype == "Procedure":
        return rtype, [("_id", sid), *_SESSION]
    if rtype == "Observation":
        return rtype, [("_id", sid), *_ASSESSMENT]
    return rtype, [("_id", sid)]


def resolve_conflict(client: FhirClient, state: TargetState, conflict_id: int, resolution: str, *,
                     now: float, detail: str | None = None,
                     take: Callable[[list[Resource]], None] | None = None) -> Resolved:
    """Carry out one resolution (see the terms) and mark the conflict resolved.

    ``take`` (for ``accept``) imports the server's resources of the record as the clinic's new
    revision; it runs after the identity map took the server's version as the base (so that the
    new revision is sent with ``If-Match`` on it) and before the conflict is marked resolved. A
    resolution that fails (a server error, ``take`` raising) leaves the conflict open with the
    reason in its detail and the identity map as it was; the exception is raised again."""
    conflict = state.conflict(conflict_id)
    if conflict is None:
        raise UsageError(f"no conflict {conflict_id}")
    if conflict.state != "open":
        raise UsageError(f"conflict {conflict_id} is already resolved ({conflict.resolution})")
    if resolution not in RESOLUTION_HELP:
        raise UsageError(f"resolution must be one of {', '.join(RESOLUTION_HELP)}, not {resolution!r}")
    known = state.identity_by_server_id(conflict.target, conflict.resource_type, conflict.server_id)
    moved = False
    try:
        current = client.read(conflict.resource_type, conflict.server_id)
        version = current.version_id
        resources: list[Resource] = []
        content_hash_: str | None
        if resolution == "resend":
            body = {**conflict.clinic_resource, "id": conflict.server_id}
            written = client.update(body, if_match=version) if version else client.update(body)
            version = written.version_id
            content_hash_ = conflict.clinic_hash
            outcome = "override"
        elif resolution == "accept":
            resources = record_resources(client, conflict)
            content_hash_ = None  # the clinic's next revision (the import) is sent with If-Match on this version
            outcome = "accepted (server version)"
        else:
            content_hash_ = conflict.clinic_hash
            outcome = "dismissed (server version kept)"
        if known is not None:
            state.put_identities([Identity(known.target, known.resource_type, known.system, known.value,
                                           conflict.server_id, version, "clinic", record_type=known.record_type,
                                           record_id=known.record_id)], now=now)
            state.set_content_hash(known.target, known.resource_type, known.system, known.value, content_hash_)
            moved = True
        if take is not None and resolution == "accept":
            take(resources)
    except Exception as exc:
        if moved and known is not None and resolution == "accept":  # nothing was written: the base stays
            state.put_identities([known], now=now, force=True)
            state.set_content_hash(known.target, known.resource_type, known.system, known.value, known.content_hash)
        state.note_conflict(conflict_id, f"{resolution} failed: {exc}"[:2000])
        raise
    state.resolve_conflict(conflict_id, resolution, now=now, detail=detail)
    state.add_audit([AuditEntry(now, conflict.target, conflict.resource_type, outcome, conflict.server_id, version,
                                known.system if known else None, known.value if known else None,
                                conflict.record_type, conflict.record_id, detail=f"conflict {conflict_id}")])
    return Resolved(conflict, resolution, version, resources)


def sync_requirements(resource_types: Iterable[str]) -> list[Requirement]:
    """What sending through :class:`TargetSync` needs of a server (and of a SMART token's scopes):
    plain delivery (create, update, search), read of the delivered types (a conflict reads the
    server's version), and the Provenance and ims-fhir Device every transaction carries (written
    like the others: create, update, search)."""
    types = sorted(set(resource_types))
    return [*delivery_requirements([*types, "Device", "Provenance"]), *(on_type(t, "read") for t in types)]


__all__ = ["CONFLICT", "KEPT", "RESOLUTION_HELP", "UNCHANGED", "Conflicted", "Resolved", "Sent", "TargetSync",
           "Unresolved", "conditional_form", "content_hash", "parse_conditional", "primary_identifier", "record_resources",
           "resolve_conflict", "sync_requirements"]
