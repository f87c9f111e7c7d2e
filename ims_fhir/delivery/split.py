"""Splitting a refused transaction into one transaction per record.

Terms:

- *part*: the entries of a Bundle that belong to one record (by their business identifier:
  a record's Encounter, panel and findings; its Procedure and the Observations part of it),
  plus every entry they refer to by ``urn:uuid`` (the shared Organization, Patient and
  Practitioner entries, the assessment panel a treatment follows from), so that each part
  can be posted on its own and only the records the server really refuses fail.
- An entry that is not one of ours (no identifier of the scheme) is a part of its own,
  keyed ``("resource", fullUrl)``.
- *patient part* (:func:`patient_parts`, for a server that takes no transaction, where a
  Bundle is no longer one atomic write anyway): the entries of a Bundle that lead to one
  patient's Patient entry by reference (that Patient, its Encounters, findings, sessions...),
  with the entries without a patient they refer to (the Organization, the Practitioners),
  so that each patient's part goes on its own: one patient's refusal does not stop another
  patient's entries, and the parts of different patients travel in parallel instead of the
  Bundles that two patients share chaining every patient's Bundles into one sequence.
  Entries that lead to two patients keep those patients in one part.
- *shared part*: the entries without a patient (in our Bundles the Organization and the
  Practitioners). Sent before the patient parts of its Bundle, so that parts in parallel
  never create one of them twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..fhir.bundles import SHARED_TYPES
from ..identifiers import IdentifierScheme, RecordKey

Bundle = dict[str, Any]
#: the resources of a session series: every session of it carries them (mapping/treatment.py)
SERIES_TYPES = ("EpisodeOfCare", "ServiceRequest")


def references(node: Any) -> Iterator[str]:
    """Every ``reference`` string inside a resource."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def record_parts(bundle: Bundle, scheme: IdentifierScheme | None) -> list[tuple[RecordKey, Bundle]]:
    """``(record, part)`` pairs: the Bundle split as described in the module docstring."""
    entries = bundle.get("entry", [])
    by_url = {e["fullUrl"]: e for e in entries if e.get("fullUrl")}
    own: dict[RecordKey, list[str]] = {}
    for url, entry in by_url.items():
        key = (scheme.record_of(entry["resource"]) if scheme is not None else None) or ("resource", url)
        own.setdefault(key, []).append(url)
    refs = {url: {r for r in references(e["resource"]) if r in by_url} for url, e in by_url.items()}
    referenced: set[str] = set().union(*refs.values()) if refs else set()
    parts = []
    for key, urls in own.items():
        types = {by_url[u]["resource"]["resourceType"] for u in urls}
        if types <= {*SHARED_TYPES, *SERIES_TYPES} and any(u in referenced for u in urls):
            continue  # a shared entry (or a session series) travels with the records that refer to it
        wanted = set(urls)
        stack = [r for u in urls for r in refs[u]]
        while stack:
            ref = stack.pop()
            if ref not in wanted:
                wanted.add(ref)
                stack.extend(refs[ref])
        part = [e for e in entries if e.get("fullUrl") in wanted]
        parts.append((key, {"resourceType": "Bundle", "type": "transaction", "entry": part}))
    return parts


def patient_keys(bundle: dict[str, Any]) -> set[str]:
    """The patients a Bundle is about (``system|value`` of its Patient entries): concurrent
    delivery never has two Bundles of one patient in flight (see ``client.keyed_pool``)."""
    keys = set()
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Patient":
            for ident in resource.get("identifier") or []:
                keys.add(f"{ident.get('system', '')}|{ident.get('value', '')}")
    return keys


def _reachable(start: str, refs: dict[str, set[str]]) -> set[str]:
    seen = {start}
    stack = list(refs[start])
    while stack:
        url = stack.pop()
        if url not in seen:
            seen.add(url)
            stack.extend(refs[url])
    return seen


def shared_keys(bundle: Bundle) -> set[str]:
    """Keys of the entries of a shared part (``type|system|value`` of the first identifier):
    two shared parts with one of these keys are never sent at the same time."""
    keys = set()
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") or {}
        ident = next(iter(resource.get("identifier") or []), None) or {}
        if ident.get("value"):
            keys.add(f"shared:{resource.get('resourceType')}|{ident.get('system', '')}|{ident['value']}")
    return keys


def patient_parts(bundle: Bundle) -> tuple[Bundle | None, list[Bundle]]:
    """``(shared part or None, patient parts)`` of a transaction Bundle (see the terms): the
    patient parts in the order of their first entry, each entry in Bundle order. A Bundle
    that cannot be split (an entry without ``fullUrl``) or need not be (one patient, nothing
    shared) is its own one part."""
    entries = bundle.get("entry", [])
    if any(not e.get("fullUrl") for e in entries):
        return None, [bundle]
    by_url = {e["fullUrl"]: e for e in entries}
    refs = {url: {r for r in references(e.get("resource")) if r in by_url and r != url} for url, e in by_url.items()}
    patients = [url for url, e in by_url.items() if (e.get("resource") or {}).get("resourceType") == "Patient"]
    # patients that one entry leads to together stay in one part (union-find)
    leader = {p: p for p in patients}

    def find(p: str) -> str:
        while leader[p] != p:
            leader[p] = leader[leader[p]]
            p = leader[p]
        return p

    reaches: dict[str, list[str]] = {}
    for url in by_url:
        reachable = _reachable(url, refs) if patients else set()
        found = [p for p in patients if p in reachable]
        reaches[url] = found
        for other in found[1:]:
            leader[find(other)] = find(found[0])
    groups: dict[str, set[str]] = {}
    shared: list[str] = []
    for url, found in reaches.items():
        if found:
            groups.setdefault(find(found[0]), set()).add(url)
        else:
            shared.append(url)
    if len(groups) <= 1 and not shared:
        return None, [bundle]

    def part(urls: set[str]) -> Bundle:
        return {"resourceType": "Bundle", "type": "transaction", "entry": [e for e in entries if e["fullUrl"] in urls]}

    parts = []
    for urls in groups.values():
        wanted: set[str] = set()
        for url in urls:
            wanted |= _reachable(url, refs)
        parts.append(part(wanted))
    return (part(set(shared)) if shared else None), parts


__all__ = ["patient_keys", "patient_parts", "record_parts", "references", "shared_keys"]
