"""The resource set as the reverse mappers see it: entries, reference keys, a lookup interface.

The reverse mapping must see a resource set whole: an assessment is a panel plus the
Observations it lists, a treatment is a Procedure plus the Observations ``partOf`` it, and
a record names its patient by the Patient's chart number, found by following a reference.
The index keeps every resource once, with the keys a reference can reach it by:

- ``R|Type/id`` (the resource's id), ``U|<fullUrl>`` (a Bundle entry's full URL, e.g.
  ``urn:uuid:...``), ``I|Type|system|value`` (each business identifier, for conditional
  references ``Type?identifier=system|value`` and logical references);
- *links*: ``hasMember`` and ``partOf`` references, resolved once every resource is in,
  so that "the Observations part of this Procedure" is one query.

The mappers only look things up (:class:`ResourceLookup`); the store behind it, an
SQLite index, lives outside the mapping package (:mod:`ims_fhir.importing.index`), so the
mapping does no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

import orjson

#: states of a resource (see outcomes.py)
PENDING, MAPPED, COVERED, REJECTED = 0, 1, 2, 3

_TYPE_ID = re.compile(r"^(?:(?P<base>[a-z][a-z0-9+.-]*://.+?/))?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
                      r"(?:/_history/[^/]+)?$")
_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_UNESCAPED_BAR = re.compile(r"(?<!\\)\|")
_ESCAPE = re.compile(r"\\(.)")


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """JSON bytes of anything JSON-like, numbers beyond 64 bits included (orjson refuses them)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys, default=repr).encode()


def loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


@dataclass(slots=True)
class Entry:
    """One resource of the set, with where it came from."""

    seq: int
    resource_type: str
    resource: dict[str, Any]
    origin: str
    full_url: str | None
    role: str

    @property
    def label(self) -> str:
        return resource_label(self.resource, self.full_url, self.origin)


def resource_label(resource: Any, full_url: str | None, origin: str) -> str:
    """How a resource is named in rejects and reports: ``Type/id``, else its fullUrl, else ``Type@origin``."""
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    rid = resource.get("id") if isinstance(resource, dict) else None
    if isinstance(rtype, str) and isinstance(rid, str) and rid:
        return f"{rtype}/{rid}"
    if full_url:
        return full_url
    return f"{rtype if isinstance(rtype, str) else 'resource'}@{origin}"


def identifier_tokens(query: str) -> list[tuple[str, str]]:
    """``system|value`` pairs of the ``identifier`` parameter of a search query (FHIR escaping undone)."""
    pairs = []
    for param in query.split("&"):
        name, _, value = param.partition("=")
        if name != "identifier":
            continue
        for token in _UNESCAPED_COMMA.split(value):
            parts = _UNESCAPED_BAR.split(token, maxsplit=1)
            if len(parts) != 2:
                continue
            system, val = (_ESCAPE.sub(r"\1", unquote(p)) for p in parts)
            if val:
                pairs.append((system, val))
    return pairs


def reference_keys(reference: str, referrer_full_url: str | None = None) -> list[str]:
    """The index keys a reference string can reach, most specific first."""
    if reference.startswith("urn:"):
        return ["U|" + reference]
    if "?" in reference:
        rtype, _, query = reference.partition("?")
        return [f"I|{rtype}|{system}|{value}" for system, value in identifier_tokens(query)]
    m = _TYPE_ID.match(reference)
    if m is None:
        return ["U|" + reference]
    local = f"{m['type']}/{m['id']}"
    if m["base"]:
        return ["U|" + m["base"] + local, "R|" + local]
    keys = []
    if referrer_full_url:
        # a relative reference inside a Bundle is relative to the base of the referring entry
        rm = _TYPE_ID.match(referrer_full_url)
        if rm is not None and rm["base"]:
            keys.append("U|" + rm["base"] + local)
    keys.append("R|" + local)
    return keys


def reference_type(reference: str) -> str | None:
    """The resource type a reference string names, when it says."""
    if "?" in reference:
        head = reference.partition("?")[0]
        return head if head[:1].isupper() else None
    m = _TYPE_ID.match(reference)
    return m["type"] if m else None


def aliases(resource: dict[str, Any], full_url: str | None) -> list[str]:
    """Every key of the index that reaches this resource."""
    rtype = resource["resourceType"]
    keys = []
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        keys.append(f"R|{rtype}/{rid}")
    if full_url:
        keys.append("U|" + full_url)
    for ident in resource.get("identifier") or ():
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            keys.append(f"I|{rtype}|{ident.get('system') or ''}|{ident['value']}")
    return keys


class ResourceLookup(Protocol):
    """What the reverse mappers ask of the resource set."""

    def lookup(self, keys: Iterable[str]) -> Entry | None:
        """The entry one of the keys (see :func:`reference_keys`) reaches, if any."""
        ...

    def linked_from(self, kind: str, target: int) -> list[Entry]:
        """The entries whose ``kind`` link (``hasMember``, ``partOf``) points at entry ``target``."""
        ...
