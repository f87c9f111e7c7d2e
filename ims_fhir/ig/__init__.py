"""The IMS FHIR Implementation Guide as a FHIR NPM package, generated from ``mappings/``.

Terms:

- *canonical base*: ``[project] base`` of ``mappings/fhir.toml``
  (``https://ims-fhir.github.io/fhir``); every profile, extension, CodeSystem, ValueSet and
  ConceptMap of the IG has its URL under it, and the same URLs are what the converter writes.
- *profile*: a StructureDefinition (``derivation = constraint``) with a differential, one
  per row of ``mappings/profiles.toml``: the rows the mapping code stamps into
  ``meta.profile``, so the published profiles and the output cannot drift apart.
- *package*: the standard FHIR NPM layout, ``package/package.json`` + ``package/.index.json``
  + one JSON file per resource, as a ``.tgz``. It is reproducible: entries in a fixed order,
  fixed mtimes, owner and mode, gzip without a timestamp, JSON with sorted keys.

The built package is committed as ``ims_fhir/ig/ims-fhir-ig.tgz`` (shipped in the wheel; a
test proves it equals a fresh build) and written by ``ims-fhir ig --out DIR``.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path
from typing import Any

import orjson

from ..records import vocabulary as v
from ..terminology import Terminology, code_systems, default_terminology

PACKAGE_NAME = "io.github.ims-fhir.ig"
FHIR_VERSION = "4.0.1"
CORE = "http://hl7.org/fhir/StructureDefinition"
#: a fixed mtime for every tar entry (2026-01-01T00:00:00Z): the same tables give the same bytes
_MTIME = 1767225600
BUILT_PACKAGE = Path(__file__).resolve().parent / "ims-fhir-ig.tgz"

Resource = dict[str, Any]

#: the IG's own extensions: key (fhir.toml [extensions]) -> (title, value type, context, description, target)
EXTENSIONS: dict[str, tuple[str, str, str, str, str | None]] = {
    "session-number": ("IMS session number", "positiveInt", "Procedure",
                       "The number of this session in its series (1 = first).", None),
    "adverse-event-muscle": ("Muscle of an IMS adverse event", "CodeableConcept", "AdverseEvent",
                             "The needled muscle (ims-muscle) where the adverse event happened: R4 AdverseEvent "
                             "has no body site element.", None),
    "adverse-event-note": ("Note on an IMS adverse event", "string", "AdverseEvent",
                           "What the practitioner noted about the adverse event: R4 AdverseEvent has no note element.",
                           None),
    "consent": ("IMS consent of the session", "Reference", "Procedure",
                "The Consent (ims-consent) the patient gave or refused for this session.",
                "http://hl7.org/fhir/StructureDefinition/Consent"),
    "entered-in-error": ("Entered in error", "boolean", "AdverseEvent",
                         "true: recorded by mistake together with its session (whose Procedure is entered-in-error); "
                         "the resource asserts nothing. R4 AdverseEvent has no status to retract it with, and a "
                         "retraction is an update, never a DELETE.", None),
    "ims-certified": ("Holds a Gunn IMS certification", "boolean", "Practitioner",
                      "Whether the practitioner holds a Gunn IMS certification (true or false as recorded).", None),
}


#: extensions that change what their resource means (``modifierExtension``)
MODIFIERS = frozenset({"entered-in-error"})


def _pascal(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in text.replace("_", "-").split("-") if part)


def _meta(term: Terminology, kind: str, rid: str, title: str, description: str) -> Resource:
    return {
        "resourceType": kind, "id": rid, "url": f"{term.base}/{kind}/{rid}", "version": _version(),
        "name": _pascal(rid), "title": title, "status": "active", "experimental": False,
        "publisher": "ims-fhir", "description": description,
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ims-fhir")
    except PackageNotFoundError:  # running from a checkout without installing
        return "0.1.0"


def _narrative(text: str) -> dict[str, str]:
    from html import escape

    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{escape(text)}</p></div>'}


# ----------------------------------------------------------------------------- profiles


def _pattern(cc: dict[str, Any]) -> dict[str, Any]:
    """A patternCodeableConcept: the codings without displays (a pattern matches on what it names)."""
    return {"coding": [{"system": c["system"], "code": c["code"]} for c in cc["coding"]]}


def _el(path: str, **fields: Any) -> dict[str, Any]:
    return {"id": path, "path": path, **fields}


def _extension_slices(term: Terminology, rtype: str, keys: list[str], element: str = "extension") -> list[dict[str, Any]]:
    out = [_el(f"{rtype}.{element}", slicing={"discriminator": [{"type": "value", "path": "url"}], "rules": "open"})]
    for key in keys:
        name = _pascal(key)[:1].lower() + _pascal(key)[1:]
        out.append({"id": f"{rtype}.{element}:{name}", "path": f"{rtype}.{element}", "sliceName": name,
                    "min": 0, "max": "1", "type": [{"code": "Extension", "profile": [term.extension_url(key)]}]})
    return out


def _body_site(term: Terminology, path: str) -> list[dict[str, Any]]:
    """bodySite: the R4 core bodySite extension to a BodyStructure of this IG carries the side."""
    return [
        _el(f"{path}.extension", slicing={"discriminator": [{"type": "value", "path": "url"}], "rules": "open"}),
        {"id": f"{path}.extension:bodyStructure", "path": f"{path}.extension", "sliceName": "bodyStructure",
         "min": 0, "max": "1", "type": [{"code": "Extension", "profile": [term.core_extension_url("body-site")]}]},
    ]


def profile(term: Terminology, key: str) -> Resource:
    row = term.profiles[key]
    rtype, pid = row["type"], row["id"]
    sd = _meta(term, "StructureDefinition", pid, row["title"], row["description"])
    sd["text"] = _narrative(row["description"])
    sd.update({"fhirVersion": FHIR_VERSION, "kind": "resource", "abstract": False, "type": rtype,
               "baseDefinition": f"{CORE}/{rtype}", "derivation": "constraint"})
    els: list[dict[str, Any]] = [_el(rtype, short=row["title"], definition=row["description"])]
    if rtype == "Observation":
        els.append(_el("Observation.status", short="final unless the assessment says otherwise"))
        if row.get("category"):
            els.append(_el("Observation.category", min=1, patternCodeableConcept=_pattern(term.category(row["category"]))))
        if row.get("concept"):
            els.append(_el("Observation.code", patternCodeableConcept=_pattern(term.concept(row["concept"]))))
        elif row.get("vocabulary"):
            els.append(_el("Observation.code", binding={
                "strength": "required", "valueSet": value_set_url(term, row["vocabulary"])}))
        els.append(_el("Observation.subject", min=1))
        if key != "assessment-panel":
            els += _body_site(term, "Observation.bodySite")
    elif rtype == "Procedure":
        els += _extension_slices(term, "Procedure", ["session-number", "consent"])
        els.append(_el("Procedure.identifier", min=1))
        els.append(_el("Procedure.category", min=1, patternCodeableConcept=_pattern(term.fixed_concept("procedure_category"))))
        els.append(_el("Procedure.code", min=1, patternCodeableConcept=_pattern(term.concept("ims-procedure"))))
        els.append(_el("Procedure.reasonReference", short="the assessment panel, then the assessment's diagnoses",
                       definition="First the assessment panel (ims-assessment-panel) the session follows from, then each "
                                  "diagnosis (ims-condition) of that assessment, in the assessment's order. R4 allows "
                                  "Observation and Condition here; no further type constraint."))
        els += _body_site(term, "Procedure.bodySite")
        els.append(_el("Procedure.basedOn", max="1", short="the ServiceRequest (ims-series-plan) of the series"))
    elif rtype == "Encounter":
        els.append(_el("Encounter.identifier", min=1))
        els.append(_el("Encounter.class", patternCoding={"system": term.fixed_coding("encounter_class")["system"],
                                                          "code": term.fixed_coding("encounter_class")["code"]}))
        els.append(_el("Encounter.serviceType", min=1, patternCodeableConcept=_pattern(term.concept("physiotherapy-service"))))
        els.append(_el("Encounter.subject", min=1))
    elif rtype == "Patient":
        els.append(_el("Patient.identifier", min=1))
        els.append(_el("Patient.identifier.type", min=1))
        els.append(_el("Patient.name", min=1))
    elif rtype == "Practitioner":
        els += _extension_slices(term, "Practitioner", ["ims-certified"])
        els.append(_el("Practitioner.identifier", min=1))
    elif rtype == "Organization":
        els.append(_el("Organization.identifier", min=1))
        els.append(_el("Organization.type", min=1, patternCodeableConcept=_pattern(term.fixed_concept("organization_type"))))
    elif rtype == "Condition":
        els.append(_el("Condition.category", min=1, patternCodeableConcept=_pattern(term.fixed_concept("condition_category"))))
        els.append(_el("Condition.code", min=1))
        els.append(_el("Condition.encounter", min=1))
    elif rtype == "Consent":
        els.append(_el("Consent.scope", patternCodeableConcept=_pattern(term.fixed_concept("consent_scope"))))
        els.append(_el("Consent.patient", min=1))
        els.append(_el("Consent.dateTime", min=1))
        els.append(_el("Consent.provision", min=1))
        els.append(_el("Consent.provision.type", min=1))
    elif rtype == "AdverseEvent":
        els += _extension_slices(term, "AdverseEvent", ["adverse-event-muscle", "adverse-event-note"])
        els += _extension_slices(term, "AdverseEvent", ["entered-in-error"], "modifierExtension")
        els.append(_el("AdverseEvent.identifier", min=1))
        els.append(_el("AdverseEvent.actuality", fixedCode="actual"))
        els.append(_el("AdverseEvent.event", min=1, binding={
            "strength": "required", "valueSet": value_set_url(term, "event")}))
        els.append(_el("AdverseEvent.encounter", min=1))
        els.append(_el("AdverseEvent.date", min=1))
        els.append(_el("AdverseEvent.suspectEntity", min=1))
        els.append(_el("AdverseEvent.suspectEntity.instance", short="the session's Procedure (ims-procedure)"))
    elif rtype == "EpisodeOfCare":
        els.append(_el("EpisodeOfCare.identifier", min=1))
        els.append(_el("EpisodeOfCare.type", min=1, patternCodeableConcept=_pattern(term.concept("session-series"))))
        els.append(_el("EpisodeOfCare.managingOrganization", min=1))
    elif rtype == "ServiceRequest":
        els.append(_el("ServiceRequest.identifier", min=1))
        els.append(_el("ServiceRequest.intent", fixedCode="plan"))
        els.append(_el("ServiceRequest.code", min=1, patternCodeableConcept=_pattern(term.concept(row["concept"]))))
        els.append(_el("ServiceRequest.occurrence[x]", min=1, type=[{"code": "Timing"}]))
    elif rtype == "Provenance":
        els.append(_el("Provenance.agent", min=2))
        els.append(_el("Provenance.activity", min=1))
    elif rtype == "BodyStructure":
        els.append(_el("BodyStructure.locationQualifier", min=1, binding={
            "strength": "extensible", "valueSet": value_set_url(term, "side")}))
    sd["differential"] = {"element": els}
    return sd


def extension(term: Terminology, key: str) -> Resource:
    title, vtype, context, description, target = EXTENSIONS[key]
    url = term.extension_url(key)
    sd = _meta(term, "StructureDefinition", url.rsplit("/", 1)[1], title, description)
    sd["text"] = _narrative(description)
    sd.update({"fhirVersion": FHIR_VERSION, "kind": "complex-type", "abstract": False,
               "context": [{"type": "element", "expression": context}], "type": "Extension",
               "baseDefinition": f"{CORE}/Extension", "derivation": "constraint"})
    vt: dict[str, Any] = {"code": vtype}
    if target:
        vt["targetProfile"] = [target]
    modifier = {"isModifier": True, "isModifierReason": description} if key in MODIFIERS else {}
    sd["differential"] = {"element": [
        _el("Extension", short=title, definition=description, max="1", **modifier),
        _el("Extension.extension", max="0"),
        _el("Extension.url", fixedUri=url),
        _el("Extension.value[x]", min=1, type=[vt]),
    ]}
    return sd


# ----------------------------------------------------------------------------- terminology


def value_set_url(term: Terminology, vocabulary: str) -> str:
    return term.vocab_systems[vocabulary].replace("/CodeSystem/", "/ValueSet/")


def value_sets(term: Terminology) -> list[Resource]:
    """One ValueSet per CodeSystem of the project (every binding of the IG names one of these).

    A ValueSet also lists the standard codes the converter writes beside ours (the
    equivalent SNOMED CT / LOINC codings of the same concept), so that every coding of a
    bound CodeableConcept is in the value set."""
    vocabularies = {url: vocab for vocab, url in term.vocab_systems.items()}
    out = []
    for cs in code_systems(term):
        vid = cs["id"]
        include: list[dict[str, Any]] = [{"system": cs["url"]}]
        vocab = vocabularies.get(cs["url"])
        standard: dict[str, list[dict[str, str]]] = {}
        if vocab is not None:
            for slug in v.VOCABULARIES[vocab]:
                for c in term.vocab(vocab, slug)["coding"][1:]:
                    standard.setdefault(c["system"], []).append({"code": c["code"], "display": c["display"]})
        include += [{"system": system, "concept": concepts} for system, concepts in sorted(standard.items())]
        extra = " and the equivalent standard codes the converter writes beside them" if standard else ""
        vs = _meta(term, "ValueSet", vid, cs["title"], f"Every code of {cs['title']} ({cs['url']}){extra}.")
        vs["text"] = _narrative(vs["description"])
        vs["compose"] = {"include": include}
        out.append(vs)
    return out


def _with_narrative(resource: Resource) -> Resource:
    out = dict(resource)
    out.setdefault("text", _narrative(f"{resource.get('title', resource['id'])}"))
    return out


def concept_maps(term: Terminology) -> list[Resource]:
    """Project codes -> SNOMED CT / LOINC, from the same standard codings the converter emits
    (equivalent: they sit beside ours in one CodeableConcept) and the stated relations of
    concepts.toml (wider, related: never emitted as a coding)."""
    names = {term.systems["snomed"]: "snomed", term.systems["loinc"]: "loinc"}
    groups: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {t: {} for t in names}
    displays: dict[tuple[str, str], str] = {}

    def add(source: dict[str, str], target: dict[str, str], equivalence: str, comment: str | None = None) -> None:
        if target["system"] not in groups:
            return
        entry: dict[str, Any] = {"code": target["code"], "display": target["display"], "equivalence": equivalence}
        if comment:
            entry["comment"] = comment
        groups[target["system"]].setdefault((source["system"], source["code"]), []).append(entry)
        displays[(source["system"], source["code"])] = source["display"]

    for cc in list(term.vocab_concepts.values()) + list(term.concepts.values()):
        own = [c for c in cc["coding"] if c["system"].startswith(term.base)]
        for target in cc["coding"]:
            if own and target not in own:
                add(own[0], target, "equivalent")
    for rel in term.concept_rows.get("relations", []):
        source = term.concept(rel["source"])["coding"][0]
        target = {"system": term.systems[rel["system"]], "code": rel["code"], "display": rel["display"]}
        existing = groups.get(target["system"], {}).get((source["system"], source["code"]), [])
        if any(e["code"] == target["code"] for e in existing):
            continue
        add(source, target, rel["equivalence"], rel.get("comment"))
    out = []
    for system, name in names.items():
        by_source: dict[str, list[dict[str, Any]]] = {}
        for (src_system, code), targets in sorted(groups[system].items()):
            by_source.setdefault(src_system, []).append(
                {"code": code, "display": displays[(src_system, code)], "target": targets})
        cid = f"ims-to-{name}"
        cm = _meta(term, "ConceptMap", cid, f"IMS codes to {'SNOMED CT' if name == 'snomed' else 'LOINC'}",
                   "How each project code relates to a standard concept (R4 ConceptMapEquivalence: the target "
                   "is equivalent to, wider than, or only related to the IMS code). Codes not listed have no "
                   "verified standard counterpart.")
        cm["text"] = _narrative(cm["description"])
        cm["targetUri"] = system
        cm["group"] = [{"source": src, "target": system, "element": els} for src, els in sorted(by_source.items())]
        out.append(cm)
    return out


def resources(term: Terminology | None = None) -> list[Resource]:
    """Every resource of the IG, in a fixed order."""
    term = term or default_terminology()
    out: list[Resource] = [profile(term, key) for key in term.profiles]
    out += [extension(term, key) for key in EXTENSIONS]
    out += [_with_narrative(cs) for cs in code_systems(term)]
    out += value_sets(term)
    out += concept_maps(term)
    return out


# ----------------------------------------------------------------------------- package


def package_json(term: Terminology) -> Resource:
    return {
        "name": PACKAGE_NAME, "version": _version(), "type": "fhir.ig", "canonical": term.base,
        "title": "IMS (Gunn intramuscular stimulation) FHIR Implementation Guide",
        "description": "Profiles, extensions, CodeSystems, ValueSets and ConceptMaps of the ims-fhir adapter.",
        "fhirVersions": [FHIR_VERSION], "dependencies": {"hl7.fhir.r4.core": FHIR_VERSION},
        "author": "ims-fhir", "license": "Apache-2.0", "url": term.base,
    }


def _filename(res: Resource) -> str:
    return f"{res['resourceType']}-{res['id']}.json"


def build_package(term: Terminology | None = None) -> bytes:
    """The IG package (.tgz bytes), byte for byte the same for the same tables and version."""
    term = term or default_terminology()
    items = resources(term)
    index = {"index-version": 1, "files": [
        {"filename": _filename(r), "resourceType": r["resourceType"], "id": r["id"], "url": r["url"],
         "version": r["version"],
         **({"kind": r["kind"], "type": r["type"]} if r["resourceType"] == "StructureDefinition" else {})}
        for r in items]}
    files = [("package/package.json", package_json(term)), ("package/.index.json", index)]
    files += [(f"package/{_filename(r)}", r) for r in items]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in files:
            data = orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def package_filename() -> str:
    return f"{PACKAGE_NAME}-{_version()}.tgz"


def write_package(directory: Path, term: Terminology | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / package_filename()
    path.write_bytes(build_package(term))
    return path


__all__ = ["BUILT_PACKAGE", "PACKAGE_NAME", "build_package", "concept_maps", "extension", "package_json",
           "profile", "resources", "value_sets", "write_package"]
