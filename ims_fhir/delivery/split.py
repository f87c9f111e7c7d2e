"""Splitting a refused transaction into one transaction per record.

Terms:

- *part*: the entries of a Bundle that belong to one record (by their business identifier:
  a record's Encounter, panel and findings; its Procedure and the Observations part of it),
  plus every entry they refer to by ``urn:uuid`` (the shared Organization, Patient and
  Practitioner entries, the assessment panel a treatment follows from), so that each part
  can be posted on its own and only the records the server really refuses fail.
- An entry that is not one of ours (no identifier of the scheme) is a part of its own,
  keyed ``("resource", fullUrl)``.
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


__all__ = ["patient_keys", "record_parts", "references"]
