"""``ims-fhir push``: send IMS records (or ``convert`` output) to a FHIR server.

Terms:

- *input*: IMS records in any form (converted on the fly into transaction Bundles), a
  folder written by ``convert --format bundle`` (``bundle-*.json``), a folder written by
  ``convert`` in NDJSON (``<Type>.ndjson``: regrouped into Bundles here), or one Bundle file.
- *component*: the entries of a Bundle that belong together through ``urn:uuid``
  references (roughly one record), plus the shared Organization/Patient/Practitioner
  entries they need. When the server refuses a whole transaction (4xx), each component
  is sent on its own so that only the records the server really rejects fail, with the
  server's OperationOutcome.
- *outcome* of an entry: ``created``, ``updated``, ``unchanged`` (a conditional update with
  no change, or a conditional create that matched a resource already there, which is
  then referenced and never overwritten).

The sending engine is :mod:`ims_fhir.delivery` (one Bundle in, per-entry results and
per-record refusals out); ``ims-fhir push`` (:class:`Pusher`) and the sync worker
(:mod:`ims_fhir.sync.worker`) both send through it.

Idempotent by construction: Patients/Practitioners/Organizations are conditional creates
on their identifiers, everything else a conditional update on its business identifier.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .client import ClientConfig, FhirClient, delivery_requirements
from .client.keyed_pool import KeyedPool
from .client.throttle import Throttle
from .convert import Converter, ConvertOptions
from .delivery import (
    DELIVERED_TYPES,
    BundleResult,
    EntryResult,
    Refusal,
    Sender,
    patient_keys,
    patient_parts,
    references,
    shared_keys,
)
from .errors import InputError, UsageError
from .fhir.bundles import BundlePacker
from .identifiers import identifiers_of
from .mapping.context import Dependency, MappedRecord
from .sync.reconcile import KEPT, Sent, TargetSync, primary_identifier, sync_requirements
from .workstore import WorkStore

RESOURCE_TYPES = ("Organization", "Patient", "Practitioner", "EpisodeOfCare", "ServiceRequest", "Encounter", "Observation",
                  "Procedure")


@dataclass
class PushSummary:
    bundles: int = 0
    entries: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    #: entries of resources that were on the server before (matched by health number, MRN):
    #: referenced, never written (issue 9's ``kept (server-owned)``)
    kept: int = 0
    #: records not written because the server's version moved since the adapter wrote it
    conflicts: int = 0
    failed_records: int = 0
    rejected_records: int = 0
    by_type: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if (self.failed_records or self.rejected_records or self.conflicts) else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "bundles": self.bundles, "sent": self.entries, "created": self.created, "updated": self.updated,
            "unchanged": self.unchanged, "kept (server-owned)": self.kept, "conflicts": self.conflicts,
            "failed_records": self.failed_records,
            "rejected_records": self.rejected_records,
            "by_type": {t: dict(sorted(c.items())) for t, c in sorted(self.by_type.items())},
        }


class Pusher:
    """Sends transaction Bundles through a :class:`~ims_fhir.delivery.Sender`, tallies outcomes,
    reports failing records.

    With a ``sync`` (:class:`ims_fhir.sync.reconcile.TargetSync`) every Bundle goes through the
    target's identity map, ownership, If-Match and Provenance (issue 9) instead.
    """

    def __init__(self, sender: Sender, summary: PushSummary, report: Callable[[dict[str, Any]], None],
                 sync: TargetSync | None = None) -> None:
        self.sender = sender
        self.summary = summary
        self.report = report
        self.sync = sync
        self._reported: set[tuple[str, str]] = set()
        #: server-owned resources already tallied: a shared Patient travels in every Bundle that
        #: refers to it, but it is one resource kept (counted once per push)
        self._kept: set[tuple[str, str]] = set()

    def push(self, bundle: dict[str, Any]) -> None:
        for part in delivery_parts(self.sender.client, bundle):
            self.record(self.send(part), part)

    def send(self, part: Part) -> BundleResult | Sent:
        return self.sync.send(part.bundle) if self.sync is not None else self.sender.send(part.bundle)

    def record(self, result: BundleResult | Sent, part: Part | None = None) -> None:
        """Tally one delivered Bundle, or part of one (from one thread at a time)."""
        if part is not None and part.copies:
            result = _without(result, part.copies)
        if part is None or part.first:
            self.summary.bundles += 1
        if isinstance(result, Sent):
            for conflict in result.conflicts:
                self.summary.conflicts += 1
                record = conflict.record or ("resource", conflict.resource)
                self.report({
                    "records": [{"record_type": record[0], "id": record[1]}], "status": 409,
                    "conflict": conflict.conflict_id,
                    "error": f"conflict {conflict.conflict_id}: {conflict.resource} was edited on the server (version "
                             f"{conflict.server_version}, last written by the adapter: {conflict.base_version}); "
                             "not overwritten: resolve with `ims-fhir conflicts`",
                    "issues": []})
            for unresolved in result.unresolved:
                new = [k for k in unresolved.records if k not in self._reported]
                self._reported.update(new)
                self.summary.failed_records += len(new) or 1
                self.report({"records": [{"record_type": t, "id": i} for t, i in unresolved.records], "status": None,
                             "error": unresolved.reason, "issues": []})
        entries, refusals = result.entries, result.refusals
        for entry in entries:
            if entry.outcome == KEPT:
                seen = (entry.resource_type, entry.resource_id or "")
                if seen in self._kept:
                    continue
                self._kept.add(seen)
            outcome = "kept" if entry.outcome == KEPT else entry.outcome
            if entry.method != "-":  # "-": not sent (kept, or unchanged by the identity map)
                self.summary.entries += 1
            setattr(self.summary, outcome, getattr(self.summary, outcome) + 1)
            counts = self.summary.by_type.setdefault(entry.resource_type, {})
            counts[entry.outcome] = counts.get(entry.outcome, 0) + 1
        for refusal in refusals:
            self._failed(refusal)

    def _failed(self, refusal: Refusal) -> None:
        records = list(refusal.records)
        new = [k for k in records if k not in self._reported]
        self._reported.update(new)
        self.summary.failed_records += len(new) if records else 1
        self.report({
            "records": [{"record_type": t, "id": i} for t, i in records],
            "status": getattr(refusal.error, "status", None),
            "error": str(refusal.error),
            "issues": refusal.issues(),
        })


# -- inputs --------------------------------------------------------------------------------------


def _is_fhir_ndjson(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            first = fh.readline()
        return b'"resourceType"' in first
    except OSError:
        return False


def _ndjson_folder_bundles(folder: Path, bundle_size: int, store: WorkStore) -> Iterator[dict[str, Any]]:
    """Regroup a convert NDJSON folder into self-contained Bundles (types in dependency order)."""
    files = {p.stem: p for p in folder.glob("*.ndjson") if p.name != "rejects.ndjson"}

    def read(rtype: str) -> Iterator[dict[str, Any]]:
        path = files.get(rtype)
        if path is None:
            return
        with path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    yield orjson.loads(line)

    orgs = list(read("Organization"))
    if len(orgs) != 1:
        raise UsageError(f"{folder}: pushing an NDJSON folder needs exactly one Organization (found {len(orgs)}); "
                         "push the output of one clinic at a time, or use --format bundle")
    index: dict[str, tuple[str, str, str]] = {}
    for rtype in files:
        for res in read(rtype):
            ident = (identifiers_of(res) or [{}])[0]
            index[res["id"]] = (res["resourceType"], ident.get("system", ""), ident.get("value", ""))
    ready: list[bytes] = []
    packer = BundlePacker(max_entries=bundle_size, organization=orgs[0], lookup=store.get_dep, remember=store.put_dep,
                          defer=lambda g: None, emit=lambda body, n: ready.append(body))
    org_id = orgs[0]["id"]

    def group(res: dict[str, Any]) -> MappedRecord:
        deps = []
        for ref in set(references(res)):
            rtype, _, rid = ref.partition("/")
            target = index.get(rid)
            if target and rid != org_id and rid != res["id"]:
                deps.append(Dependency(target[0], rid, target[1], target[2]))
        return MappedRecord("resource", res["id"], [res], sorted(deps, key=lambda d: d.id), res["id"])

    def observations(kind: str) -> Iterator[dict[str, Any]]:
        for res in read("Observation"):
            has_member, part_of = "hasMember" in res, "partOf" in res
            if (kind == "plain" and not has_member and not part_of) or (kind == "panel" and has_member and not part_of) \
                    or (kind == "part" and part_of):
                yield res

    # a session series before the Encounters and Procedures that name it
    streams: list[Iterator[dict[str, Any]]] = [read("Practitioner"), read("Patient"), read("EpisodeOfCare"),
                                               read("ServiceRequest"), read("Encounter"),
                                               observations("plain"), observations("panel"), read("Procedure"),
                                               observations("part")]
    streams += [read(t) for t in sorted(files) if t not in RESOURCE_TYPES]
    for stream in streams:
        for res in stream:
            packer.add(group(res), final=True)
            yield from _drain(ready)
    packer.flush()
    yield from _drain(ready)


def _drain(ready: list[bytes]) -> Iterator[dict[str, Any]]:
    for body in ready:
        yield orjson.loads(body)
    ready.clear()


@dataclass(frozen=True)
class PushOptions:
    bundle_size: int = 200
    dry_run: bool = False
    convert: ConvertOptions | None = None
    #: Bundles in flight at once; one patient's Bundles still go one after the other, in order.
    concurrency: int = 1
    #: the local state file (identity map, conflicts, audit); None: the default location
    #: (:func:`ims_fhir.sync.push_state.default_state_path`)
    state_path: Path | None = None
    #: False: no state, no ownership or If-Match (the engine of before issue 9)
    use_state: bool = True


@dataclass(frozen=True)
class Part:
    """What goes out as one delivery: a whole Bundle, or, to a server that takes no
    transaction, its shared part or one patient's part (``delivery.split``)."""

    bundle: dict[str, Any]
    #: the keyed pool's keys: its patients (a shared part: its entries)
    keys: frozenset[str]
    #: the Bundle's first part, which tallies the Bundle
    first: bool = True
    #: the shared part, which the other parts of its Bundle wait for
    shared: bool = False
    #: ``(type, identifier)`` of the shared entries a patient part carries again (tallied by
    #: the shared part)
    copies: frozenset[tuple[str, tuple[str, str]]] = frozenset()


def delivery_parts(client: FhirClient, bundle: dict[str, Any]) -> list[Part]:
    """The Bundle as one Part when the server takes it as a transaction (atomic, as written) or
    in batches (where a refused entry fails only its record); entry by entry, its shared part
    first, then one part per patient (``delivery.split``), so that one patient's refusal stops
    none of another's entries and, concurrently, the patients of a Bundle go in parallel."""
    whole = [Part(bundle, frozenset(patient_keys(bundle)))]
    if client.delivery_mode(bundle) != "entries":
        return whole
    shared, patients = patient_parts(bundle)
    if shared is None and len(patients) == 1:
        return whole
    parts = []
    copies: frozenset[tuple[str, tuple[str, str]]] = frozenset()
    if shared is not None:
        parts.append(Part(shared, frozenset(shared_keys(shared)), shared=True))
        copies = frozenset((e["resource"]["resourceType"], ident) for e in shared["entry"]
                           if (ident := primary_identifier(e["resource"])) is not None)
    for bundle_part in patients:
        parts.append(Part(bundle_part, frozenset(patient_keys(bundle_part)), first=not parts, copies=copies))
    return parts


def _without(result: BundleResult | Sent, copies: frozenset[tuple[str, tuple[str, str]]]) -> BundleResult | Sent:
    """``result`` less the entries that only confirm shared entries the shared part tallied
    (not sent again, or answered "unchanged")."""
    def keep(entry: EntryResult) -> bool:
        return not ((entry.resource_type, entry.identifier) in copies and entry.outcome in ("unchanged", KEPT))

    if isinstance(result, Sent):
        delivery = dataclasses.replace(result.delivery, entries=[e for e in result.delivery.entries if keep(e)])
        return dataclasses.replace(result, delivery=delivery, skipped=[e for e in result.skipped if keep(e)])
    return dataclasses.replace(result, entries=[e for e in result.entries if keep(e)])


def _push_concurrently(client: FhirClient, config: ClientConfig, pusher: Pusher, bundles: Iterator[dict[str, Any]],
                       concurrency: int, progress: Callable[[PushSummary], None] | None, session: Any) -> None:
    """Deliver with up to ``concurrency`` Bundles in flight (see :class:`~ims_fhir.client.keyed_pool.KeyedPool`).
    To a server that takes Bundles entry by entry, their parts (:func:`delivery_parts`) go up
    to N x fan-out at once, the throttle's request slots keeping the requests on the wire to
    N x fan-out too: each part waits a round trip per dependency level, and N parts at a time
    left a server behind a 100 ms link at 60-80% of what it takes.

    One :class:`~ims_fhir.delivery.Sender` per worker thread (the engine's rule: one client,
    one connection pool, one Bundle at a time per Sender), or with the push state one
    :class:`~ims_fhir.sync.reconcile.TargetSync` per thread over the one state file (whose
    methods are locked transactions); the clients share the auth (one token), the
    CapabilityStatement and the throttle (one 429 back-off for the target).
    """
    local = threading.local()
    clients: list[FhirClient] = []
    lock = threading.Lock()

    def send(part: Part) -> tuple[BundleResult | Sent, Part]:
        mine: Callable[[dict[str, Any]], BundleResult | Sent] | None = getattr(local, "send", None)
        if mine is None:
            worker = FhirClient(config, session=session, throttle=client.transport.throttle)
            worker._capabilities = client._capabilities  # same server, same statement
            if pusher.sync is not None:
                mine = TargetSync(worker, pusher.sync.state, pusher.sync.target).send
            else:
                mine = Sender(worker, scheme=pusher.sender.scheme).send
            local.send = mine
            with lock:
                clients.append(worker)
        return mine(part.bundle), part

    def done(outcome: tuple[BundleResult | Sent, Part]) -> None:
        with lock:
            pusher.record(*outcome)
            if progress is not None:
                progress(pusher.summary)

    first = next(bundles, None)
    if first is None:
        return
    # Entry by entry a Bundle part waits a round trip per dependency level: more parts go at
    # once, within the throttle's request slots (N x fan-out requests on the wire)
    entrywise = client.delivery_mode(first) == "entries"
    workers = client.transport.throttle.requests if entrywise else concurrency
    pool: KeyedPool[tuple[BundleResult | Sent, Part]] = KeyedPool(workers, on_done=done)
    try:
        for bundle in itertools.chain([first], bundles):
            if pool.failed:
                break  # the target is down or refuses us: stop feeding, report the error
            shared: int | None = None
            for part in delivery_parts(client, bundle):
                number = pool.submit(part.keys, lambda p=part: send(p), after=shared)  # type: ignore[misc]
                if part.shared:
                    shared = number
    finally:
        try:
            pool.close()
        finally:
            for worker in clients:
                worker.close()


def iter_bundles(paths: list[Path], options: PushOptions, on_reject: Callable[[dict[str, Any]], None],
                 summary: PushSummary) -> Iterator[dict[str, Any]]:
    """The Bundles to send, input by input, in order, built as they are sent (nothing on disk
    but the bounded work stores)."""
    kinds: list[tuple[Path, str]] = []
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder", source=str(path))
        if path.is_dir() and sorted(path.glob("bundle-*.json")):
            kinds.append((path, "bundles"))
        elif path.is_dir() and any(_is_fhir_ndjson(p) for p in path.glob("*.ndjson")):
            kinds.append((path, "fhir-ndjson"))
        elif path.suffix == ".json" and path.is_file() and _looks_like_bundle(path):
            kinds.append((path, "bundle"))
        else:
            kinds.append((path, "ims"))
    ims_inputs = [p for p, kind in kinds if kind == "ims"]
    base = options.convert or ConvertOptions(out_dir=Path("."))
    conv = Converter(ConvertOptions(**{**base.__dict__, "output_format": "bundle", "bundle_size": options.bundle_size}))
    opened = conv.open_all(ims_inputs)  # an unreadable input or a bad source stops the run before anything is sent
    for path, kind in kinds:
        if kind == "bundles":
            for bundle_path in sorted(path.glob("bundle-*.json")):
                yield _load_bundle(bundle_path)
        elif kind == "fhir-ndjson":
            with WorkStore(base.temp_dir) as store:
                yield from _ndjson_folder_bundles(path, options.bundle_size, store)
        elif kind == "bundle":
            yield _load_bundle(path)
    if ims_inputs:
        for kind, item in conv.outputs(ims_inputs, opened):
            if kind == "bundle":
                yield orjson.loads(item)
            elif kind == "rejected":
                summary.rejected_records += 1
                on_reject(item.as_dict() | {"stage": "convert"})


def _looks_like_bundle(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(4096)
    return bool(re.search(rb'"resourceType"\s*:\s*"Bundle"', head))


def _load_bundle(path: Path) -> dict[str, Any]:
    try:
        bundle: dict[str, Any] = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable Bundle ({exc})", source=str(path)) from exc
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
        raise InputError(f"{path}: not a transaction Bundle", source=str(path))
    return bundle


def push(paths: list[Path], client_config: ClientConfig | None, options: PushOptions, *,
         report: Callable[[dict[str, Any]], None], progress: Callable[[PushSummary], None] | None = None,
         session: Any = None) -> PushSummary:
    """Push inputs; failures go to ``report`` one line each; returns the summary."""
    summary = PushSummary()
    bundles = iter_bundles(paths, options, report, summary)
    if options.dry_run:
        for bundle in bundles:
            summary.bundles += 1
            summary.entries += len(bundle.get("entry", []))
        return summary
    if client_config is None:
        raise UsageError("--server is required (or use --dry-run)")
    with FhirClient(client_config, session=session) as client, contextlib.ExitStack() as stack:
        # The least a server must offer; transactions and conditional create/update are used
        # when declared, else emulated entry by entry (ims_fhir.client.entrywise).
        sync = None
        if options.use_state:
            from .sync.push_state import PushState, default_state_path

            client.require(sync_requirements(DELIVERED_TYPES))
            state = stack.enter_context(PushState(options.state_path or default_state_path()))
            sync = TargetSync(client, state, client.base_url)
        else:
            client.require(delivery_requirements(DELIVERED_TYPES))
        pusher = Pusher(Sender(client), summary, report, sync)
        if options.concurrency > 1:
            # one 429 back-off for the workers; `concurrency` is also the fan-out of a Bundle
            # sent entry by entry
            client.transport.throttle = Throttle(concurrency=options.concurrency)
            _push_concurrently(client, client_config, pusher, bundles, options.concurrency, progress, session)
            return summary
        for bundle in bundles:
            pusher.push(bundle)
            if progress is not None:
                progress(summary)
    return summary


__all__ = ["PushOptions", "PushSummary", "Pusher", "iter_bundles", "push"]
