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
  follows from, the assessment's diagnoses). The bundle writer uses them to keep every
  Bundle self-contained.
- *diagnosis count*: how many diagnoses (Conditions ``{system_base}/diagnosis`` =
  ``{assessment id}/{i}``) an assessment of this source has, asked by a treatment's mapper,
  which sees only its own record: the caller that sees the whole input answers
  (:attr:`MappingContext.diagnoses`, see :meth:`MappingContext.with_diagnoses`); None = not known.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..identifiers import IdentifierScheme
from ..records.models import Source
from ..terminology import CodeableConcept, Terminology
from .narrative import finish

#: namespace of every resource id the project derives
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://ims-fhir.github.io/fhir/resource-id")

Resource = dict[str, Any]
#: assessment id -> how many diagnoses that assessment of the source has (None: not known)
DiagnosisCount = Callable[[str], int | None]


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
    #: emit CPT 20560/20561 on completed treatments (US billing codes, AMA licence): True always,
    #: False never, None (default) only when the source declares ``country: US``
    cpt: bool | None = None


_NS_SHA1 = hashlib.sha1(ID_NAMESPACE.bytes, usedforsecurity=False)
#: the UUID variant bits (10xx) put on the first hex digit of the clock sequence
_VARIANT = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}


@functools.lru_cache(maxsize=4096)
def resource_id(system: str, value: str) -> str:
    """``str(uuid.uuid5(ID_NAMESPACE, f"{system}|{value}"))``, computed without building UUID objects.

    Cached: a record names its patient, practitioner and assessment several times over.
    """
    sha = _NS_SHA1.copy()
    sha.update(f"{system}|{value}".encode())
    h = sha.hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


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
        self.body_site_url = terminology.core_extension_url("body-site")
        self._mrn = re.compile(terminology.fhir["patient_identifier_rules"]["mrn_system_pattern"], re.IGNORECASE)
        self.cpt = self.options.cpt if self.options.cpt is not None else source.country == "US"
        self._profiles = {key: (terminology.profile_url(key), row["title"]) for key, row in terminology.profiles.items()}
        #: the diagnosis count of an assessment of this source (module docstring); None: never known
        self.diagnoses: DiagnosisCount | None = None

    def with_diagnoses(self, lookup: DiagnosisCount | None) -> MappingContext:
        """A copy of this context that answers the diagnosis count of an assessment by ``lookup``
        (the code tables and precomputed values are shared, not copied)."""
        other = copy.copy(self)
        other.diagnoses = lookup
        return other

    def diagnosis_count(self, assessment_id: str) -> int:
        """The diagnoses of an assessment of this source; 0 when not known."""
        return (self.diagnoses(assessment_id) or 0) if self.diagnoses is not None else 0

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

    def is_mrn_system(self, system: str) -> bool:
        return self._mrn.search(system) is not None

    # -- profiles ------------------------------------------------------------------------
    def finish(self, resource: Resource, profile: str) -> Resource:
        """Stamp ``meta.profile`` (profiles.toml key) and the generated narrative."""
        url, title = self._profiles[profile]
        return finish(resource, url, title)


class BodySites:
    """The BodyStructures of one record: a muscle or region with its side, made computable.

    R4 has no laterality element. A body site with a side becomes a ``BodyStructure``
    (``location`` = the muscle or region, ``locationQualifier`` = the side), referenced from
    the ``bodySite`` CodeableConcept by the core extension
    ``http://hl7.org/fhir/StructureDefinition/bodySite``. Identifier:
    ``{system_base}/body-structure`` = ``{owner}/{vocabulary}/{slug}/{side}`` where owner is
    ``assessment/{id}`` or ``treatment/{id}``; one per distinct site of the record, so the
    resource belongs to its record (conditional update like the others).
    """

    def __init__(self, ctx: MappingContext, owner: str, patient: dict[str, Any]) -> None:
        self.ctx = ctx
        self.owner = owner
        self.patient = patient
        self.resources: list[Resource] = []
        self._refs: dict[tuple[str, str], dict[str, Any]] = {}

    def _structure(self, vocabulary: str, slug: str, side: str) -> dict[str, Any]:
        key = (f"{vocabulary}/{slug}", side)
        ref = self._refs.get(key)
        if ref is None:
            term = self.ctx.term
            value = f"{self.owner}/{vocabulary}/{slug}/{side}"
            rid = self.ctx.id_for("body-structure", value)
            side_cc = term.vocab("side", side)
            res: Resource = {"resourceType": "BodyStructure", "id": rid,
                             "identifier": [self.ctx.identifier("body-structure", value)]}
            if vocabulary != "side":
                res["location"] = term.vocab(vocabulary, slug)
                res["description"] = f"{side_cc['text']} {term.vocab(vocabulary, slug)['text'][:1].lower()}" \
                                     f"{term.vocab(vocabulary, slug)['text'][1:]}"
            else:
                res["description"] = f"{side_cc['text']} side"
            res["locationQualifier"] = [side_cc]
            res["patient"] = self.patient
            self.resources.append(self.ctx.finish(res, "body-structure"))
            ref = self._refs[key] = {"url": self.ctx.body_site_url,
                                     "valueReference": {"reference": f"BodyStructure/{rid}"}}
        return ref

    def site(self, vocabulary: str, slug: str, side: str | None) -> CodeableConcept:
        """Muscle or region; with a side, the bodySite extension to its BodyStructure."""
        term = self.ctx.term
        base = term.vocab(vocabulary, slug)
        cc: CodeableConcept = {}
        if side is not None:
            cc["extension"] = [self._structure(vocabulary, slug, side)]
        cc["coding"] = base["coding"]
        cc["text"] = base["text"] if side is None else f"{base['text']}, {term.vocab('side', side)['text'].lower()}"
        return cc

    def side_only(self, side: str) -> CodeableConcept:
        """A body site that is only a side (a sign or movement noted as left/right)."""
        text = self.ctx.term.vocab("side", side)["text"]
        return {"extension": [self._structure("side", side, side)],
                "text": f"{text} side" if side in ("left", "right") else text}
