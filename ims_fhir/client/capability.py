"""What a FHIR server says it can do (its CapabilityStatement) and checks against it.

Terms
-----
CapabilityStatement
    The resource a server returns for ``GET [base]/metadata``. The client reads it once
    per client instance and keeps it (:meth:`FhirClient.capabilities`).
FHIR R4
    ``CapabilityStatement.fhirVersion`` of the form ``4.0.x`` (4.0.0 or 4.0.1). Other
    versions (3.0.2 = STU3, 4.3.0 = R4B, 5.0.0 = R5) are refused.
system interaction
    ``rest.interaction.code`` on the server as a whole: ``transaction``, ``batch``,
    ``search-system``, ``history-system``.
type interaction
    ``rest.resource[type].interaction.code``: ``read``, ``vread``, ``update``, ``patch``,
    ``delete``, ``history-instance``, ``history-type``, ``create``, ``search-type``.
conditional
    A :class:`Requirement` with ``conditional=True`` also needs the resource's
    ``conditionalCreate`` / ``conditionalUpdate`` flag (create ``If-None-Exist``,
    ``PUT [type]?query``) or a ``conditionalDelete`` other than ``not-supported``.
requirement
    One :class:`Requirement`; :meth:`ServerCapabilities.require` checks a list and raises
    one :class:`~ims_fhir.errors.FhirCapabilityError` naming everything missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ims_fhir.errors import FhirCapabilityError, UsageError

Resource = dict[str, Any]

SYSTEM_INTERACTIONS = frozenset({"transaction", "batch", "search-system", "history-system"})
TYPE_INTERACTIONS = frozenset(
    {"read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"}
)
_CONDITIONAL_ABLE = frozenset({"create", "update", "delete"})
_R4 = re.compile(r"4\.0(\.\d+)?(-.*)?")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One thing an operation needs from the server; ``resource_type`` None = system level."""

    interaction: str
    resource_type: str | None = None
    conditional: bool = False

    def __post_init__(self) -> None:
        allowed = SYSTEM_INTERACTIONS if self.resource_type is None else TYPE_INTERACTIONS
        if self.interaction not in allowed:
            level = "system" if self.resource_type is None else "type"
            raise UsageError(f"{self.interaction!r} is not a FHIR {level} interaction (one of {sorted(allowed)})")
        if self.conditional and self.interaction not in _CONDITIONAL_ABLE:
            raise UsageError(f"only create, update and delete can be conditional, not {self.interaction!r}")

    def describe(self) -> str:
        if self.resource_type is None:
            return f"system interaction {self.interaction!r}"
        kind = f"conditional {self.interaction}" if self.conditional else self.interaction
        return f"{kind} on {self.resource_type}"


def system(interaction: str) -> Requirement:
    """A system-level requirement, e.g. ``system("transaction")``."""
    return Requirement(interaction)


def on_type(resource_type: str, interaction: str, *, conditional: bool = False) -> Requirement:
    """A type-level requirement, e.g. ``on_type("Patient", "create", conditional=True)``."""
    return Requirement(interaction, resource_type, conditional)


def push_requirements(resource_types: Iterable[str], *, conditional_update: bool = False) -> list[Requirement]:
    """What pushing ims-fhir transactions needs: ``transaction``, and per resource type a
    conditional create, update (PUT on deterministic ids; conditional if asked) and search."""
    needs = [system("transaction")]
    for resource_type in sorted(set(resource_types)):
        needs.append(on_type(resource_type, "create", conditional=True))
        needs.append(on_type(resource_type, "update", conditional=conditional_update))
        needs.append(on_type(resource_type, "search-type"))
    return needs


def delivery_requirements(resource_types: Iterable[str]) -> list[Requirement]:
    """The least a server must offer for ims-fhir to deliver to it: per resource type create,
    update and search. Transactions and conditional create/update are used when declared and
    otherwise emulated (see :mod:`ims_fhir.client.entrywise`)."""
    needs: list[Requirement] = []
    for resource_type in sorted(set(resource_types)):
        needs.extend(on_type(resource_type, i) for i in ("create", "update", "search-type"))
    return needs


@dataclass(frozen=True, slots=True)
class TypeCapability:
    """What the server supports for one resource type."""

    interactions: frozenset[str] = frozenset()
    conditional_create: bool = False
    conditional_update: bool = False
    conditional_delete: str = "not-supported"


def _codes(items: Any) -> set[str]:
    return {str(i["code"]) for i in items or () if isinstance(i, Mapping) and i.get("code")}


@dataclass(frozen=True, slots=True)
class ServerCapabilities:
    """The parts of a CapabilityStatement the client checks; ``statement`` keeps the rest."""

    statement: Resource = field(repr=False)
    base_url: str
    fhir_version: str | None
    software: str | None
    system_interactions: frozenset[str]
    types: Mapping[str, TypeCapability]

    @classmethod
    def from_statement(cls, statement: Any, *, base_url: str) -> ServerCapabilities:
        """Read a CapabilityStatement; refuse anything that is not one."""
        if not isinstance(statement, dict) or statement.get("resourceType") not in (
            "CapabilityStatement",
            "Conformance",
        ):
            found = statement.get("resourceType") if isinstance(statement, dict) else type(statement).__name__
            raise FhirCapabilityError(f"{base_url}/metadata did not return a CapabilityStatement (got {found!r})")
        raw_software = statement.get("software")
        software: Mapping[str, Any] = raw_software if isinstance(raw_software, Mapping) else {}
        name = " ".join(str(software[k]) for k in ("name", "version") if software.get(k)) or None
        system_codes: set[str] = set()
        types: dict[str, TypeCapability] = {}
        rests = [r for r in statement.get("rest") or () if isinstance(r, Mapping)]
        for rest in [r for r in rests if r.get("mode") == "server"] or rests:
            system_codes |= _codes(rest.get("interaction"))
            for res in rest.get("resource") or ():
                if not isinstance(res, Mapping) or not isinstance(res.get("type"), str):
                    continue
                old = types.get(res["type"], TypeCapability())
                types[res["type"]] = TypeCapability(
                    interactions=old.interactions | _codes(res.get("interaction")),
                    conditional_create=old.conditional_create or res.get("conditionalCreate") is True,
                    conditional_update=old.conditional_update or res.get("conditionalUpdate") is True,
                    conditional_delete=str(res.get("conditionalDelete") or old.conditional_delete),
                )
        version = statement.get("fhirVersion")
        return cls(
            statement=statement,
            base_url=base_url,
            fhir_version=version if isinstance(version, str) else None,
            software=name,
            system_interactions=frozenset(system_codes),
            types=types,
        )

    @property
    def is_r4(self) -> bool:
        return self.fhir_version is not None and _R4.fullmatch(self.fhir_version) is not None

    def _server(self) -> str:
        return f"the FHIR server at {self.base_url}" + (f" ({self.software})" if self.software else "")

    def require_r4(self) -> None:
        """Refuse a server that is not FHIR R4."""
        if self.fhir_version is None:
            raise FhirCapabilityError(f"{self._server()} does not state its FHIR version; ims-fhir needs R4 (4.0.x)")
        if not self.is_r4:
            raise FhirCapabilityError(
                f"{self._server()} speaks FHIR {self.fhir_version}, but ims-fhir needs R4 (4.0.x)"
            )

    def supports(self, need: Requirement) -> bool:
        if need.resource_type is None:
            return need.interaction in self.system_interactions
        kind = self.types.get(need.resource_type)
        if kind is None or need.interaction not in kind.interactions:
            return False
        if not need.conditional:
            return True
        if need.interaction == "create":
            return kind.conditional_create
        if need.interaction == "update":
            return kind.conditional_update
        return kind.conditional_delete in ("single", "multiple")

    def supports_all(self, needs: Iterable[Requirement]) -> bool:
        return all(self.supports(n) for n in needs)

    def missing(self, needs: Iterable[Requirement]) -> list[Requirement]:
        return [n for n in needs if not self.supports(n)]

    def require(self, needs: Iterable[Requirement]) -> None:
        """Check FHIR R4 and every requirement; one error lists all that is missing."""
        self.require_r4()
        missing = self.missing(needs)
        if missing:
            what = "; ".join(n.describe() for n in missing)
            raise FhirCapabilityError(f"{self._server()} does not support what ims-fhir needs: {what}")


__all__ = [
    "SYSTEM_INTERACTIONS",
    "TYPE_INTERACTIONS",
    "Requirement",
    "ServerCapabilities",
    "TypeCapability",
    "delivery_requirements",
    "on_type",
    "push_requirements",
    "system",
]
