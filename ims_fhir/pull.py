"""``ims-fhir pull``: search a FHIR server for IMS data and write it back as IMS records.

What is fetched (every search follows ``next`` links, with ``Cache-Control: no-cache``):

- IMS sessions: Procedures coded with the project's ``ims-procedure`` code, SNOMED CT
  231082000 or CPT 20560/20561, with their Observations (``_revinclude`` on ``part-of``)
  and the Patients, Practitioners and Encounters they refer to (``_include``);
- assessments: panel Observations (``assessment-panel``) with their members
  (``has-member``), Patients, Practitioners and Encounters;
- stand-alone pain scores (LOINC 72514-3) of other systems.

``--patient SYSTEM|VALUE`` narrows every search to that patient (``patient.identifier``).
``--since`` narrows them to what changed (``_lastUpdated=ge``): any Observation, Procedure,
Patient or Practitioner changed since then names its record, that record is fetched whole
(a changed finding brings back its whole assessment), and only those records are written
(the rest of what is fetched only resolves references). The resources then go through
the same import as ``ims-fhir import`` (:mod:`ims_fhir.importer`).

Provenance: every search also asks for the ``Provenance`` resources that target what it
finds (``_revinclude=Provenance:target``). They are not records; pull records them beside
the output, in ``NAME.provenance.ndjson``: one line per imported resource that has any, with
the record it belongs to and each Provenance's id, time, activity, agents and the version
it names (:func:`provenance_lines`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson

from .client import ClientConfig, FhirClient, on_type
from .errors import UsageError
from .importer import ImportOptions, ImportSummary, import_fhir, output_paths
from .push import record_key
from .terminology import Terminology, default_terminology

_PROCEDURE_INCLUDES = ["Procedure:subject", "Procedure:performer", "Procedure:encounter", "Procedure:reason-reference"]
_PROVENANCE = ("_revinclude", "Provenance:target")
_PANEL_INCLUDES = ["Observation:has-member", "Observation:subject", "Observation:performer", "Observation:encounter"]


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
    """Resources fetched, once each, written to an NDJSON file for the import; Provenance apart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("wb")
        self.seen: set[str] = set()
        self.provenance: dict[str, dict[str, Any]] = {}
        #: "Type/id" -> (record_type, record_id) of the resources written for the import
        self.records: dict[str, tuple[str, str]] = {}

    def add(self, resource: dict[str, Any]) -> None:
        key = f"{resource.get('resourceType')}/{resource.get('id')}"
        if resource.get("resourceType") == "Provenance":
            self.provenance.setdefault(key, resource)
            return
        if key not in self.seen:
            self.seen.add(key)
            self._fh.write(orjson.dumps(resource) + b"\n")
            record = record_key((resource.get("identifier") or [{}])[0])
            if record is not None:
                self.records[key] = record

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
                                   + [("_revinclude", "Observation:part-of"), _PROVENANCE]):
                    collector.add(res)
                for res in _search(client, "Observation", common + [("code", panel_codes)]
                                   + [("_include", i) for i in _PANEL_INCLUDES] + [_PROVENANCE]):
                    collector.add(res)
                for res in _search(client, "Observation", common + [("code", pain_codes)]
                                   + [("_include", i) for i in _PANEL_INCLUDES[1:]] + [_PROVENANCE]):
                    collector.add(res)
            else:
                changed = _pull_changed(client, collector, common, options.since)
        finally:
            collector.close()
        keep = None if changed is None else (lambda record_type, record_id: (record_type, record_id) in changed)
        summary = import_fhir([collector.path], ImportOptions(out_file=options.out_file,
                                                              output_format=options.output_format, record_filter=keep),
                              terminology=term)
        lines = provenance_lines(collector.provenance.values(), collector.records, keep)
        path = output_paths(options.out_file)["records"].parent / (
            output_paths(options.out_file)["summary"].name.removesuffix(".summary.json") + ".provenance.ndjson")
        path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
        summary.files.append(str(path))
        return summary


def provenance_lines(provenances: Any, records: dict[str, tuple[str, str]],
                     keep: Any = None) -> list[dict[str, Any]]:
    """One line per imported resource named by a Provenance target: its record and the Provenances."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for prov in provenances:
        agents = [{"type": ((a.get("type") or {}).get("coding") or [{}])[0].get("code"),
                   "who": (a.get("who") or {}).get("reference")} for a in prov.get("agent") or []]
        activity = ((prov.get("activity") or {}).get("coding") or [{}])[0].get("code")
        for target in prov.get("target") or []:
            ref = str(target.get("reference", ""))
            plain, _, version = ref.partition("/_history/")
            by_target.setdefault(plain, []).append({
                "id": prov.get("id"), "recorded": prov.get("recorded"), "activity": activity,
                "version": version or None, "agents": agents})
    out = []
    for ref in sorted(by_target):
        record = records.get(ref)
        if record is None or (keep is not None and not keep(*record)):
            continue
        found = sorted(by_target[ref], key=lambda p: (str(p.get("recorded") or ""), str(p.get("id") or "")))
        out.append({"record_type": record[0], "id": record[1], "resource": ref, "provenance": found})
    return out


def _pull_changed(client: FhirClient, collector: _Collector, common: list[tuple[str, str]],
                  since: str) -> set[tuple[str, str]]:
    """Fetch every record with a resource changed since ``since``; return those records' keys."""
    window = common + [("_lastUpdated", f"ge{since}")]
    changed: set[tuple[str, str]] = set()
    systems: dict[tuple[str, str], str] = {}
    for rtype in ("Patient", "Practitioner", "Procedure", "Observation"):
        for res in _search(client, rtype, window):
            for ident in (res.get("identifier") or [])[:1]:
                key = record_key(ident)
                if key is not None:
                    changed.add(key)
                    systems[key] = ident["system"].rsplit("/", 1)[0]
            if rtype in ("Patient", "Practitioner"):
                collector.add(res)
        # what changed also brings the Provenance of its new versions
        for res in _search(client, "Provenance", window):
            collector.add(res)
    for (record_type, record_id) in sorted(changed):
        base = systems[(record_type, record_id)]
        if record_type == "assessment":
            for res in _search(client, "Observation", [("identifier", f"{base}/assessment|{record_id}")]
                               + [("_include", i) for i in _PANEL_INCLUDES] + [_PROVENANCE]):
                collector.add(res)
        elif record_type == "treatment":
            # not the reason-reference: a panel without its members is not a whole assessment,
            # and the Procedure's reference names the assessment by its identifier anyway
            for res in _search(client, "Procedure", [("identifier", f"{base}/treatment|{record_id}")]
                               + [("_include", i) for i in _PROCEDURE_INCLUDES[:3]]
                               + [("_revinclude", "Observation:part-of"), _PROVENANCE]):
                collector.add(res)
    return changed


__all__ = ["PullOptions", "provenance_lines", "pull"]
