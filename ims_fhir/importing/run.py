"""One reverse run: resources in (any order, any mix of files and Bundles), outcomes out.

The stateful side of the import direction: the resource index (SQLite), validation of
the resources and of the rebuilt records; the mapping itself (:mod:`ims_fhir.mapping.reverse`)
is pure.

1. :meth:`ReverseRun.add` each resource (a Bundle is unpacked, its entries' ``fullUrl``
   kept). It is validated with the R4 models first: an invalid resource, a resource with
   a ``modifierExtension`` (its meaning would change in ways we cannot know) or a second
   resource with the same ``Type/id`` / ``fullUrl`` and different content is rejected
   on the spot; an identical repeat is counted as a duplicate. The rest is indexed with
   its *role* (patient, practitioner, organization, encounter, panel, finding,
   treatment-finding, treatment, other) decided from its type and code.
2. :meth:`ReverseRun.outcomes` then yields, in a fixed order: the early rejects; patients;
   practitioners; assessments from panels; assessments from standalone findings;
   treatments; and a reject for every resource nothing took (an Encounter no record
   refers to, a finding whose panel is missing, a blood pressure). Each rebuilt record
   is validated with the record models: a valid one is an :class:`ImportedRecord` (its
   data is what the models normalise), an invalid one a :class:`~ims_fhir.rejects.Rejected` carrying every
   problem and the partial record. The same record rebuilt twice (an NDJSON folder and
   the Bundles of the same data) is yielded once; the same id with different content is
   rejected (``duplicate_id``).

Memory is bounded by the index (SQLite; the caller may put it in a file) and one record
group at a time.
"""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import Problem
from ..fhir.validation import validate_resource
from ..mapping.reverse.assessment import finding_kind, map_panel, map_standalone, own_finding_value
from ..mapping.reverse.codes import PANEL, TREATMENT_FINDING_CONCEPTS, Codes, describe
from ..mapping.reverse.context import ReverseContext, with_record
from ..mapping.reverse.outcomes import Built, ImportedRecord, ImportResult, Outcome, ReportItem
from ..mapping.reverse.people import map_patient, map_practitioner, organization_source
from ..mapping.reverse.resources import COVERED, MAPPED, REJECTED, Entry, aliases, dumps, loads, resource_label
from ..mapping.reverse.treatment import is_ims_procedure, map_procedure
from ..records.models import record_dict
from ..records.validation import validate_record
from ..rejects import Rejected
from ..terminology import Terminology, default_terminology
from .index import ResourceIndex


class ReverseRun:
    """FHIR resources -> ``ims-record/1`` records; see the module docstring."""

    def __init__(self, terminology: Terminology | None = None, *, system_base: str | None = None,
                 db: sqlite3.Connection | None = None) -> None:
        self.term = terminology or default_terminology()
        self.codes = Codes(self.term)
        self.index = ResourceIndex(db)
        self.bases: set[str] = {system_base.rstrip("/")} if system_base else set()
        self.ctx = ReverseContext(self.codes, self.index, self.bases)
        self.sources: dict[str, dict[str, str]] = {}
        self.unreadable = 0
        self.duplicate_records = 0
        self._done = False
        self._prepared = False
        #: the IG's own modifier extensions, which the mappers read (others reject the resource)
        self._known_modifiers = {self.term.extension_url(key) for key in ("entered-in-error",)}

    # -- loading ---------------------------------------------------------------------------
    def add(self, resource: Any, origin: str, *, full_url: str | None = None) -> None:
        """Add one resource (or a Bundle of them); never raises for bad data."""
        if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
            self._add_bundle(resource, origin)
            return
        label = resource_label(resource, full_url, origin)
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            self.add_unreadable(label, origin, Problem("resourceType", "not_fhir", "not a FHIR resource (no resourceType)"))
            return
        try:
            problems = validate_resource(resource)
        except Exception as exc:  # the validator must not stop the run on odd input
            problems = [Problem("(resource)", "fhir_validation", f"{type(exc).__name__}: {exc}")]
        unknown = [e for e in resource.get("modifierExtension") or ()
                   if not (isinstance(e, dict) and e.get("url") in self._known_modifiers)]
        if not problems and unknown:
            urls = ", ".join(str(e.get("url")) for e in unknown if isinstance(e, dict))
            problems = [Problem(f"{resource['resourceType']}.modifierExtension", "modifier_extension",
                                f"modifier extension(s) {urls} change the meaning of the resource in ways the import "
                                "does not know")]
        if not problems:
            seen = self.index.find_alias(k for k in aliases(resource, full_url) if k[0] in "RU")
            if seen is not None:
                if self.index.body_of(seen) == dumps(resource):
                    self.index.duplicates += 1
                    return
                first = self.index.get(seen)
                problems = [Problem(resource["resourceType"], "duplicate_resource",
                                    f"{label} was already read at {first.origin} with different content")]
        if problems:
            self.index.add(resource, origin, full_url, "rejected", [], part_of=False, state=REJECTED)
            self.index.add_outcome(_encode(Rejected(None, None, origin, tuple(problems), resource=label)))
            return
        role = self._role(resource)
        links = []
        if resource["resourceType"] == "Observation":
            for kind in ("hasMember", "partOf"):
                for pos, ref in enumerate(resource.get(kind) or ()):
                    if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                        links.append((kind, pos, ref["reference"]))
        elif resource["resourceType"] == "AdverseEvent":  # an adverse event names the session it followed
            for pos, suspect in enumerate(resource.get("suspectEntity") or ()):
                ref = suspect.get("instance") if isinstance(suspect, dict) else None
                if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                    links.append(("suspectEntity", pos, ref["reference"]))
        self._learn_base(resource, role)
        self.index.add(resource, origin, full_url, role, links, part_of=bool(resource.get("partOf")))

    def add_unreadable(self, label: str, origin: str, problem: Problem) -> None:
        """Something read that is not a resource (a line that is not JSON): rejected, counted."""
        self.unreadable += 1
        self.index.add_outcome(_encode(Rejected(None, None, origin, (problem,), resource=label)))

    def _add_bundle(self, bundle: dict[str, Any], origin: str) -> None:
        # the entries are validated one by one (validating the Bundle as a whole would do it twice)
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            self.add_unreadable(resource_label(bundle, None, origin), origin,
                                Problem("Bundle.entry", "fhir_validation", "a Bundle's entry must be a list"))
            return
        for i, entry in enumerate(entries):
            where = f"{origin}#entry[{i}]"
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
                self.add(entry["resource"], where, full_url=full_url)
                continue
            request = entry.get("request") if isinstance(entry, dict) else None
            what = f"a {request.get('method')} entry" if isinstance(request, dict) and request.get("method") else "an entry"
            label = str(entry["fullUrl"]) if isinstance(entry, dict) and isinstance(entry.get("fullUrl"), str) else where
            self.add_unreadable(label, where, Problem("Bundle.entry.resource", "no_resource",
                                                      f"{what} without a resource has no ims-record/1 counterpart"))

    def _role(self, res: dict[str, Any]) -> str:
        rtype = res["resourceType"]
        simple = {"Patient": "patient", "Practitioner": "practitioner", "Organization": "organization",
                  "Encounter": "encounter", "PractitionerRole": "context"}
        if rtype in simple:
            return simple[rtype]
        if rtype == "Procedure":
            return "treatment" if is_ims_procedure(self.ctx, res.get("code")) else "other"
        if rtype == "Observation":
            code = res.get("code")
            if self.codes.concept(code) == PANEL:
                return "panel"
            if self.codes.concept(code) in TREATMENT_FINDING_CONCEPTS:
                return "treatment-finding"
            if finding_kind(self.ctx, code) is not None:
                return "finding"
        return "other"

    def _learn_base(self, res: dict[str, Any], role: str) -> None:
        """Bases named by a clinic Organization or a chart number make our identifiers certain."""
        if role == "organization":
            ours = self.ctx.our_identifier(res.get("identifier"), "organization")
        elif role == "patient":
            ours = self.ctx.our_identifier(res.get("identifier"), "patient")
        else:
            return
        if ours is not None:
            self.bases.add(ours[1])

    # -- mapping ---------------------------------------------------------------------------
    def outcomes(self) -> Iterator[Outcome]:
        """Every outcome of the run, in a deterministic order (see the module docstring)."""
        if self._done:
            raise RuntimeError("a ReverseRun yields its outcomes once")
        self._done = True
        self.prepare()
        index, ctx = self.index, self.ctx
        for body in index.early_outcomes():
            yield _decode(body)
        for entry in index.entries("patient"):
            yield from self._finish(map_patient(entry, ctx))
        for entry in index.entries("practitioner"):
            yield from self._finish(map_practitioner(entry, ctx))
        for entry in index.entries("panel"):
            built, not_findings = map_panel(entry, ctx)
            for other in not_findings:
                yield from self._reject(other, "not_ims", f"a member {describe(other.resource.get('code'))} of the "
                                        "assessment panel that is no IMS finding")
            yield from self._finish(built)
        for entry in index.entries("finding"):
            if not index.has_part_of(entry.seq) and own_finding_value(ctx, entry.resource) is None:
                index.group(self._visit_key(entry), entry.seq)
        for seqs in index.groups():
            yield from self._finish(map_standalone([index.get(s) for s in seqs], ctx))
        for entry in index.entries("treatment"):
            built, parts = map_procedure(entry, ctx)
            for part, why in parts:
                yield from self._reject(part, "not_ims", why)
            yield from self._finish(built)
        for entry in index.pending():
            yield from self._reject(entry, *self._why_left(entry))

    def prepare(self) -> None:
        """Resolve links and read the clinics' Organizations (:attr:`sources`); once every resource is added."""
        if self._prepared:
            return
        self._prepared = True
        self.index.finalise()
        for org in self.index.entries("organization"):
            source = organization_source(org, self.ctx)
            if source is not None:
                self.sources.setdefault(source["system_base"], source)
                self.index.mark([org.seq], MAPPED)

    def _visit_key(self, entry: Entry) -> str:
        """Standalone findings of one encounter (else of one patient at one time) form one assessment."""
        res = entry.resource
        encounter = self.ctx.resolve(res.get("encounter"), entry)
        if encounter is not None:
            return f"e|{encounter.seq}"
        if isinstance(res.get("encounter"), dict) and res["encounter"].get("reference"):
            return f"r|{res['encounter']['reference']}"
        subject = self.ctx.resolve(res.get("subject"), entry)
        who = str(subject.seq) if subject is not None else dumps(res.get("subject"), sort_keys=True).decode()
        return f"t|{who}|{res.get('effectiveDateTime') or entry.seq}"

    def _why_left(self, entry: Entry) -> tuple[str, str]:
        rtype, res = entry.resource_type, entry.resource
        if entry.role in ("encounter", "organization", "context"):
            return "not_mapped", f"{_a(rtype)} that no imported record refers to has no ims-record/1 counterpart"
        if entry.role == "finding" and own_finding_value(self.ctx, res) is not None:
            return "orphan", (f"finding {own_finding_value(self.ctx, res)!r}: its assessment panel is not in the input, "
                              "and a finding alone would make a partial assessment")
        if entry.role in ("finding", "treatment-finding"):
            return "orphan", "part of no IMS session in the input (its Procedure is missing or is not an IMS session)"
        if rtype in ("Observation", "Procedure"):
            return "not_ims", f"{_a(rtype)} coded {describe(res.get('code'))} has no ims-record/1 counterpart"
        return "not_ims", f"{_a(rtype)} has no ims-record/1 counterpart"

    def _reject(self, entry: Entry, rule: str, message: str) -> Iterator[Outcome]:
        if entry.seq < 0 or self.index.state(entry.seq) != 0:
            return
        self.index.mark([entry.seq], REJECTED)
        yield Rejected(None, None, entry.origin, (Problem(entry.resource_type, rule, message),), resource=entry.label)

    def _finish(self, built: Built) -> Iterator[Outcome]:
        rtype, data = built.record_type, built.data
        record_id = data.get("id") if isinstance(data.get("id"), str) else None
        seqs = [seq for seq, _, _ in built.sources if seq >= 0]
        labels = tuple(label for _, label, _ in built.sources)
        _, label, origin = built.sources[0]
        problems = list(built.problems)
        model, found = validate_record(rtype, copy.deepcopy(data))
        mine = {p.path for p in problems}
        problems += [p for p in found if not (p.path in mine and p.rule == "required")]
        outcome: Outcome | None
        if problems:
            self.index.mark(seqs, COVERED)
            outcome = Rejected(rtype, record_id, origin, tuple(problems), resource=label, record=data, resources=labels)
        elif model is None:  # the models found nothing wrong yet gave no record: cannot happen
            raise RuntimeError(f"validate_record gave neither a {rtype} nor a problem")
        else:
            out = record_dict(model)
            seen = self.index.record_seen(rtype, built.system_base or "", out["id"],
                                          dumps(out, sort_keys=True), origin)
            if seen is None:
                self.index.mark(seqs, MAPPED)
                outcome = ImportedRecord(rtype, out, built.system_base, origin, labels)
            elif seen[0]:
                self.index.mark(seqs, MAPPED)
                self.duplicate_records += 1
                outcome = None
            else:
                self.index.mark(seqs, COVERED)
                outcome = Rejected(rtype, record_id, origin, (Problem(
                    "id", "duplicate_id", f"{rtype} {out['id']!r} was already imported from {seen[1]} with different "
                    "content"),), resource=label, record=data, resources=labels)
        if outcome is not None:
            yield outcome
        for item in built.report:
            yield with_record(item, rtype, record_id)

    def counts(self) -> dict[str, int]:
        """Resources read, mapped, rejected and duplicate (read = the other three)."""
        states = self.index.counts()
        rejected = states["rejected"] + states["pending"] + self.unreadable
        mapped = states["mapped"]
        duplicate = self.index.duplicates
        return {"read": mapped + rejected + duplicate, "mapped": mapped, "rejected": rejected, "duplicate": duplicate}

    def close(self) -> None:
        self.index.close()


def _a(word: str) -> str:
    return ("an " if word[:1].upper() in "AEIOU" else "a ") + word


def _encode(reject: Rejected) -> bytes:
    return dumps(reject.as_dict())


def _decode(body: bytes) -> Rejected:
    d = loads(body)
    return Rejected(d.get("record_type"), d.get("id"), d["origin"], tuple(Problem(**p) for p in d["problems"]),
                    resource=d["resource"])


def reverse_resources(resources: Iterable[Any], terminology: Terminology | None = None, *,
                      system_base: str | None = None) -> ImportResult:
    """FHIR R4 resources (dicts; Bundles are unpacked) -> ``ims-record/1`` records, rejects and report.

    The whole set is indexed in memory; for inputs too big for that, use :class:`ReverseRun`
    with a file-backed SQLite connection (as :mod:`ims_fhir.importer` does).
    """
    run = ReverseRun(terminology, system_base=system_base)
    try:
        for i, res in enumerate(resources):
            run.add(res, f"resources[{i}]")
        result = ImportResult()
        for outcome in run.outcomes():
            if isinstance(outcome, ImportedRecord):
                result.records.append(outcome)
            elif isinstance(outcome, Rejected):
                result.rejects.append(outcome)
            elif isinstance(outcome, ReportItem):
                result.report.append(outcome)
        result.sources = dict(run.sources)
        result.counts = run.counts()
        return result
    finally:
        run.close()
