"""Assessment panel Observation + its members -> assessment; standalone findings -> assessment.

A member's *kind* comes from its code (``chief-complaint``, ``pain-nrs``,
``pain-duration``, ``pain-location``, ``palpation``, ``candidacy`` of our concepts, or a
slug of the ``sign``, ``movement`` or ``instrument`` vocabularies, standard codings
included: LOINC 72514-3 is a pain score). Its identifier ``{system_base}/assessment-finding``
= ``{assessment id}/{part}`` gives its position in the record's list (``sign/2`` is
``neuropathic_signs[2]``); without it, members keep the order of ``hasMember``.

What the panel says once (subject, performer, encounter, time, status) every member
repeats; a member that differs is reported, since the record has one of each.

*Standalone findings* (decided here, for foreign FHIR): Observations with an assessment
finding code that are not a member of a panel and not part of a Procedure become
assessments without a panel, one per encounter (or, without an encounter, per patient and
time); the first of them gives the assessment's id, patient, practitioner, time and status.
A pain score taken at a visit is the smallest assessment a clinic records, and an
assessment made of what the visit recorded is what a clinic would expect to see. Members
that carry *our* finding identifier but whose panel is not in the input are not rebuilt
(the panel holds the notes, and a partial record would overwrite the clinic's whole one);
they are rejected.
"""

from __future__ import annotations

from typing import Any

from ...errors import Problem
from .codes import FINDING_CONCEPTS, FINDING_VOCABULARIES, PANEL, describe
from .context import Elements, ReverseContext, notes_text, same_reference
from .outcomes import Built
from .resources import Entry

#: the element of a member compared with the panel's, and the record field it feeds
_SHARED = ("status", "subject", "performer", "effectiveDateTime", "encounter")


def finding_kind(ctx: ReverseContext, code: Any) -> tuple[str, str | None] | None:
    """(kind, slug) of an assessment finding's code, or None when it is not one."""
    hit = ctx.codes.decode(code, ("concept", *FINDING_VOCABULARIES))
    if hit is None:
        return None
    vocabulary, slug = hit
    if vocabulary == "concept":
        return (slug, None) if slug in FINDING_CONCEPTS else None
    return vocabulary, slug


def own_finding_value(ctx: ReverseContext, resource: dict[str, Any]) -> str | None:
    """The value of our ``/assessment-finding`` identifier (``{assessment id}/{part}``), if any."""
    ours = ctx.our_identifier(resource.get("identifier"), "assessment-finding")
    return ours[2] if ours else None


class _Findings:
    """Accumulates the members' contributions, then writes them into the record."""

    def __init__(self) -> None:
        self.single: dict[str, Any] = {}
        self.pain: dict[str, Any] = {}
        self.lists: dict[str, list[tuple[bool, int, int, dict[str, Any]]]] = {}
        self.arrival = 0

    def one(self, el: Elements, target: dict[str, Any], key: str, value: Any, path: str) -> None:
        if value is None:
            return
        if key in target:
            el.note(path, "not_mapped", f"a second {key.replace('_', ' ')} finding; the first is kept")
            return
        target[key] = value

    def add(self, name: str, index: int | None, item: dict[str, Any]) -> None:
        self.arrival += 1
        self.lists.setdefault(name, []).append((index is None, index or 0, self.arrival, item))

    def write(self, data: dict[str, Any]) -> None:
        for key, value in self.single.items():
            data[key] = value
        locations = self._sorted("locations")
        if self.pain or locations:
            pain = dict(self.pain)
            if locations:
                pain["locations"] = locations
            data["pain"] = pain
        for name in ("neuropathic_signs", "palpation", "range_of_motion", "outcome_measures"):
            items = self._sorted(name)
            if items:
                data[name] = items

    def _sorted(self, name: str) -> list[dict[str, Any]]:
        return [item for *_, item in sorted(self.lists.get(name, ()), key=lambda t: t[:3])]


def _components(ctx: ReverseContext, el: Elements, allowed: dict[str, tuple[str, str | None]]) -> dict[str, list[Any]]:
    """Component concept key -> values, for the concepts ``allowed`` (value type, vocabulary or unit)."""
    out: dict[str, list[Any]] = {}
    for i, comp in enumerate(el.take("component") or ()):
        if not isinstance(comp, dict):
            continue
        key = ctx.codes.concept(comp.get("code"))
        if key not in allowed:
            el.note(f"component[{i}]", "not_mapped", f"component {describe(comp.get('code'))} has no ims-record/1 field here")
            continue
        kind, extra = allowed[key]
        value_key = next((k for k in comp if k.startswith("value")), None)
        for k in comp:
            if k not in ("code", value_key):
                el.note(f"component[{i}].{k}", "not_mapped", f"the {k} of a component has no ims-record/1 field")
        raw: Any = comp.get(value_key) if value_key else None
        if value_key != f"value{kind}":
            if kind == "Integer" and value_key == "valueQuantity" and _integral(raw):
                raw = int(raw["value"])
            else:
                el.note(f"component[{i}]", "not_mapped", f"expected value{kind} in the {key} component")
                continue
        value: Any
        if kind == "CodeableConcept":
            value = ctx.coded(el, raw, str(extra), f"component[{i}].valueCodeableConcept")
        elif kind == "Quantity":
            value = ctx.quantity(el, raw, str(extra), f"component[{i}].valueQuantity")
        else:
            value = raw
        if value is not None:
            out.setdefault(key, []).append(value)
    return out


def _integral(q: Any) -> bool:
    value = q.get("value") if isinstance(q, dict) else None
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()


def _first(el: Elements, comps: dict[str, list[Any]], key: str) -> Any:
    values = comps.get(key) or []
    if len(values) > 1:
        el.note("component", "not_mapped", f"{len(values)} {key} components; the first is kept")
    return values[0] if values else None


def body_site(ctx: ReverseContext, el: Elements, vocabulary: str | None, path: str = "bodySite") -> tuple[str | None, str | None]:
    """(slug of ``vocabulary``, side) of a body site; codings or extensions that say more are reported."""
    cc = el.take("bodySite")
    if cc is None:
        return None, None
    slug = None
    if vocabulary is not None:
        slug = ctx.coded(el, cc, vocabulary, path)
    elif cc.get("coding"):
        el.note(f"{path}.coding", "not_mapped", "only the side of this body site has an ims-record/1 field")
    return slug, ctx.site_side(el, cc, path)


def _score(el: Elements, ctx: ReverseContext, kind: str | None, value: Any) -> int | None:
    if kind == "Integer":
        return value  # type: ignore[no-any-return]
    if kind == "Quantity" and _integral(value):
        return int(value["value"])
    if kind is not None:
        el.note(f"value{kind}", "not_mapped", "a pain score must be a whole number 0-10")
    return None


def map_member(ctx: ReverseContext, el: Elements, kind: tuple[str, str | None], index: int | None,
               acc: _Findings) -> None:
    """Put one finding Observation into the accumulating assessment."""
    what, slug = kind
    el.skip("category", "code")
    if what == "chief-complaint":
        _, value = el.value_of("String")
        acc.one(el, acc.single, "chief_complaint", value, "valueString")
    elif what == "pain-nrs":
        vkind, value = el.value_of("Integer", "Quantity")
        acc.one(el, acc.pain, "nrs", _score(el, ctx, vkind, value), "value[x]")
    elif what == "pain-duration":
        _, value = el.value_of("Quantity")
        if value is not None:
            acc.one(el, acc.pain, "duration_weeks", ctx.quantity(el, value, "wk", "valueQuantity"), "valueQuantity")
    elif what == "pain-location":
        _, value = el.value_of("CodeableConcept")
        region = ctx.coded(el, value, "region", "valueCodeableConcept") if value is not None else None
        site_region, side = _side_only(ctx, el, "region")
        if region is None:
            region = site_region
        elif site_region not in (None, region):
            el.note("bodySite", "not_mapped", f"the body site names region {site_region!r}, the value {region!r}; "
                    "the value is kept")
        if region is None:
            el.note("valueCodeableConcept", "not_mapped", "a pain location without a known region")
        else:
            acc.add("locations", index, {"region": region, **({"side": side} if side else {})})
    elif what == "sign":
        _, present = el.value_of("Boolean")
        _, side = body_site(ctx, el, None)
        comps = _components(ctx, el, {"spinal-segment": ("CodeableConcept", "segment")})
        item: dict[str, Any] = {"sign": slug}
        if present is not None:
            item["present"] = present
        _put(item, "segment", _first(el, comps, "spinal-segment"))
        _put(item, "side", side)
        _put(item, "note", notes_text(el, el.take("note")))
        acc.add("neuropathic_signs", index, item)
    elif what == "palpation":
        el.value_of()
        muscle, side = body_site(ctx, el, "muscle")
        comps = _components(ctx, el, {"tender": ("Boolean", None), "taut-band": ("Boolean", None),
                                      "trigger-point": ("Boolean", None), "spinal-segment": ("CodeableConcept", "segment")})
        item = {"muscle": muscle} if muscle else {}
        _put(item, "side", side)
        _put(item, "segment", _first(el, comps, "spinal-segment"))
        _put(item, "tender", _first(el, comps, "tender"))
        _put(item, "taut_band", _first(el, comps, "taut-band"))
        _put(item, "trigger_point", _first(el, comps, "trigger-point"))
        _put(item, "note", notes_text(el, el.take("note")))
        acc.add("palpation", index, item)
    elif what == "movement":
        _, value = el.value_of("Quantity")
        _, side = body_site(ctx, el, None)
        comps = _components(ctx, el, {"painful": ("Boolean", None)})
        item = {"movement": slug}
        _put(item, "side", side)
        if value is not None:
            _put(item, "degrees", ctx.quantity(el, value, "deg", "valueQuantity"))
        _put(item, "painful", _first(el, comps, "painful"))
        acc.add("range_of_motion", index, item)
    elif what == "instrument":
        vkind, value = el.value_of("Quantity", "Integer")
        score = value if vkind == "Integer" else (
            ctx.quantity(el, value, ctx.codes.instrument_unit(str(slug)), "valueQuantity") if value is not None else None)
        if score is not None:
            acc.add("outcome_measures", index, {"instrument": slug, "score": score})
    elif what == "candidacy":
        _, suitable = el.value_of("Boolean")
        comps = _components(ctx, el, {"contraindication": ("CodeableConcept", "contraindication")})
        cand: dict[str, Any] = {}
        _put(cand, "suitable", suitable)
        if comps.get("contraindication"):
            cand["contraindications"] = comps["contraindication"]
        _put(cand, "note", notes_text(el, el.take("note")))
        acc.one(el, acc.single, "candidacy", cand, "valueBoolean")


def _side_only(ctx: ReverseContext, el: Elements, vocabulary: str) -> tuple[str | None, str | None]:
    """A pain location's bodySite repeats its region (our coding) and adds the side."""
    cc = el.take("bodySite")
    if cc is None:
        return None, None
    side = ctx.site_side(el, cc)
    return ctx.codes.slug(cc, vocabulary), side


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


# ---------------------------------------------------------------------------------------


def head(ctx: ReverseContext, el: Elements, built: Built) -> dict[str, Any]:
    """Patient, practitioner, time and status of an assessment from its panel (or first finding).

    Returns the raw shared elements, against which the members are compared.
    """
    data = built.data
    expected = {key: el.res.get(key) for key in _SHARED}
    patient = ctx.person_id(el, el.take("subject"), "Patient", "patient_id", built, path="subject")
    if patient is not None:
        data["patient_id"] = patient
    performers = el.take("performer") or []
    for i, ref in enumerate(performers):
        if i == 0:
            practitioner = ctx.person_id(el, ref, "Practitioner", "practitioner_id", built, path="performer[0]")
            if practitioner is not None:
                data["practitioner_id"] = practitioner
        else:
            el.note(f"performer[{i}]", "not_mapped", "ims-record/1 keeps one practitioner per assessment")
    encounter = ctx.context_ref(el, "encounter", built)
    if encounter is not None and "diagnoses" not in data:
        _diagnoses(ctx, encounter, built)
    when = el.take("effectiveDateTime")
    for alt in ("effectivePeriod", "effectiveInstant"):
        value = el.take(alt)
        if when is None and value is not None:
            when = value.get("start") if isinstance(value, dict) else value
            el.note(alt, "assumed", f"performed_at taken from {alt}")
    if when is None and encounter is not None:
        when = (encounter.resource.get("period") or {}).get("start")
        if when is not None:
            el.note("encounter", "assumed", "performed_at taken from the Encounter's period start")
    if isinstance(when, str):
        data["performed_at"] = when
    status = el.take("status")
    record_status = ctx.codes.assessment_status.get(status)
    if record_status is None:
        built.problems.append(Problem("status", "unmapped_status",
                                      f"Observation status {status!r} has no ims-record/1 assessment status"))
    else:
        data["status"] = record_status
    if "practitioner_id" not in data and not performers and encounter is not None:
        for part in encounter.resource.get("participant") or ():
            individual = part.get("individual") if isinstance(part, dict) else None
            if individual:
                enc_el = Elements(encounter, built)
                practitioner = ctx.person_id(enc_el, individual, "Practitioner", "practitioner_id", built,
                                             path="participant.individual")
                if practitioner is not None:
                    data["practitioner_id"] = practitioner
                    el.note("performer", "assumed", "practitioner_id taken from the Encounter's participant")
                break
    what = "panel" if ctx.codes.concept(el.res.get("code")) == PANEL else "Observation"
    ctx.require(built, "patient_id", f"the {what} has no subject naming the patient")
    ctx.require(built, "practitioner_id", f"the {what} has no performer (nor its Encounter a participant) naming "
                "the practitioner")
    ctx.require(built, "performed_at", f"the {what} has no effective time (nor its Encounter a start)")
    return expected


def _diagnoses(ctx: ReverseContext, encounter: Entry, built: Built) -> None:
    """``diagnoses`` from the Conditions the assessment's Encounter lists (``Encounter.diagnosis``), in rank order."""
    found: list[tuple[int, int, dict[str, Any]]] = []
    systems = {url: slug for slug, url in ctx.codes.diagnosis_systems.items()}
    for pos, dx in enumerate(encounter.resource.get("diagnosis") or ()):
        target = ctx.resolve(dx.get("condition") if isinstance(dx, dict) else None, encounter)
        if target is None or target.resource_type != "Condition":
            continue
        cel = Elements(target, built)
        code = cel.take("code") or {}
        codings = [c for c in code.get("coding") or () if isinstance(c, dict) and c.get("system") in systems]
        if not codings or not isinstance(codings[0].get("code"), str):
            continue
        ctx.use(target, built)
        item: dict[str, Any] = {"system": systems[codings[0]["system"]], "code": codings[0]["code"]}
        _put(item, "text", code.get("text") if isinstance(code.get("text"), str) else None)
        for i in range(1, len(code.get("coding") or ())):
            cel.note(f"code.coding[{i}]", "not_mapped", "ims-record/1 keeps one code per diagnosis")
        cel.skip("identifier", "verificationStatus", "category", "subject", "encounter", "recordedDate", "recorder")
        cel.finish()
        rank = dx.get("rank") if isinstance(dx.get("rank"), int) else pos + 1
        found.append((rank, pos, item))
    if found:
        built.data["diagnoses"] = [item for *_, item in sorted(found, key=lambda t: t[:2])]


def _shared(el: Elements, expected: dict[str, Any], what: str) -> None:
    for key in _SHARED:
        value = el.take(key)
        if not same_reference(value, expected.get(key)):
            el.note(key, "not_mapped", f"differs from the {what}'s {key}; the assessment keeps the {what}'s")


def _member_index(el: Elements, ctx: ReverseContext, assessment_id: str | None) -> int | None:
    idents = el.take("identifier") or []
    ours = ctx.our_identifier(idents, "assessment-finding")
    index = None
    if ours is not None and assessment_id is not None and ours[2].startswith(f"{assessment_id}/"):
        tail = ours[2][len(assessment_id) + 1:].rpartition("/")[2]
        index = int(tail) if tail.isdigit() else None
    for pos in range(len(idents)):
        if ours is None or pos != ours[0]:
            el.note(f"identifier[{pos}]", "not_mapped", "a finding's own identifier has no ims-record/1 field")
    return index


def map_panel(entry: Entry, ctx: ReverseContext) -> tuple[Built, list[Entry]]:
    """The assessment of one panel; also the members that are not findings (to be rejected)."""
    built = Built("assessment")
    el = ctx.elements(entry, built)
    ctx.business_id(el, "assessment", built)
    expected = head(ctx, el, built)
    el.skip("category", "code")
    notes = notes_text(el, el.take("note"))
    members: list[tuple[Entry, tuple[str, str | None]]] = []
    not_findings: list[Entry] = []
    for ref in el.take("hasMember") or ():
        target = ctx.resolve(ref, entry)
        if target is None or target.resource_type != "Observation":
            built.problems.append(Problem("(record)", "unresolved_reference",
                                          f"member {ref.get('reference') if isinstance(ref, dict) else ref!r} of the "
                                          "panel is not in the input; the assessment would be incomplete"))
            continue
        kind = finding_kind(ctx, target.resource.get("code"))
        if kind is None:
            not_findings.append(target)
        else:
            members.append((target, kind))
    el.finish()
    acc = _Findings()
    aid = built.data.get("id")
    for target, kind in members:
        mel = ctx.elements(target, built)
        index = _member_index(mel, ctx, aid)
        _shared(mel, expected, "panel")
        map_member(ctx, mel, kind, index, acc)
        mel.finish()
    acc.write(built.data)
    if notes is not None:
        built.data["notes"] = notes
    return built, not_findings


def map_standalone(entries: list[Entry], ctx: ReverseContext) -> Built:
    """An assessment made of standalone findings of one visit (see the module docstring)."""
    built = Built("assessment")
    acc = _Findings()
    expected: dict[str, Any] = {}
    for n, entry in enumerate(entries):
        el = ctx.elements(entry, built)
        kind = finding_kind(ctx, entry.resource.get("code"))
        if kind is None:  # the index groups only findings: a broken invariant, not bad input
            raise RuntimeError(f"{entry.origin}: a standalone finding whose code is no IMS finding")
        if n == 0:
            ctx.business_id(el, "assessment", built)
            expected = head(ctx, el, built)
        else:
            _member_index(el, ctx, None)
            _shared(el, expected, "first finding")
        el.note("code", "assumed", f"standalone finding (no assessment panel): imported into assessment "
                f"{built.data.get('id')!r} with the other findings of its visit")
        map_member(ctx, el, kind, None, acc)
        el.finish()
    acc.write(built.data)
    return built
