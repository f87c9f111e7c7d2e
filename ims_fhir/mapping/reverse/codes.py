"""The code tables read backwards: FHIR codings, statuses, units and extensions -> IMS slugs.

Everything here is derived from the same :class:`~ims_fhir.terminology.Terminology` the
forward mapping uses; no code appears as a literal. Terms:

- *decode*: ``(system, code)`` -> ``(vocabulary or "concept", slug or key)`` through
  :meth:`Terminology.decode`. A CodeableConcept decodes to the first of its codings that
  is in the tables, the project's own codings first: the standard pain score code stands
  for several of our concepts (pain, pain before and after a session), and our own coding
  says which.
- *kind* of an Observation: what its ``code`` decodes to, e.g. ``("concept", "pain-nrs")``
  or ``("movement", "hip_flexion")``.
- *inverted status table*: ``[status.assessment]`` and ``[status.treatment]`` of
  ``mappings/fhir.toml`` turned around (FHIR status -> record status); the tables are one
  to one, which :func:`invert` checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...terminology import Terminology

#: Concept keys (of concepts.toml) by the part of a record they stand for.
PANEL = "assessment-panel"
PROCEDURE_CONCEPTS = ("ims-procedure", "cpt-1-2-muscles", "cpt-3-plus-muscles")
FINDING_CONCEPTS = ("chief-complaint", "pain-nrs", "pain-duration", "pain-location", "palpation", "candidacy")
FINDING_VOCABULARIES = ("sign", "movement", "instrument")
TREATMENT_FINDING_CONCEPTS = ("pain-before-treatment", "pain-after-treatment", "needling-site", "adverse-event")

#: UCUM unit the forward mapping writes for each quantity (mapping/assessment.py and
#: mapping/treatment.py), with the factors of the other units a foreign system may use.
UNIT_FACTORS: dict[str, dict[str, float]] = {
    "wk": {"wk": 1, "d": 1 / 7},
    "deg": {"deg": 1},
    "mm": {"mm": 1, "cm": 10},
    "Hz": {"Hz": 1},
    "min": {"min": 1, "s": 1 / 60, "h": 60},
}


def invert(table: Mapping[str, str], name: str) -> dict[str, str]:
    """FHIR value -> record value of a one-to-one status table; raises if it is not one to one."""
    out: dict[str, str] = {}
    for record_value, fhir_value in table.items():
        if fhir_value in out:
            raise ValueError(f"[status.{name}] maps both {out[fhir_value]!r} and {record_value!r} to "
                             f"{fhir_value!r}; the import cannot tell them apart")
        out[fhir_value] = record_value
    return out


class Codes:
    """Reverse lookups over one Terminology, computed once."""

    def __init__(self, term: Terminology) -> None:
        self.term = term
        self.own_systems = frozenset({term.concept_system, *term.vocab_systems.values()})
        status = term.fhir["status"]
        self.assessment_status = invert(status["assessment"], "assessment")
        self.treatment_status = invert(status["treatment"], "treatment")
        #: record status -> the status our treatment Observations carry
        self.treatment_observation_status = dict(status["treatment_observation"])
        self.gender = invert(term.fhir["gender"], "gender")
        self.extension = {key: term.extension_url(key) for key in term.fhir["extensions"]}
        self.severity_system = term.systems["adverse-event-severity"]
        #: diagnoses[].system slug -> code system URL
        self.diagnosis_systems = {slug: term.diagnosis_system(slug) for slug in term.fhir["diagnosis_systems"]}
        chart = term.fixed_coding("chart_identifier_type")
        self.chart_type = (chart["system"], chart["code"])
        self.ucum = term.systems["ucum"]

    # -- codings -------------------------------------------------------------------------
    def decode(self, cc: Any, vocabularies: tuple[str, ...] | None = None) -> tuple[str, str] | None:
        """What a CodeableConcept stands for, optionally only among ``vocabularies``."""
        if not isinstance(cc, dict):
            return None
        codings = [c for c in cc.get("coding") or () if isinstance(c, dict)]
        # our own codings first: they say which of several concepts a shared standard code means
        codings.sort(key=lambda c: c.get("system") not in self.own_systems)
        for coding in codings:
            hit = self.term.decode(coding.get("system"), coding.get("code"))
            if hit is not None and (vocabularies is None or hit[0] in vocabularies):
                return hit
        return None

    def slug(self, cc: Any, vocabulary: str) -> str | None:
        hit = self.decode(cc, (vocabulary,))
        return hit[1] if hit else None

    def concept(self, cc: Any) -> str | None:
        return self.slug(cc, "concept")

    def side(self, cc: Any) -> str | None:
        """The laterality of a body site: our extension, or any extension whose value is a side."""
        if not isinstance(cc, dict):
            return None
        for ext in cc.get("extension") or ():
            if isinstance(ext, dict):
                side = self.slug(ext.get("valueCodeableConcept"), "side")
                if side is not None:
                    return side
        return None

    def is_laterality_extension(self, ext: Any) -> bool:
        return isinstance(ext, dict) and self.slug(ext.get("valueCodeableConcept"), "side") is not None

    def is_chart_type(self, cc: Any) -> bool:
        if not isinstance(cc, dict):
            return False
        return any(isinstance(c, dict) and (c.get("system"), c.get("code")) == self.chart_type
                   for c in cc.get("coding") or ())

    def instrument_unit(self, instrument: str) -> str:
        return self.term.instrument_unit(instrument)[0]


def describe(cc: Any) -> str:
    """A CodeableConcept for a message: ``system|code ('display')`` of its first coding, or its text."""
    if not isinstance(cc, dict):
        return "(no code)"
    for coding in cc.get("coding") or ():
        if isinstance(coding, dict) and coding.get("code"):
            shown = f"{coding.get('system', '')}|{coding['code']}"
            display = coding.get("display") or cc.get("text")
            return f"{shown} ({display!r})" if display else shown
    text = cc.get("text")
    return repr(text) if text else "(no code)"
