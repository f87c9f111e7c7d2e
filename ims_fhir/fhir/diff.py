"""Field-level difference of two versions of one FHIR resource (for conflicts).

Terms:

- *content*: a resource without what the server manages (``id``, ``meta``, ``text``): two
  versions with equal content say the same thing.
- *change*: ``(path, clinic value, server value)`` at the deepest path where the two differ;
  paths are FHIRPath-like (``status``, ``note[0].text``, ``bodySite[1].coding[0].code``). A value
  present on one side only has ``None`` on the other. Lists are compared position by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One difference between the clinic's and the server's version, at a FHIRPath-like ``path``."""

    path: str
    clinic: Any
    server: Any

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "clinic": self.clinic, "server": self.server}


#: elements the server manages, left out of the comparison
SERVER_MANAGED = ("id", "meta", "text")


def content(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without its server-managed elements."""
    return {k: v for k, v in resource.items() if k not in SERVER_MANAGED}


def field_diff(clinic: dict[str, Any], server: dict[str, Any]) -> list[FieldChange]:
    """Every change between two versions of a resource (see the terms), in path order."""
    changes: list[FieldChange] = []
    _walk("", content(clinic), content(server), changes)
    return changes


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk(path: str, a: Any, b: Any, out: list[FieldChange]) -> None:
    if a == b:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _walk(_join(path, key), a.get(key), b.get(key), out)
    elif isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            _walk(f"{path}[{i}]", a[i] if i < len(a) else None, b[i] if i < len(b) else None, out)
    else:
        out.append(FieldChange(path, a, b))


__all__ = ["SERVER_MANAGED", "FieldChange", "content", "field_diff"]
