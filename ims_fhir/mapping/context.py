"""What every mapper needs: the source, the code tables, options, ids and references.

Terms:

- *business identifier*: a system of the clinic's :class:`~ims_fhir.identifiers.IdentifierScheme`
  (``{system_base}/{kind}``) + a value (the record id, or for a resource derived from part of
  a record, ``{record id}/{part}``). It never changes.
- *resource id*: a UUIDv5 of the business identifier, so the same record always gives
  the same id, in any run, from any input form, and a reference to a record sent in an
  earlier file still points at the right resource.
- *dependency*: a resource outside the record's own group that one of its resources
  refers to (its Patient, Practitioner, Organization, the assessment panel a treatment
  follows from). The bundle writer uses them to keep every Bundle self-contained.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..identifiers import IdentifierScheme
from ..records.models import Source
from ..terminology import CodeableConcept, Terminology

#: namespace of every resource id the project derives
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://ims-fhir.github.io/fhir/resource-id")

Resource = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Dependency:
    """A resource referred to from outside its own record group."""

    resource_type: str
    id: str
    system: str
    value: str


@dataclass(slots=True)
class MappedRecord:
    """The FHIR resources of one record, in a fixed order, and what they depend on."""

    record_type: str
    record_id: str
    resources: list[Resource]
    dependencies: list[Dependency] = field(default_factory=list)
    #: id of the record's main resource (Patient, Practitioner, assessment panel, Procedure)
    primary_id: str = ""


@dataclass(frozen=True, slots=True)
class MappingOptions:
    #: emit CPT 20560/20561 on completed treatments (US billing codes)
    cpt: bool = True


_NS_BYTES = ID_NAMESPACE.bytes


def resource_id(system: str, value: str) -> str:
    """``str(uuid.uuid5(ID_NAMESPACE, f"{system}|{value}"))``, computed without building UUID objects."""
    digest = bytearray(hashlib.sha1(_NS_BYTES + f"{system}|{value}".encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class MappingContext:
    """Per-source state shared by the mappers; cheap lookups precomputed once."""

    def __init__(self, source: Source, terminology: Terminology, options: MappingOptions | None = None) -> None:
        self.source = source
        self.term = terminology
        self.options = options or MappingOptions()
        self.scheme = IdentifierScheme.of(source)
        self.systems = self.scheme.systems()
        self.organization_id = resource_id(self.systems["organization"], source.clinic_id)
        self.organization_ref = {"reference": f"Organization/{self.organization_id}"}
        self.laterality_url = terminology.extension_url("laterality")
        self._body_sites: dict[tuple[str, str, str | None], CodeableConcept] = {}
        self._side_only: dict[str, CodeableConcept] = {}

    # -- identifiers and references ----------------------------------------------------
    def identifier(self, kind: str, value: str) -> dict[str, str]:
        return {"system": self.systems[kind], "value": value}

    def id_for(self, kind: str, value: str) -> str:
        return resource_id(self.systems[kind], value)

    def logical_ref(self, resource_type: str, kind: str, value: str) -> dict[str, Any]:
        """A reference that also names its target's business identifier, so a receiver (or our
        own import) can resolve it even when the target is not in the same file."""
        system = self.systems[kind]
        return {"reference": f"{resource_type}/{resource_id(system, value)}", "identifier": {"system": system, "value": value}}

    def dependency(self, resource_type: str, kind: str, value: str) -> Dependency:
        system = self.systems[kind]
        return Dependency(resource_type, resource_id(system, value), system, value)

    # -- coded body sites ----------------------------------------------------------------
    def body_site(self, vocabulary: str, slug: str, side: str | None) -> CodeableConcept:
        """Muscle or region with its laterality as an extension (R4 has no laterality element)."""
        key = (vocabulary, slug, side)
        cc = self._body_sites.get(key)
        if cc is None:
            base = self.term.vocab(vocabulary, slug)
            cc = {}
            if side is not None:
                cc["extension"] = [{"url": self.laterality_url, "valueCodeableConcept": self.term.vocab("side", side)}]
            cc["coding"] = base["coding"]
            cc["text"] = base["text"] if side is None else f"{base['text']}, {self.term.vocab('side', side)['text'].lower()}"
            self._body_sites[key] = cc
        return cc

    def side_only(self, side: str) -> CodeableConcept:
        """A body site that is only a side (a sign or movement noted as left/right)."""
        cc = self._side_only.get(side)
        if cc is None:
            text = self.term.vocab("side", side)["text"]
            cc = {
                "extension": [{"url": self.laterality_url, "valueCodeableConcept": self.term.vocab("side", side)}],
                "text": f"{text} side" if side in ("left", "right") else text,
            }
            self._side_only[side] = cc
        return cc
