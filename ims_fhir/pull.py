"""``ims-fhir pull``: search a FHIR server for IMS data and write it back as IMS records.

What is fetched (every search follows ``next`` links, with ``Cache-Control: no-cache``):

- IMS sessions: Procedures coded with the project's ``ims-procedure`` code, SNOMED CT
  231082000 or CPT 20560/20561, with their Observations (``_revinclude`` on ``part-of``)
  and the Patients, Practitioners and Encounters they refer to (``_include``);
- assessments: panel Observations (``assessment-panel``) with their members
  (``has-member``), Patients, Practitioners and Encounters;
- stand-alone pain scores (LOINC 72514-3) of other systems;
- with them, what the IG puts beside a record: a session's Consent (``_revinclude`` on
  ``Consent:data``), its AdverseEvents (``AdverseEvent:substance``), its planned series
  (``Procedure:based-on``) and series (``Encounter:episode-of-care``, iterated), an
  assessment's Conditions (``Encounter:diagnosis``, iterated) and the BodyStructures
  carrying the sides of body sites (searched by patient, since only an extension names
  them).

``--patient SYSTEM|VALUE`` narrows every search to that patient (``patient.identifier``).
``--since`` narrows them to what changed (``_lastUpdated=ge``): any Observation, Procedure,
Patient or Practitioner changed since then names its record, that record is fetched whole
(a changed finding brings back its whole assessment), and only those records are written
(the rest of what is fetched only resolves references). The resources then go through
the same import as ``ims-fhir import`` (:mod:`ims_fhir.importer`), streamed (no
intermediate file). Every search also brings the ``Provenance`` resources that target what
it finds (``_revinclude=Provenance:target``): not records, they are written beside the
output, ``NAME.provenance.ndjson``, one line per imported resource with its record and each
Provenance's id, time, activity, agents and the version it names (:func:`provenance_lines`).
Which records are the clinic's: its identifier scheme (:mod:`ims_fhir.identifiers`) for
``PullOptions.system_base``, else those of every clinic Organization on the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .client import ClientConfig, FhirClient, on_type
from .errors import UsageError
from .identifiers import IdentifierScheme, RecordKey, identifiers_of, split_system
from .importer import FhirItem, ImportOptions, ImportSummary, import_items, output_paths
from .terminology import Terminology, default_terminology

#: Searches pull makes; Encounters only come as _include of Procedures and panels.
PULL_REQUIREMENTS = tuple(on_type(t, "search-type")
                          for t in ("Procedure", "Observation", "Patient", "Practitioner", "Encounter", "Provenance",
                                    "Consent", "Condition", "BodyStructure", "AdverseEvent", "EpisodeOfCare",
                                    "ServiceRequest"))
#: every search also brings the Provenance of what it finds (recorded beside the output)
_PROVENANCE = ("_revinclude", "Provenance:target")
_PROCEDURE_INCLUDES = ["Procedure:subject", "Procedure:performer", "Procedure:encounter", "Procedure:based-on",
                       "Procedure:reason-reference"]
_PANEL_INCLUDES = ["Observation:has-member", "Observation:subject", "Observation:performer", "Observation:encounter"]
#: a session's Consent names the Procedure (Consent.provision.data); an assessment's Encounter its Conditions
_PROCEDURE_REVINCLUDES = ["Observation:part-of", "Consent:data", "AdverseEvent:substance"]
#: a session's series: the EpisodeOfCare its Encounter names
_PROCEDURE_ITERATE = [("_include:iterate", "Encounter:episode-of-care")]
_PANEL_ITERATE = [("_include:iterate", "Encounter:diagnosis")]


@dataclass(frozen=True)
class PullOptions:
    out_file: Path
    patient: str | None = None
    since: str | None = None
    output_format: str | None = None
    page_size: int = 200
    #: the clinic whose records ``since`` looks for; None: every clinic with an Organization on the server
    system_base: str | None = None


def _codes(term: Terminology, *keys: str) -> str:
    tokens = []
    for key in keys:
        for coding in term.concept(key)["coding"]:
            tokens.append(f"{coding['system']}|{coding['code']}")
    return ",".join(tokens)


def _search(client: FhirClient, rtype: str, params: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
    for page in client.search_pages(rtype, params, no_cache=True):
        for entry in page.bundle.get("entry") or ():
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") != "OperationOutcome":
                yield resource


class _Fetched:
    """The resources fetched, once each, streamed into the import with their origin; the
    Provenance resources apart (they are not records), with the record of every resource."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.seen: set[str] = set()
        self.provenance: dict[str, dict[str, Any]] = {}
        #: "Type/id" -> the record it belongs to
        self.records: dict[str, RecordKey] = {}

    def items(self, resources: Iterator[dict[str, Any]]) -> Iterator[FhirItem]:
        for resource in resources:
            key = f"{resource.get('resourceType')}/{resource.get('id')}"
            if resource.get("resourceType") == "Provenance":
                self.provenance.setdefault(key, resource)
                continue
            if key not in self.seen:
                self.seen.add(key)
                record = _record_of(resource)
                if record is not None:
                    self.records[key] = record
                yield FhirItem(resource, f"{self.where}#{len(self.seen)}")


def _record_of(resource: dict[str, Any]) -> RecordKey | None:
    ident = (identifiers_of(resource) or [{}])[0]
    split = split_system(ident.get("system")) if isinstance(ident, dict) else None
    return IdentifierScheme(split[0]).record_of(resource) if split else None


def provenance_lines(provenances: Iterable[dict[str, Any]], records: dict[str, RecordKey],
                     keep: Callable[[str, str], bool] | None = None) -> list[dict[str, Any]]:
    """One line per imported resource a Provenance names: its record and those Provenances
    (id, recorded, activity, the version named, agents)."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for prov in provenances:
        agents = [{"type": ((a.get("type") or {}).get("coding") or [{}])[0].get("code"),
                   "who": (a.get("who") or {}).get("reference")} for a in prov.get("agent") or []]
        activity = ((prov.get("activity") or {}).get("coding") or [{}])[0].get("code")
        for target in prov.get("target") or []:
            plain, _, version = str(target.get("reference", "")).partition("/_history/")
            by_target.setdefault(plain, []).append({"id": prov.get("id"), "recorded": prov.get("recorded"),
                                                    "activity": activity, "version": version or None,
                                                    "agents": agents})
    out = []
    for ref in sorted(by_target):
        record = records.get(ref)
        if record is None or (keep is not None and not keep(*record)):
            continue
        found = sorted(by_target[ref], key=lambda p: (str(p.get("recorded") or ""), str(p.get("id") or "")))
        out.append({"record_type": record[0], "id": record[1], "resource": ref, "provenance": found})
    return out


def pull(config: ClientConfig, options: PullOptions, *, terminology: Terminology | None = None,
         session: Any = None) -> ImportSummary:
    """Fetch IMS data from the server and import it into ``options.out_file``.

    What is fetched goes straight into the import (no intermediate file).
    """
    term = terminology or default_terminology()
    common: list[tuple[str, str]] = [("_count", str(options.page_size))]
    if options.patient:
        if "|" not in options.patient:
            raise UsageError("--patient must be SYSTEM|VALUE, e.g. https://health.example.org/phn|9000001")
        common.append(("patient.identifier", options.patient))
    procedure_codes = _codes(term, "ims-procedure", "cpt-1-2-muscles", "cpt-3-plus-muscles")
    panel_codes = _codes(term, "assessment-panel")
    pain_codes = ",".join(f"{c['system']}|{c['code']}" for c in term.concept("pain-nrs")["coding"]
                          if c["system"] != term.concept_system)

    with FhirClient(config, session=session) as client:
        needs = list(PULL_REQUIREMENTS)
        if options.since is not None and options.system_base is None:
            needs.append(on_type("Organization", "search-type"))
        client.require(needs)
        fetched = _Fetched(client.base_url)
        changed: set[RecordKey] = set()

        def everything() -> Iterator[dict[str, Any]]:
            yield from _search(client, "Procedure", common + [("code", procedure_codes)]
                               + [("_include", i) for i in _PROCEDURE_INCLUDES]
                               + [("_revinclude", i) for i in _PROCEDURE_REVINCLUDES] + _PROCEDURE_ITERATE
                               + [_PROVENANCE])
            yield from _search(client, "Observation", common + [("code", panel_codes)]
                               + [("_include", i) for i in _PANEL_INCLUDES] + _PANEL_ITERATE + [_PROVENANCE])
            yield from _search(client, "Observation", common + [("code", pain_codes)]
                               + [("_include", i) for i in _PANEL_INCLUDES[1:]] + [_PROVENANCE])

        keep: Callable[[str, str], bool] | None = None
        if options.since is None:
            resources = everything()
        else:
            schemes = _schemes(client, options.system_base)
            resources = _changed(client, schemes, common, options.since, changed)
            keep = lambda record_type, record_id: (record_type, record_id) in changed  # noqa: E731
        if options.since is None:
            resources = _with_body_structures(client, resources)
        else:
            # only the sides of the records being pulled: the patient's other BodyStructures belong to
            # records that did not change and would be left over
            resources = _with_body_structures(client, resources, lambda res: any(
                scheme.record_of(res) in changed for scheme in schemes))
        summary = import_items(fetched.items(resources), [client.base_url],
                               ImportOptions(out_file=options.out_file, output_format=options.output_format,
                                             record_filter=keep), terminology=term)
        # the Provenance of what was imported, beside the output (NAME.provenance.ndjson)
        summary_path = output_paths(options.out_file)["summary"]
        path = summary_path.with_name(summary_path.name.removesuffix(".summary.json") + ".provenance.ndjson")
        lines = provenance_lines(fetched.provenance.values(), fetched.records, keep)
        path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
        summary.files.append(str(path))
        return summary


def _schemes(client: FhirClient, system_base: str | None) -> list[IdentifierScheme]:
    """The clinics whose records ``--since`` looks for: the one given, else those with an Organization there."""
    if system_base is not None:
        return [IdentifierScheme(system_base)]
    schemes: dict[str, IdentifierScheme] = {}
    for org in _search(client, "Organization", [("_count", "200")]):
        scheme = IdentifierScheme.from_organization(org)
        if scheme is not None:
            schemes.setdefault(scheme.base, scheme)
    return list(schemes.values())


def _changed(client: FhirClient, schemes: list[IdentifierScheme], common: list[tuple[str, str]], since: str,
             changed: set[RecordKey]) -> Iterator[dict[str, Any]]:
    """Every record with a resource changed since ``since`` (its keys go into ``changed``), whole."""
    window = common + [("_lastUpdated", f"ge{since}")]
    owner: dict[RecordKey, IdentifierScheme] = {}
    for rtype in ("Patient", "Practitioner", "Procedure", "Observation", "Consent", "Condition", "AdverseEvent"):
        for res in _search(client, rtype, window):
            for scheme in schemes:
                key = scheme.record_of(res)
                if key is not None:
                    changed.add(key)
                    owner.setdefault(key, scheme)
                    break
            if rtype in ("Patient", "Practitioner"):
                yield res
    yield from _search(client, "Provenance", window)  # the Provenance of what changed
    for (record_type, record_id) in sorted(changed):
        scheme = owner[(record_type, record_id)]
        if record_type == "assessment":
            yield from _search(client, "Observation", [("identifier", f"{scheme.system('assessment')}|{record_id}")]
                               + [("_include", i) for i in _PANEL_INCLUDES] + _PANEL_ITERATE + [_PROVENANCE])
        elif record_type == "treatment":
            # not the reason-reference: a panel without its members is not a whole assessment,
            # and the Procedure's reference names the assessment by its identifier anyway
            yield from _search(client, "Procedure", [("identifier", f"{scheme.system('treatment')}|{record_id}")]
                               + [("_include", i) for i in _PROCEDURE_INCLUDES[:4]]
                               + [("_revinclude", i) for i in _PROCEDURE_REVINCLUDES] + _PROCEDURE_ITERATE
                               + [_PROVENANCE])


def _with_body_structures(client: FhirClient, resources: Iterator[dict[str, Any]],
                          wanted: Callable[[dict[str, Any]], bool] | None = None) -> Iterator[dict[str, Any]]:
    """The resources, then the BodyStructures (sides of body sites) of every patient among them
    (those ``wanted`` says): only an extension names them, which no search can follow."""
    patients: set[str] = set()
    for res in resources:
        if res.get("resourceType") == "Patient" and isinstance(res.get("id"), str):
            patients.add(res["id"])
        yield res
    for patient_id in sorted(patients):
        for res in _search(client, "BodyStructure", [("patient", f"Patient/{patient_id}"), ("_count", "200")]):
            if wanted is None or wanted(res):
                yield res


__all__ = ["PULL_REQUIREMENTS", "PullOptions", "provenance_lines", "pull"]
