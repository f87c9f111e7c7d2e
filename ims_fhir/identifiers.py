"""The business identifiers of one clinic: the ``{system_base}/{kind}`` scheme, formatted and parsed here only.

Terms:

- *system base*: the clinic's URI (``source.system_base``), kept without a trailing ``/``.
- *kind*: the last segment of an identifier system (:data:`KINDS`): ``organization``,
  ``patient``, ``practitioner``, ``assessment``, ``treatment``, ``encounter``,
  ``assessment-finding``, ``treatment-finding``, and the IG's ``diagnosis`` (a Condition,
  ``{assessment id}/{i}``), ``consent`` (a session's Consent, the treatment id) and
  ``body-structure`` (``{record type}/{record id}/{vocabulary}/{slug}/{side}``), a session's
  ``adverse-event`` (an AdverseEvent, ``{treatment id}/{i}``), and a patient's session series:
  ``series`` (an EpisodeOfCare, ``{patient id}/{assessment id}``, or ``{patient id}`` for
  sessions that name no assessment) and ``series-plan`` (the ServiceRequest of the planned
  sessions, ``{series value}/sessions-{series_total}``); both belong to the record key
  ``("series", {patient id})``: no record of the clinic owns a series, its sessions carry it.
- *value*: the record id; for a resource made from part of a record (a finding) it is
  ``{record id}/{part}``; for an Encounter ``{record type}/{record id}``; for the clinic's
  Organization the clinic id.
- *record key*: ``(record type, record id)``, the record an identifier belongs to; the
  Organization belongs to the record type ``source``.

An :class:`IdentifierScheme` recognises only its own base: ``https://other.example/patient``
is not one of ours even though it ends in ``/patient``. :func:`split_system` is for the one
place that must *discover* bases in foreign data (the import), never for deciding that an
identifier is ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: the kinds of identifier system, in the order the mappers use them
KINDS: tuple[str, ...] = (
    "organization", "patient", "practitioner", "assessment", "treatment", "encounter",
    "assessment-finding", "treatment-finding", "body-structure", "diagnosis", "consent",
    "adverse-event", "series", "series-plan",
)
#: kind -> the record type a value of that kind names (None: the value says, ``{type}/{id}``)
RECORD_TYPE_OF_KIND: dict[str, str | None] = {
    "organization": "source", "patient": "patient", "practitioner": "practitioner",
    "assessment": "assessment", "assessment-finding": "assessment",
    "treatment": "treatment", "treatment-finding": "treatment", "encounter": None,
    "diagnosis": "assessment", "consent": "treatment", "body-structure": None,
    "adverse-event": "treatment", "series": "series", "series-plan": "series",
}
#: the record types an Encounter's value may name
_ENCOUNTER_RECORDS = frozenset({"assessment", "treatment"})

RecordKey = tuple[str, str]


def split_system(system: Any) -> tuple[str, str] | None:
    """``(base, kind)`` of a system spelled like ours under *any* base, else None.

    Only for discovering which bases a foreign data set uses (see the module docstring).
    """
    if not isinstance(system, str):
        return None
    base, sep, kind = system.rpartition("/")
    if not sep or not base or kind not in RECORD_TYPE_OF_KIND:
        return None
    return base, kind


def identifiers_of(resource: Mapping[str, Any]) -> list[Any]:
    """A resource's identifiers as a list: most types repeat ``identifier``, a few (R4
    AdverseEvent) have a single one."""
    found = resource.get("identifier")
    if isinstance(found, list):
        return found
    return [found] if isinstance(found, Mapping) else []


@dataclass(frozen=True, slots=True)
class ParsedIdentifier:
    """One of our identifiers, taken apart."""

    kind: str
    value: str
    #: the record it belongs to
    record: RecordKey


@dataclass(frozen=True, slots=True)
class IdentifierScheme:
    """The identifier systems of one clinic (one system base)."""

    base: str

    def __init__(self, base: str) -> None:
        base = str(base).rstrip("/")
        if not base:
            raise ValueError("a system base must not be empty")
        object.__setattr__(self, "base", base)

    @classmethod
    def of(cls, source: Any) -> IdentifierScheme:
        """The scheme of a source (anything with a ``system_base``, or a mapping with one)."""
        base = source.get("system_base") if isinstance(source, Mapping) else source.system_base
        return cls(str(base))

    # -- formatting --------------------------------------------------------------------------
    def system(self, kind: str) -> str:
        if kind not in RECORD_TYPE_OF_KIND:
            raise ValueError(f"unknown identifier kind {kind!r}")
        return f"{self.base}/{kind}"

    def identifier(self, kind: str, value: str) -> dict[str, str]:
        return {"system": self.system(kind), "value": value}

    def systems(self) -> dict[str, str]:
        """kind -> system, every kind."""
        return {kind: self.system(kind) for kind in KINDS}

    # -- parsing -----------------------------------------------------------------------------
    def kind_of(self, system: Any) -> str | None:
        """The kind of one of *our* systems, else None (a foreign system ending in ``/patient`` included)."""
        if not isinstance(system, str) or not system.startswith(self.base):
            return None
        rest = system[len(self.base):]
        if rest[:1] != "/" or rest[1:] not in RECORD_TYPE_OF_KIND:
            return None
        return rest[1:]

    def parse(self, identifier: Any) -> ParsedIdentifier | None:
        """Our identifier taken apart (kind, value, record), else None (foreign, malformed)."""
        if not isinstance(identifier, Mapping):
            return None
        kind = self.kind_of(identifier.get("system"))
        value = identifier.get("value")
        if kind is None or not isinstance(value, str) or not value:
            return None
        record_type = RECORD_TYPE_OF_KIND[kind]
        record_id = value
        if kind == "body-structure":  # "{record type}/{record id}/{vocabulary}/{slug}/{side}"
            if value.count("/") < 4:
                return None
            record_type, sep, record_id = value.rsplit("/", 3)[0].partition("/")
            if not sep or record_type not in _ENCOUNTER_RECORDS or not record_id:
                return None
        elif record_type is None:  # an Encounter: "{record type}/{record id}"
            record_type, sep, record_id = value.partition("/")
            if not sep or record_type not in _ENCOUNTER_RECORDS or not record_id:
                return None
        elif kind.endswith("-finding") or kind in ("adverse-event", "series", "series-plan"):
            record_id = value.split("/", 1)[0]
        elif kind == "diagnosis":
            record_id = value.rsplit("/", 1)[0]
        return ParsedIdentifier(kind, value, (record_type, record_id))

    def record_key(self, identifier: Any) -> RecordKey | None:
        """The record an identifier belongs to, if it is one of ours."""
        parsed = self.parse(identifier)
        return parsed.record if parsed is not None else None

    def record_of(self, resource: Mapping[str, Any]) -> RecordKey | None:
        """The record a resource belongs to, by its first identifier (where the mappers put ours)."""
        identifiers = identifiers_of(resource)
        return self.record_key(identifiers[0]) if identifiers else None

    # -- finding the scheme ------------------------------------------------------------------
    @classmethod
    def from_organization(cls, organization: Mapping[str, Any]) -> IdentifierScheme | None:
        """The scheme of a clinic's Organization (its ``{base}/organization`` identifier)."""
        for ident in organization.get("identifier") or ():
            found = split_system(ident.get("system") if isinstance(ident, Mapping) else None)
            if found is not None and found[1] == "organization":
                return cls(found[0])
        return None

    @classmethod
    def from_bundle(cls, bundle: Mapping[str, Any]) -> IdentifierScheme | None:
        """The scheme of a Bundle this project built (it carries the clinic's Organization)."""
        for entry in bundle.get("entry") or ():
            resource = entry.get("resource") if isinstance(entry, Mapping) else None
            if isinstance(resource, Mapping) and resource.get("resourceType") == "Organization":
                scheme = cls.from_organization(resource)
                if scheme is not None:
                    return scheme
        return None


__all__ = ["KINDS", "RECORD_TYPE_OF_KIND", "IdentifierScheme", "ParsedIdentifier", "RecordKey", "identifiers_of",
           "split_system"]
