"""Bundles as the client sees them: search pages, next links, transaction chunks.

Terms
-----
search page
    One ``searchset`` (or ``history``) Bundle returned by a search; :class:`SearchPage`
    sorts its entries by ``entry.search.mode``: ``match`` (the resources searched for;
    entries without a mode count as matches), ``include`` (added by ``_include`` /
    ``_revinclude``) and ``outcome`` (an OperationOutcome with warnings).
next link
    ``Bundle.link`` with ``relation = "next"``: the URL of the following page.
transaction chunk
    A slice of at most N entries sent as one ``transaction`` Bundle. Each chunk commits
    on its own, in order, so an entry may only point at an earlier entry through a
    ``urn:uuid:`` fullUrl inside the same chunk; :func:`chunk_entries` refuses a split
    that would break such a reference. References by conditional URL
    (``Patient?identifier=...``) or by deterministic id are unaffected by chunking.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ims_fhir.errors import UsageError

Resource = dict[str, Any]
Entry = dict[str, Any]


def next_link(bundle: Mapping[str, Any]) -> str | None:
    """The URL of the next page of a Bundle, or None on the last page."""
    for link in bundle.get("link") or ():
        if isinstance(link, Mapping) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of search (or history) results."""

    bundle: Resource

    def _resources(self, *modes: str | None) -> list[Resource]:
        found = []
        for entry in self.bundle.get("entry") or ():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("resource"), dict):
                continue
            search = entry.get("search")
            mode = search.get("mode") if isinstance(search, Mapping) else None
            if mode in modes:
                found.append(entry["resource"])
        return found

    @property
    def matches(self) -> list[Resource]:
        """The resources that matched (mode ``match``, or no mode given)."""
        return self._resources("match", None)

    @property
    def included(self) -> list[Resource]:
        """Resources added by ``_include`` / ``_revinclude``."""
        return self._resources("include")

    @property
    def outcomes(self) -> list[Resource]:
        """OperationOutcomes the server added to the page (warnings about the search)."""
        return self._resources("outcome")

    @property
    def total(self) -> int | None:
        total = self.bundle.get("total")
        return total if isinstance(total, int) else None

    @property
    def next_url(self) -> str | None:
        return next_link(self.bundle)


def _references(node: Any) -> Iterator[str]:
    """Every ``reference`` string inside a resource (depth-first)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("reference")
            if isinstance(ref, str):
                yield ref
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def chunk_entries(entries: Sequence[Entry], size: int) -> Iterator[list[Entry]]:
    """Split transaction entries into chunks of at most ``size``, keeping their order.

    Raises UsageError if an entry refers to a ``urn:uuid:`` fullUrl that lands in
    another chunk (the server could not resolve it).
    """
    if size < 1:
        raise UsageError(f"transaction chunk size must be at least 1, got {size}")
    chunk_of: dict[str, int] = {}
    for index, entry in enumerate(entries):
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
            chunk_of[full_url] = index // size
    for index, entry in enumerate(entries):
        for ref in _references(entry.get("resource")):
            target = chunk_of.get(ref)
            if target is not None and target != index // size:
                raise UsageError(
                    f"entry {index} refers to {ref}, which a transaction chunk size of {size} puts in another chunk; "
                    "use conditional references or a larger chunk size"
                )
    for start in range(0, len(entries), size):
        yield list(entries[start : start + size])


def transaction_bundle(entries: Iterable[Entry], *, bundle_type: str = "transaction") -> Resource:
    """A transaction (or batch) Bundle holding ``entries``."""
    if bundle_type not in ("transaction", "batch"):
        raise UsageError(f"bundle type must be 'transaction' or 'batch', not {bundle_type!r}")
    return {"resourceType": "Bundle", "type": bundle_type, "entry": list(entries)}


def transaction_bundles(entries: Sequence[Entry], size: int) -> Iterator[Resource]:
    """One transaction Bundle per chunk of :func:`chunk_entries`."""
    for chunk in chunk_entries(entries, size):
        yield transaction_bundle(chunk)


__all__ = ["Entry", "SearchPage", "chunk_entries", "next_link", "transaction_bundle", "transaction_bundles"]
