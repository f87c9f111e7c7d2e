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

The sending engine is :func:`deliver` (one Bundle in, per-entry results and per-record
refusals out); ``ims-fhir push`` (:class:`Pusher`) and the sync worker
(:mod:`ims_fhir.sync.worker`) both send through it.

Idempotent by construction: Patients/Practitioners/Organizations are conditional creates
on their identifiers, everything else a conditional update on its business identifier.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

from .client import ClientConfig, EntryResponse, FhirClient, push_requirements
from .convert import ConvertOptions, Converter
from .errors import (
    FhirAmbiguousMatchError,
    FhirAuthError,
    FhirClientSideError,
    FhirError,
    InputError,
    OutcomeIssue,
    UsageError,
)
from .fhir.bundles import SHARED_TYPES, BundlePacker
from .mapping.context import Dependency, MappedRecord
from .workstore import WorkStore

RESOURCE_TYPES = ("Organization", "Patient", "Practitioner", "Encounter", "Observation", "Procedure")
_RECORD_KINDS = {
    "patient": "patient", "practitioner": "practitioner", "organization": "source",
    "assessment": "assessment", "assessment-finding": "assessment", "treatment": "treatment",
    "treatment-finding": "treatment", "encounter": None,
}


@dataclass
class PushSummary:
    bundles: int = 0
    entries: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed_records: int = 0
    rejected_records: int = 0
    by_type: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if (self.failed_records or self.rejected_records) else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "bundles": self.bundles, "sent": self.entries, "created": self.created, "updated": self.updated,
            "unchanged": self.unchanged, "failed_records": self.failed_records,
            "rejected_records": self.rejected_records,
            "by_type": {t: dict(sorted(c.items())) for t, c in sorted(self.by_type.items())},
        }


def record_key(identifier: dict[str, Any]) -> tuple[str, str] | None:
    """(record type, record id) a resource's business identifier belongs to."""
    system, value = identifier.get("system", ""), identifier.get("value", "")
    kind = system.rsplit("/", 1)[-1]
    if kind == "encounter" and "/" in value:
        kind, _, value = value.partition("/")
        return kind, value
    if kind == "body-structure" and value.count("/") >= 4:  # {record type}/{id}/{vocabulary}/{slug}/{side}
        owner, _, value = value.rsplit("/", 3)[0].partition("/")
        return owner, value
    if kind == "diagnosis":  # {assessment id}/{i}
        return "assessment", value.rsplit("/", 1)[0]
    if kind == "consent":  # the treatment id
        return "treatment", value
    record_type = _RECORD_KINDS.get(kind)
    if record_type is None:
        return None
    if kind.endswith("-finding"):
        value = value.split("/", 1)[0]
    return record_type, value


def _outcome_codes(entry_response: dict[str, Any]) -> str:
    outcome = entry_response.get("outcome") or {}
    codes = [c.get("code", "") for issue in outcome.get("issue", []) for c in issue.get("details", {}).get("coding", [])]
    return " ".join(codes)


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def components(bundle: dict[str, Any]) -> list[tuple[list[tuple[str, str]], dict[str, Any]]]:
    """Split a transaction into one transaction per record, for isolating a refused record.

    A record's entries are those whose business identifier belongs to it (its Encounter,
    panel and findings; its Procedure and the Observations part of it). Each part also
    carries every entry its entries refer to by ``urn:uuid`` (shared Patient/Practitioner/
    Organization entries, the assessment panel a treatment follows from), so each part can
    be posted on its own. Returns ``(records the part is about, part)`` pairs.
    """
    entries = bundle.get("entry", [])
    by_url = {e["fullUrl"]: e for e in entries if e.get("fullUrl")}
    own: dict[tuple[str, str], list[str]] = {}
    for url, entry in by_url.items():
        ident = (entry["resource"].get("identifier") or [{}])[0]
        key = record_key(ident) or ("resource", url)
        own.setdefault(key, []).append(url)
    refs = {url: {r for r in _references(e["resource"]) if r in by_url} for url, e in by_url.items()}
    referenced = set().union(*refs.values()) if refs else set()
    parts = []
    for key, urls in own.items():
        types = {by_url[u]["resource"]["resourceType"] for u in urls}
        if types <= set(SHARED_TYPES) and any(u in referenced for u in urls):
            continue  # a shared entry travels with the records that refer to it
        wanted = set(urls)
        stack = [r for u in urls for r in refs[u]]
        while stack:
            ref = stack.pop()
            if ref not in wanted:
                wanted.add(ref)
                stack.extend(refs[ref])
        part = [e for e in entries if e.get("fullUrl") in wanted]
        parts.append(([key], {"resourceType": "Bundle", "type": "transaction", "entry": part}))
    return parts


@dataclass(frozen=True, slots=True)
class EntryResult:
    """What the server did with one entry of a transaction that went through."""

    record: tuple[str, str] | None  # the record the entry belongs to (None: not one of ours)
    resource_type: str
    method: str
    outcome: str  # created | updated | unchanged
    status: int
    resource_id: str | None = None
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A part of a transaction the server refused (4xx), with the records it is about."""

    records: list[tuple[str, str]]
    part: dict[str, Any]
    error: FhirError


@dataclass
class Delivery:
    """The result of sending one Bundle: per-entry results of what went through, and refusals."""

    entries: list[EntryResult] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def _entry_results(bundle: dict[str, Any], response: Any) -> list[EntryResult]:
    results = []
    for entry, raw in zip(bundle.get("entry", []), (response.resource or {}).get("entry", [])):
        res = raw.get("response", {})
        parsed = EntryResponse.from_entry(raw)
        codes = _outcome_codes(res)
        method = entry["request"]["method"]
        if parsed.status == 201:
            outcome = "created"
        elif "NO_CHANGE" in codes or method == "POST":
            outcome = "unchanged"
        else:
            outcome = "updated"
        resource = entry["resource"]
        results.append(EntryResult(
            record=record_key((resource.get("identifier") or [{}])[0]), resource_type=resource["resourceType"],
            method=method, outcome=outcome, status=parsed.status, resource_id=parsed.resource_id,
            version_id=parsed.version_id))
    return results


def deliver(client: FhirClient, bundle: dict[str, Any]) -> Delivery:
    """Send one transaction Bundle; when the server refuses it (4xx), send each record's part alone.

    The one sending engine of ``ims-fhir push`` and the sync worker. Errors that concern the
    whole target rather than a record (connection, 5xx/429 after the client's retries,
    401/403, capability) are raised; a record the server refuses becomes a
    :class:`Rejection` carrying the server's error (status and OperationOutcome issues).
    """
    delivery = Delivery()
    try:
        response = client.transaction(bundle)
    except FhirAuthError:
        raise
    except (FhirClientSideError, FhirAmbiguousMatchError) as exc:
        parts = components(bundle)
        if len(parts) <= 1:
            delivery.rejections.append(Rejection([k for keys, _ in parts for k in keys], bundle, exc))
            return delivery
        for keys, part in parts:
            try:
                delivery.entries.extend(_entry_results(part, client.transaction(part)))
            except FhirAuthError:
                raise
            except (FhirClientSideError, FhirAmbiguousMatchError) as part_exc:
                delivery.rejections.append(Rejection(keys, part, part_exc))
        return delivery
    delivery.entries.extend(_entry_results(bundle, response))
    return delivery


def rejected_records(rejection: Rejection) -> list[tuple[str, str]]:
    """The records a refusal is about; an ambiguous match also names the shared record at fault."""
    exc = rejection.error
    records = [k for k in rejection.records if k[0] != "resource"]
    if isinstance(exc, FhirAmbiguousMatchError) or getattr(exc, "status", None) == 412:
        for entry in rejection.part.get("entry", []):
            if entry["resource"]["resourceType"] in SHARED_TYPES:
                key = record_key((entry["resource"].get("identifier") or [{}])[0])
                if key and key not in records and key[0] != "source" and _matches_ambiguous(exc, entry):
                    records.insert(0, key)
    return records


def _matches_ambiguous(exc: FhirError, entry: dict[str, Any]) -> bool:
    """Whether the server's message names this entry's match URL (HAPI quotes it)."""
    text = str(exc)
    url = entry.get("request", {}).get("ifNoneExist", "")
    return not url or url.split("=", 1)[-1].split(",")[0].split("|")[-1] in text or entry["resource"]["resourceType"] in text


def issues_as_dicts(exc: FhirError) -> list[dict[str, Any]]:
    issues: list[OutcomeIssue] = list(getattr(exc, "issues", []))
    return [{"severity": i.severity, "code": i.code, "diagnostics": i.diagnostics, "expression": list(i.expression)}
            for i in issues]


class Pusher:
    """Sends transaction Bundles with :func:`deliver`, tallies outcomes, reports failing records."""

    def __init__(self, client: FhirClient, summary: PushSummary, report: Callable[[dict[str, Any]], None]) -> None:
        self.client = client
        self.summary = summary
        self.report = report
        self._reported: set[tuple[str, str]] = set()

    def push(self, bundle: dict[str, Any]) -> None:
        self.summary.bundles += 1
        delivery = deliver(self.client, bundle)
        for result in delivery.entries:
            self.summary.entries += 1
            setattr(self.summary, result.outcome, getattr(self.summary, result.outcome) + 1)
            counts = self.summary.by_type.setdefault(result.resource_type, {})
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        for rejection in delivery.rejections:
            self._failed(rejection)

    def _failed(self, rejection: Rejection) -> None:
        records = rejected_records(rejection)
        new = [k for k in records if k not in self._reported]
        self._reported.update(new)
        self.summary.failed_records += len(new) if records else 1
        self.report({
            "records": [{"record_type": t, "id": i} for t, i in records],
            "status": getattr(rejection.error, "status", None),
            "error": str(rejection.error),
            "issues": issues_as_dicts(rejection.error),
        })


# -- inputs --------------------------------------------------------------------------------------


def _is_fhir_ndjson(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            first = fh.readline()
        return b'"resourceType"' in first
    except OSError:
        return False


def _ndjson_folder_bundles(folder: Path, bundle_size: int, store: WorkStore, emit: Callable[[bytes, int], None]) -> None:
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
            ident = (res.get("identifier") or [{}])[0]
            index[res["id"]] = (res["resourceType"], ident.get("system", ""), ident.get("value", ""))
    packer = BundlePacker(max_entries=bundle_size, organization=orgs[0], lookup=store.get_dep, remember=store.put_dep,
                          defer=lambda g: None, emit=emit)
    org_id = orgs[0]["id"]

    def group(res: dict[str, Any]) -> MappedRecord:
        deps = []
        for ref in set(_references(res)):
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

    streams: list[Iterator[dict[str, Any]]] = [read("Practitioner"), read("Patient"), read("Encounter"),
                                               observations("plain"), observations("panel"), read("Procedure"),
                                               observations("part")]
    streams += [read(t) for t in sorted(files) if t not in RESOURCE_TYPES]
    for stream in streams:
        for res in stream:
            packer.add(group(res), final=True)
    packer.flush()


@dataclass(frozen=True)
class PushOptions:
    bundle_size: int = 200
    dry_run: bool = False
    convert: ConvertOptions | None = None


def iter_bundles(paths: list[Path], options: PushOptions, workdir: Path,
                 on_reject: Callable[[dict[str, Any]], None], summary: PushSummary) -> Iterator[dict[str, Any]]:
    """The Bundles to send, input by input, in order."""
    ims_inputs: list[Path] = []
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder", source=str(path))
        if path.is_dir() and sorted(path.glob("bundle-*.json")):
            for bundle_path in sorted(path.glob("bundle-*.json")):
                yield _load_bundle(bundle_path)
        elif path.is_dir() and any(_is_fhir_ndjson(p) for p in path.glob("*.ndjson")):
            out = workdir / f"regrouped-{len(list(workdir.iterdir()))}"
            out.mkdir()
            counter = iter(range(1, 10**9))

            def write(body: bytes, entries: int, out: Path = out) -> None:
                (out / f"bundle-{next(counter):06d}.json").write_bytes(body)

            with WorkStore(str(workdir)) as store:
                _ndjson_folder_bundles(path, options.bundle_size, store, write)
            for bundle_path in sorted(out.glob("bundle-*.json")):
                yield _load_bundle(bundle_path)
        elif path.suffix == ".json" and path.is_file() and _looks_like_bundle(path):
            yield _load_bundle(path)
        else:
            ims_inputs.append(path)
    if ims_inputs:
        base = options.convert or ConvertOptions(out_dir=workdir)
        out = workdir / "converted"
        conv_opts = ConvertOptions(**{**base.__dict__, "out_dir": out, "output_format": "bundle",
                                      "bundle_size": options.bundle_size})
        conv = Converter(conv_opts)
        conv.run(ims_inputs)
        summary.rejected_records += conv.summary.rejected
        for line in (out / "rejects.ndjson").read_bytes().splitlines():
            if line.strip():
                on_reject(orjson.loads(line) | {"stage": "convert"})
        for bundle_path in sorted(out.glob("bundle-*.json")):
            yield _load_bundle(bundle_path)


def _looks_like_bundle(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(4096)
    return bool(re.search(rb'"resourceType"\s*:\s*"Bundle"', head))


def _load_bundle(path: Path) -> dict[str, Any]:
    try:
        bundle = orjson.loads(path.read_bytes())
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
    with tempfile.TemporaryDirectory(prefix="ims-fhir-push-", dir=options.convert.temp_dir if options.convert else None) as tmp:
        bundles = iter_bundles(paths, options, Path(tmp), report, summary)
        if options.dry_run:
            for bundle in bundles:
                summary.bundles += 1
                summary.entries += len(bundle.get("entry", []))
            return summary
        if client_config is None:
            raise UsageError("--server is required (or use --dry-run)")
        with FhirClient(client_config, session=session) as client:
            client.require(push_requirements(RESOURCE_TYPES, conditional_update=True))
            pusher = Pusher(client, summary, report)
            for bundle in bundles:
                pusher.push(bundle)
                if progress is not None:
                    progress(summary)
    return summary


__all__ = ["Delivery", "EntryResult", "PushOptions", "PushSummary", "Pusher", "Rejection", "components", "deliver",
           "issues_as_dicts", "iter_bundles", "push", "record_key", "rejected_records"]
