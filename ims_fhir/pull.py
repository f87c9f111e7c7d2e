"""``ims-fhir pull``: search a FHIR server for IMS data and write it back as IMS records.

What is fetched (every search follows ``next`` links, with ``Cache-Control: no-cache``):

- IMS sessions: Procedures coded with the project's ``ims-procedure`` code, SNOMED CT
  231082000 or CPT 20560/20561, with their Observations (``_revinclude`` on ``part-of``)
  and the Patients, Practitioners and Encounters they refer to (``_include``);
- assessments: panel Observations (``assessment-panel``) with their members
  (``has-member``), Patients, Practitioners and Encounters;
- stand-alone pain scores (LOINC 72514-3) of other systems;
- with them, what the IG puts beside a record: a session's Consent (``_revinclude`` on
  ``Consent:data``), an assessment's Conditions (``Encounter:diagnosis``, iterated) and the
  BodyStructures carrying the sides of body sites (searched by patient, since only an
  extension names them).

``--patient SYSTEM|VALUE`` narrows every search to that patient (``patient.identifier``).
``--since`` narrows them to what changed (``_lastUpdated=ge``): any Observation, Procedure,
Patient or Practitioner changed since then names its record, that record is fetched whole
(a changed finding brings back its whole assessment), and only those records are written
(the rest of what is fetched only resolves references). The resources then go through
the same import as ``ims-fhir import`` (:mod:`ims_fhir.importer`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson

from .client import ClientConfig, FhirClient, on_type
from .errors import UsageError
from .importer import ImportOptions, ImportSummary, import_fhir
from .push import record_key
from .terminology import Terminology, default_terminology

_PROCEDURE_INCLUDES = ["Procedure:subject", "Procedure:performer", "Procedure:encounter", "Procedure:reason-reference"]
_PANEL_INCLUDES = ["Observation:has-member", "Observation:subject", "Observation:performer", "Observation:encounter"]
#: a session's Consent names the Procedure (Consent.provision.data); an assessment's Encounter its Conditions
_PROCEDURE_REVINCLUDES = ["Observation:part-of", "Consent:data"]
_PANEL_ITERATE = [("_include:iterate", "Encounter:diagnosis")]


@dataclass(frozen=True)
class PullOptions:
    out_file: Path
    patient: str | None = None
    since: str | None = None
    output_format: str | None = None
    page_size: int = 200


def _codes(term: Terminology, *keys: str) -> str:
    tokens = []
    for key in keys:
        for coding in term.concept(key)["coding"]:
            tokens.append(f"{coding['system']}|{coding['code']}")
    return ",".join(tokens)


class _Collector:
    """Resources fetched, once each, written to an NDJSON file for the import."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("wb")
        self.seen: set[str] = set()

    def add(self, resource: dict[str, Any]) -> None:
        key = f"{resource.get('resourceType')}/{resource.get('id')}"
        if key not in self.seen:
            self.seen.add(key)
            self._fh.write(orjson.dumps(resource) + b"\n")

    @property
    def patient_ids(self) -> set[str]:
        return {key.partition("/")[2] for key in self.seen if key.startswith("Patient/")}

    def close(self) -> None:
        self._fh.close()


def _search(client: FhirClient, rtype: str, params: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
    for page in client.search_pages(rtype, params, no_cache=True):
        for entry in page.bundle.get("entry") or ():
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") != "OperationOutcome":
                yield resource


def pull(config: ClientConfig, options: PullOptions, *, terminology: Terminology | None = None,
         session: Any = None) -> ImportSummary:
    """Fetch IMS data from the server and import it into ``options.out_file``."""
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

    with tempfile.TemporaryDirectory(prefix="ims-fhir-pull-") as tmp, FhirClient(config, session=session) as client:
        client.require([on_type(t, "search-type") for t in ("Procedure", "Observation", "Patient", "Practitioner")])
        collector = _Collector(Path(tmp) / "pulled.ndjson")
        changed: set[tuple[str, str]] | None = None
        try:
            if options.since is None:
                for res in _search(client, "Procedure", common + [("code", procedure_codes)]
                                   + [("_include", i) for i in _PROCEDURE_INCLUDES]
                                   + [("_revinclude", i) for i in _PROCEDURE_REVINCLUDES]):
                    collector.add(res)
                for res in _search(client, "Observation", common + [("code", panel_codes)]
                                   + [("_include", i) for i in _PANEL_INCLUDES] + _PANEL_ITERATE):
                    collector.add(res)
                for res in _search(client, "Observation", common + [("code", pain_codes)]
                                   + [("_include", i) for i in _PANEL_INCLUDES[1:]]):
                    collector.add(res)
            else:
                changed = _pull_changed(client, collector, common, options.since)
            _body_structures(client, collector)
        finally:
            collector.close()
        keep = None if changed is None else (lambda record_type, record_id: (record_type, record_id) in changed)
        return import_fhir([collector.path], ImportOptions(out_file=options.out_file,
                                                           output_format=options.output_format, record_filter=keep),
                           terminology=term)


def _pull_changed(client: FhirClient, collector: _Collector, common: list[tuple[str, str]],
                  since: str) -> set[tuple[str, str]]:
    """Fetch every record with a resource changed since ``since``; return those records' keys."""
    window = common + [("_lastUpdated", f"ge{since}")]
    changed: set[tuple[str, str]] = set()
    systems: dict[tuple[str, str], str] = {}
    for rtype in ("Patient", "Practitioner", "Procedure", "Observation", "Consent", "Condition"):
        for res in _search(client, rtype, window):
            for ident in (res.get("identifier") or [])[:1]:
                key = record_key(ident)
                if key is not None:
                    changed.add(key)
                    systems[key] = ident["system"].rsplit("/", 1)[0]
            if rtype in ("Patient", "Practitioner"):
                collector.add(res)
    for (record_type, record_id) in sorted(changed):
        base = systems[(record_type, record_id)]
        if record_type == "assessment":
            for res in _search(client, "Observation", [("identifier", f"{base}/assessment|{record_id}")]
                               + [("_include", i) for i in _PANEL_INCLUDES] + _PANEL_ITERATE):
                collector.add(res)
        elif record_type == "treatment":
            # not the reason-reference: a panel without its members is not a whole assessment,
            # and the Procedure's reference names the assessment by its identifier anyway
            for res in _search(client, "Procedure", [("identifier", f"{base}/treatment|{record_id}")]
                               + [("_include", i) for i in _PROCEDURE_INCLUDES[:3]]
                               + [("_revinclude", i) for i in _PROCEDURE_REVINCLUDES]):
                collector.add(res)
    return changed


def _body_structures(client: FhirClient, collector: _Collector) -> None:
    """The BodyStructures (sides of body sites) of every patient fetched: an extension names them,
    which no search can follow."""
    for patient_id in sorted(collector.patient_ids):
        for res in _search(client, "BodyStructure", [("patient", f"Patient/{patient_id}"), ("_count", "200")]):
            collector.add(res)


__all__ = ["PullOptions", "pull"]
