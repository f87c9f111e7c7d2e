"""The code tables under ``mappings/``, loaded once and checked at load.

Terms:

- *vocabulary*: a closed list of slugs of the record format (``muscle``, ``side``...).
  Each becomes one CodeSystem of the project, ``{base}/CodeSystem/ims-{codesystem}``,
  whose codes are the slugs; a slug may also carry *standard* codings (LOINC, SNOMED CT)
  where the terminology research gives high or medium confidence.
- *concept*: what an Observation or Procedure is about (``pain-nrs``, ``needling-site``),
  from ``concepts.toml``; the CodeSystem ``{base}/CodeSystem/ims-concept``.
- a *CodeableConcept* built here is a plain dict, shared between resources: treat it as
  immutable (the writers serialise it, nobody edits it).

This is the only place codes come from: mapping code names concepts by key and
vocabulary slugs, never by code. A broken table (unknown slug, missing display, a
standard code used twice) is a :class:`~ims_fhir.errors.TerminologyError` at load.
Reverse lookups (system, code) -> slug serve the import direction from the same tables.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import TerminologyError
from .records import vocabulary as v

CodeableConcept = dict[str, Any]
Coding = dict[str, str]


def mappings_dir() -> Path:
    """Where the tables are: inside the installed package, or beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "mappings", here.parent / "mappings"):
        if (candidate / "fhir.toml").is_file():
            return candidate
    raise TerminologyError(f"mapping tables not found (looked in {here / 'mappings'} and {here.parent / 'mappings'})")


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TerminologyError(f"cannot read mapping table {path.name}: {exc}") from exc


@dataclass(frozen=True)
class Terminology:
    base: str
    systems: dict[str, str]
    fhir: dict[str, Any]
    #: (vocabulary, slug) -> CodeableConcept
    vocab_concepts: dict[tuple[str, str], CodeableConcept]
    #: vocabulary -> CodeSystem url
    vocab_systems: dict[str, str]
    #: concept key -> CodeableConcept
    concepts: dict[str, CodeableConcept]
    concept_system: str
    #: (system url, code) -> (vocabulary or "concept", slug or key)
    reverse: dict[tuple[str, str], tuple[str, str]]
    #: raw rows, for publishing CodeSystems and reading units
    vocab_rows: dict[str, dict[str, Any]]
    concept_rows: dict[str, Any]
    #: profiles.toml: profile key -> row (id, type, title, ...)
    profiles: dict[str, dict[str, Any]]

    # -- forward ---------------------------------------------------------------------
    def vocab(self, vocabulary: str, slug: str) -> CodeableConcept:
        return self.vocab_concepts[(vocabulary, slug)]

    def concept(self, key: str) -> CodeableConcept:
        return self.concepts[key]

    def own_coding(self, vocabulary: str, slug: str) -> Coding:
        coding: Coding = self.vocab_concepts[(vocabulary, slug)]["coding"][0]
        return coding

    def category(self, key: str) -> CodeableConcept:
        row = self.fhir["categories"][key]
        return {"coding": [{"system": self.systems[row["system"]], "code": row["code"], "display": row["display"]}]}

    def fixed_concept(self, key: str) -> CodeableConcept:
        """A CodeableConcept from a one-coding table of fhir.toml (procedure_category...)."""
        row = self.fhir[key]
        return {"coding": [{"system": self.systems[row["system"]], "code": row["code"], "display": row["display"]}]}

    def fixed_coding(self, key: str) -> Coding:
        coding: Coding = self.fixed_concept(key)["coding"][0]
        return coding

    def status(self, table: str, value: str) -> str:
        return str(self.fhir["status"][table][value])

    def gender(self, sex: str) -> str:
        return str(self.fhir["gender"][sex])

    def adverse_event_severity(self, slug: str) -> CodeableConcept:
        """HL7 adverse-event-severity (R4 AdverseEvent.severity, required binding)."""
        row = self.fhir["adverse_event_severity"][slug]
        return {"coding": [{"system": self.systems[row["system"]], "code": row["code"], "display": row["display"]}],
                "text": row["display"]}

    def extension_url(self, key: str) -> str:
        return f"{self.base}/StructureDefinition/{self.fhir['extensions'][key]}"

    def core_extension_url(self, key: str) -> str:
        return str(self.fhir["core_extensions"][key])

    def profile_url(self, key: str) -> str:
        """Canonical URL of one of the IG's profiles (profiles.toml)."""
        return f"{self.base}/StructureDefinition/{self.profiles[key]['id']}"

    def diagnosis_system(self, system: str) -> str:
        return str(self.systems[self.fhir["diagnosis_systems"][system]])

    def instrument_unit(self, instrument: str) -> tuple[str, str]:
        row = self.vocab_rows["instrument"]["concepts"][instrument]
        return row["unit"], row["unit_display"]

    def cpt_effective_from(self) -> str:
        return str(self.concept_rows["cpt"]["effective_from"])

    # -- reverse ---------------------------------------------------------------------
    def decode(self, system: str | None, code: str | None) -> tuple[str, str] | None:
        """(vocabulary or "concept", slug) for a coding, or None when it is not ours."""
        if not system or not code:
            return None
        return self.reverse.get((system, code))


def _coding(system: str, code: str, display: str) -> Coding:
    return {"system": system, "code": code, "display": display}


def load_terminology(directory: Path | None = None) -> Terminology:
    """Load and check the tables. Raises TerminologyError on any inconsistency."""
    directory = directory or mappings_dir()
    fhir = _read(directory / "fhir.toml")
    vocab_rows = _read(directory / "vocabularies.toml")
    concept_rows = _read(directory / "concepts.toml")
    profiles = _read(directory / "profiles.toml")
    base = fhir["project"]["base"].rstrip("/")
    systems = dict(fhir["systems"])
    problems: list[str] = []

    def standard_codings(where: str, row: dict[str, Any]) -> list[Coding]:
        out = []
        for std in row.get("standard", []):
            if std.get("confidence") not in ("high", "medium"):
                problems.append(f"{where}: standard code {std.get('code')} has confidence {std.get('confidence')!r};"
                                " only high or medium may be emitted")
                continue
            if std.get("system") not in systems:
                problems.append(f"{where}: unknown system alias {std.get('system')!r}")
                continue
            if not std.get("code") or not std.get("display") or not std.get("source"):
                problems.append(f"{where}: a standard coding needs code, display and source")
                continue
            out.append(_coding(systems[std["system"]], std["code"], std["display"]))
        return out

    vocab_concepts: dict[tuple[str, str], CodeableConcept] = {}
    vocab_systems: dict[str, str] = {}
    reverse: dict[tuple[str, str], tuple[str, str]] = {}
    for vocabulary, slugs in v.VOCABULARIES.items():
        if vocabulary in ("sex", "assessment_status", "treatment_status", "severity"):
            continue  # mapped to FHIR's own required code lists in fhir.toml
        table = vocab_rows.get(vocabulary)
        if table is None:
            problems.append(f"vocabularies.toml: no table for vocabulary {vocabulary!r}")
            continue
        url = f"{base}/CodeSystem/ims-{table['codesystem']}"
        vocab_systems[vocabulary] = url
        rows = table.get("concepts", {})
        for slug in rows:
            if slug not in slugs:
                problems.append(f"vocabularies.toml: {vocabulary}.{slug} is not a slug of the record format")
        for slug in slugs:
            row = rows.get(slug)
            if row is None:
                problems.append(f"vocabularies.toml: {vocabulary} has no row for slug {slug!r}")
                continue
            display = row.get("display")
            if not display:
                problems.append(f"vocabularies.toml: {vocabulary}.{slug} has no display")
                continue
            codings = [_coding(url, slug, display)] + standard_codings(f"{vocabulary}.{slug}", row)
            for c in codings:
                key = (c["system"], c["code"])
                if key in reverse and reverse[key] != (vocabulary, slug):
                    problems.append(f"vocabularies.toml: {c['system']}|{c['code']} used for both {reverse[key]}"
                                    f" and {(vocabulary, slug)}")
                reverse.setdefault(key, (vocabulary, slug))
            vocab_concepts[(vocabulary, slug)] = {"coding": codings, "text": display}

    concept_system = f"{base}/CodeSystem/ims-{concept_rows['codesystem']['name']}"
    concepts: dict[str, CodeableConcept] = {}
    for key, row in concept_rows.get("concepts", {}).items():
        display = row.get("display")
        if not display:
            problems.append(f"concepts.toml: {key} has no display")
            continue
        codings = [] if row.get("own", True) is False else [_coding(concept_system, key, display)]
        codings += standard_codings(f"concepts.{key}", row)
        if not codings:
            problems.append(f"concepts.toml: {key} has no coding at all")
            continue
        for c in codings:
            ck = (c["system"], c["code"])
            # a standard code may stand for several of our concepts (72514-3: pain before and after);
            # the reverse mapping prefers our own code and only falls back to the first owner
            reverse.setdefault(ck, ("concept", key))
        concepts[key] = {"coding": codings, "text": row.get("text", display)}

    for pkey, prow in profiles.items():
        if not isinstance(prow, dict) or not {"id", "type", "title", "description"} <= set(prow):
            problems.append(f"profiles.toml: [{pkey}] needs id, type, title and description")
        elif prow.get("concept") and prow["concept"] not in concepts:
            problems.append(f"profiles.toml: [{pkey}] names unknown concept {prow['concept']!r}")
    for rel in concept_rows.get("relations", []):
        if rel.get("source") not in concepts or rel.get("system") not in systems:
            problems.append(f"concepts.toml: relation {rel.get('source')!r} -> {rel.get('code')!r}"
                            " names an unknown concept or system")
        elif rel.get("import_as_source"):
            # read back only: a foreign resource coded with the related concept (never emitted)
            reverse.setdefault((systems[rel["system"]], rel["code"]), ("concept", rel["source"]))
    for table_name in ("categories", "procedure_category", "encounter_class", "chart_identifier_type", "extensions",
                       "status", "gender", "health_number_identifier_type", "licence_identifier_type", "organization_type",
                       "condition_category",
                "consent_scope", "consent_category", "consent_policy", "diagnosis_systems", "core_extensions"):
        if table_name not in fhir:
            problems.append(f"fhir.toml: missing table [{table_name}]")
    if problems:
        raise TerminologyError("inconsistent mapping tables: " + "; ".join(problems))
    return Terminology(
        base=base, systems=systems, fhir=fhir, vocab_concepts=vocab_concepts, vocab_systems=vocab_systems,
        concepts=concepts, concept_system=concept_system, reverse=reverse, vocab_rows=vocab_rows,
        concept_rows=concept_rows, profiles=profiles,
    )


@lru_cache(maxsize=1)
def default_terminology() -> Terminology:
    """The tables shipped with the package (immutable, so loading them once is safe)."""
    return load_terminology()


def code_systems(term: Terminology) -> list[dict[str, Any]]:
    """The project's CodeSystem resources (FHIR R4), for publishing and for servers' validators."""
    out = []
    for vocabulary, url in sorted(term.vocab_systems.items(), key=lambda kv: kv[1]):
        table = term.vocab_rows[vocabulary]
        concepts = [{"code": slug, "display": term.vocab(vocabulary, slug)["text"]} for slug in v.VOCABULARIES[vocabulary]]
        out.append(_code_system(url, table["codesystem"], table["title"], concepts))
    concepts = [
        {"code": key, "display": cc["coding"][0]["display"]}
        for key, cc in term.concepts.items()
        if cc["coding"][0]["system"] == term.concept_system
    ]
    out.append(_code_system(term.concept_system, term.concept_rows["codesystem"]["name"],
                            term.concept_rows["codesystem"]["title"], concepts))
    return out


def _code_system(url: str, name: str, title: str, concepts: list[dict[str, str]]) -> dict[str, Any]:
    pascal = "Ims" + "".join(part.capitalize() for part in name.replace("_", "-").split("-"))
    return {
        "resourceType": "CodeSystem",
        "id": f"ims-{name}",
        "url": url,
        "version": "1",
        "name": pascal,
        "title": title,
        "status": "active",
        "experimental": False,
        "publisher": "ims-fhir",
        "caseSensitive": True,
        "content": "complete",
        "count": len(concepts),
        "concept": concepts,
    }
