"""IMS Procedure + the Observations ``partOf`` it -> treatment.

A Procedure is an IMS session when its code decodes to our ``ims-procedure`` concept
(our own coding or SNOMED CT 231082000) or, for a foreign system, to CPT 20560/20561
(dry needling; reported ``assumed``). From it: id (``{system_base}/treatment``), status
(``[status.treatment]`` reversed), ``statusReason`` text, ``performedPeriod`` /
``performedDateTime``, patient and practitioner (business identifier values of the
referenced Patient / Practitioner), ``assessment_id`` (the identifier of the panel named
by ``reasonReference``, resolved or read from a conditional reference; the assessment's
diagnosis Conditions the Procedure names after it derive from the assessment and are read
without a report item), session number,
session number and consent (our extensions), series total (``occurrenceTiming.repeat.count``
of the ServiceRequest named by ``basedOn``; the session's series, the EpisodeOfCare of its
Encounter, is used without a field of its own), notes.

The AdverseEvents naming it in ``suspectEntity.instance`` -> ``adverse_events`` (event,
HL7 severity, the IG's muscle and note extensions; their identifier ``{treatment id}/{i}``
gives the order). From the Observations ``partOf`` it, by code: ``needling-site`` -> ``sites``,
``adverse-event`` (older exports) -> ``adverse_events``, pain before / after -> ``pain_before_nrs`` /
``pain_after_nrs``; their identifier ``{treatment id}/site/{i}`` gives the list order.
A foreign pain score (only LOINC 72514-3) part of the session is "before" when taken at
or before its start, "after" when taken at or after its end (``assumed``).

Without site Observations the sites come from ``Procedure.bodySite`` (muscle by our code
or the muscle table's SNOMED CT codings, side from a laterality extension); such a site
has no ``insertions``, and without laterality no ``side`` -- both required -- so the
record is rejected with the partial record in the reject rather than invented.
Without adverse-event Observations they come from ``complication``; a complication that
is not in the event table becomes ``other`` with its text as the note (``assumed``).
A foreign Procedure has no consent element: ``consent_obtained`` is never invented, so
such a session is rejected with its partial record until the clinic confirms consent.
"""

from __future__ import annotations

from typing import Any

from ...errors import Problem
from ...identifiers import split_system
from ...records.validation import aware_datetime
from .assessment import _components, _first, _put, _score, body_site
from .codes import PANEL, PROCEDURE_CONCEPTS, describe
from .context import Elements, ReverseContext, notes_text, same_reference
from .outcomes import Built
from .resources import Entry, identifier_tokens


def is_ims_procedure(ctx: ReverseContext, code: Any) -> bool:
    return bool(_concepts(ctx, code) & set(PROCEDURE_CONCEPTS))


def _concepts(ctx: ReverseContext, code: Any) -> set[str]:
    """The concept keys each coding of a code decodes to."""
    out = set()
    for c in (code.get("coding") if isinstance(code, dict) else None) or ():
        hit = ctx.codes.decode({"coding": [c]}, ("concept",))
        if hit is not None:
            out.add(hit[1])
    return out


def _text(cc: Any) -> str:
    """What a clinic would read for a concept: its text, else a coding's display, else the code."""
    if isinstance(cc, dict):
        if isinstance(cc.get("text"), str) and cc["text"].strip():
            return str(cc["text"])
        for coding in cc.get("coding") or ():
            if isinstance(coding, dict) and (coding.get("display") or coding.get("code")):
                return str(coding.get("display") or coding.get("code"))
    return describe(cc)




def _assessment_id(ctx: ReverseContext, el: Elements, built: Built) -> None:
    diagnoses: list[tuple[int, str]] = []  # (position, assessment id) of our diagnosis Conditions
    for i, ref in enumerate(el.take("reasonReference") or ()):
        of = _diagnosis_of(ctx, ref, el)
        if of is not None:  # derived from the assessment: checked below, once its id is known
            diagnoses.append((i, of))
            continue
        if "assessment_id" in built.data:
            el.note(f"reasonReference[{i}]", "not_mapped", "ims-record/1 keeps one assessment per treatment")
            continue
        target = ctx.resolve(ref, el.entry)
        if target is not None:
            if target.resource_type == "Observation" and ctx.codes.concept(target.resource.get("code")) == PANEL:
                ours = ctx.our_identifier(target.resource.get("identifier"), "assessment")
                idents = [x for x in target.resource.get("identifier") or () if isinstance(x, dict) and x.get("value")]
                value = ours[2] if ours else (idents[0]["value"] if idents else target.resource.get("id"))
                if value:
                    built.data["assessment_id"] = value
                    continue
            el.note(f"reasonReference[{i}]", "not_mapped",
                    f"the reason {target.label} is not an IMS assessment panel")
            continue
        text = ref.get("reference") if isinstance(ref, dict) else None
        found = None
        if isinstance(text, str) and "?" in text:
            found = next((v for s, v in identifier_tokens(text.partition("?")[2]) if _is_assessment_system(s)), None)
        ident = ref.get("identifier") if isinstance(ref, dict) else None
        if found is None and isinstance(ident, dict) and _is_assessment_system(ident.get("system")):
            found = ident.get("value")
        if found:
            built.data["assessment_id"] = found
        else:
            el.note(f"reasonReference[{i}]", "unresolved_reference",
                    f"{text or ref!r} names no assessment panel in the input and carries no "
                    "{system_base}/assessment identifier; assessment_id left out")
    for i, of in diagnoses:
        if of != built.data.get("assessment_id"):
            el.note(f"reasonReference[{i}]", "not_mapped",
                    f"a diagnosis of assessment {of!r}, not of the treatment's assessment; ims-record/1 keeps "
                    "a treatment's reason as its assessment only")


def _diagnosis_of(ctx: ReverseContext, ref: Any, el: Elements) -> str | None:
    """The assessment id of a reason that is one of our diagnosis Conditions (identifier
    ``{system_base}/diagnosis`` = ``{assessment id}/{i}``), resolved or named by a conditional
    reference or the reference's identifier; None for any other reason."""
    if not isinstance(ref, dict):
        return None
    value = None
    target = ctx.resolve(ref, el.entry)
    if target is not None:
        if target.resource_type == "Condition":
            ours = ctx.our_identifier(target.resource.get("identifier"), "diagnosis")
            value = ours[2] if ours else None
    else:
        text = ref.get("reference")
        if isinstance(text, str) and text.startswith("Condition?"):
            value = next((v for s, v in identifier_tokens(text.partition("?")[2]) if _is_system(s, "diagnosis")), None)
        ident = ref.get("identifier")
        if value is None and isinstance(ident, dict) and _is_system(ident.get("system"), "diagnosis") \
                and isinstance(ident.get("value"), str):
            value = ident["value"]
    if not value or "/" not in value:
        return None
    return value.rpartition("/")[0]


#: the series-total extension of exports before the ServiceRequest of a series; still read
LEGACY_SERIES_TOTAL_EXTENSION = "https://ims-fhir.github.io/fhir/StructureDefinition/ims-series-total"


def _episode(ctx: ReverseContext, visit: Entry | None, built: Built) -> None:
    """The session's series (EpisodeOfCare named by its Encounter): derived from patient and
    assessment, so read as used, not as a field."""
    if visit is None:
        return
    for ref in visit.resource.get("episodeOfCare") or ():
        target = ctx.resolve(ref, visit)
        if target is not None and target.resource_type == "EpisodeOfCare":
            ctx.use(target, built)


def _series_total(ctx: ReverseContext, el: Elements, built: Built) -> None:
    """series_total: the planned sessions of the ServiceRequest the Procedure is basedOn."""
    for i, ref in enumerate(el.take("basedOn") or ()):
        target = ctx.resolve(ref, el.entry)
        if target is None or target.resource_type != "ServiceRequest":
            el.note(f"basedOn[{i}]", "not_mapped", "names no ServiceRequest in the input; series_total left out")
            continue
        ctx.use(target, built)
        timing = target.resource.get("occurrenceTiming")
        repeat = timing.get("repeat") if isinstance(timing, dict) else None
        count = repeat.get("count") if isinstance(repeat, dict) else None
        if isinstance(count, int) and not isinstance(count, bool) and count >= 1 and "series_total" not in built.data:
            built.data["series_total"] = count
        else:
            el.note(f"basedOn[{i}]", "not_mapped", f"{target.label} has no occurrenceTiming.repeat.count (planned "
                    "sessions), or a second plan; series_total not read from it")


def _event_index(ctx: ReverseContext, el: Elements, treatment_id: str | None) -> int | None:
    ident = el.take("identifier")
    ours = ctx.our_identifier([ident] if isinstance(ident, dict) else ident, "adverse-event")
    if ours is not None and treatment_id is not None and ours[2].startswith(f"{treatment_id}/"):
        tail = ours[2][len(treatment_id) + 1:]
        return int(tail) if tail.isdigit() else None
    if ident is not None and ours is None:
        el.note("identifier", "not_mapped", "an adverse event's own identifier has no ims-record/1 field")
    return None


def _adverse_event(ctx: ReverseContext, el: Elements, procedure: Entry) -> dict[str, Any]:
    """One AdverseEvent whose suspect entity is the session."""
    event: dict[str, Any] = {}
    if el.take("actuality") != "actual":
        el.note("actuality", "assumed", "a potential adverse event imported as one that happened")
    value = el.take("event")
    slug = ctx.codes.slug(value, "event") if value is not None else None
    ext = el.extensions({ctx.codes.extension["adverse-event-muscle"]: "muscle",
                         ctx.codes.extension["adverse-event-note"]: "note"})
    note = ext["note"].get("valueString") if "note" in ext else None
    if slug is None:
        slug = "other"
        text = _text(value) if value is not None else None
        if text:
            note = f"{text}: {note}" if note else text
        el.note("event", "assumed", f"{describe(value)} is not in the adverse event table: imported as 'other'"
                + (" with its text in the note" if text else ""))
    event["event"] = slug
    severity = el.take("severity")
    for coding in (severity.get("coding") if isinstance(severity, dict) else None) or ():
        if isinstance(coding, dict) and coding.get("system") == ctx.codes.severity_system and \
                coding.get("code") in ("mild", "moderate", "severe"):
            event["severity"] = coding["code"]
            break
    else:
        if severity is not None:
            el.note("severity", "not_mapped", f"{describe(severity)} is not an HL7 adverse-event-severity code")
    if "muscle" in ext:
        _put(event, "muscle", ctx.coded(el, ext["muscle"].get("valueCodeableConcept"), "muscle", "extension"))
    _put(event, "note", note)
    if not same_reference(el.take("subject"), procedure.resource.get("subject")):
        el.note("subject", "not_mapped", "differs from the session's subject; the treatment keeps the session's")
    suspects = el.take("suspectEntity") or []
    if len(suspects) > 1:
        el.note("suspectEntity", "not_mapped", "more than one suspect; only the IMS session is kept")
    el.skip("encounter", "date", "recorder")
    retracted = any(isinstance(m, dict) and m.get("valueBoolean") is True for m in el.take("modifierExtension") or ())
    if retracted != (procedure.resource.get("status") == "entered-in-error"):
        el.note("modifierExtension", "not_mapped", "retracted (ims-entered-in-error) unlike its session, or the other "
                "way round; the treatment keeps the session's status")
    return event


#: the boolean consent extension of exports before the IG (ims-fhir <= 0.x); still read
LEGACY_CONSENT_EXTENSION = "https://ims-fhir.github.io/fhir/StructureDefinition/ims-consent-obtained"


def _consent(ctx: ReverseContext, el: Elements, ext: dict[str, Any], built: Built) -> bool | None:
    """consent_obtained from the Consent the Procedure names: provision permit -> true, deny -> false."""
    target = ctx.resolve(ext.get("valueReference"), el.entry)
    if target is None or target.resource_type != "Consent":
        return None
    ctx.use(target, built)
    provision = target.resource.get("provision")
    kind = provision.get("type") if isinstance(provision, dict) else None
    # a retracted session's consent is entered-in-error with it: what was charted still reads back
    if target.resource.get("status") not in ("active", "entered-in-error") or kind not in ("permit", "deny"):
        el.note("extension", "not_mapped", f"{target.label} is not an active permit or deny; consent not read")
        return None
    return bool(kind == "permit")


def _is_assessment_system(system: Any) -> bool:
    return _is_system(system, "assessment")


def _is_system(system: Any, kind: str) -> bool:
    found = split_system(system)
    return found is not None and found[1] == kind


def _status_reason(el: Elements) -> str | None:
    reason = el.take("statusReason")
    if not isinstance(reason, dict):
        return None
    if isinstance(reason.get("text"), str) and reason["text"].strip():
        own = {"status-reason-not-done", "status-reason-stopped"}
        if reason.get("coding") and not all(isinstance(c, dict) and c.get("code") in own for c in reason["coding"]):
            el.note("statusReason.coding", "not_mapped", "the reason's text is kept, not its codes")
        return str(reason["text"])
    for coding in reason.get("coding") or ():
        text = coding.get("display") or coding.get("code") if isinstance(coding, dict) else None
        if text:
            el.note("statusReason", "assumed", f"status_reason taken from the coding {describe(reason)}")
            return str(text)
    return None


def map_procedure(entry: Entry, ctx: ReverseContext) -> tuple[Built, list[tuple[Entry, str]]]:
    """The treatment of one IMS Procedure, and the parts that are not treatment findings (with why)."""
    built = Built("treatment")
    data = built.data
    el = ctx.elements(entry, built)
    ctx.business_id(el, "treatment", built)
    code = el.take("code")
    own = [c for c in code.get("coding") or () if isinstance(c, dict) and c.get("system") in ctx.codes.own_systems]
    if _concepts(ctx, {"coding": own}) != {"ims-procedure"}:
        standard = [c for c in code.get("coding") or () if isinstance(c, dict) and c not in own]
        el.note("code", "assumed", f"no Gunn IMS coding, only {describe({'coding': standard})} (dry needling): "
                "imported as an IMS needling session")
    el.skip("category")
    status = el.take("status")
    record_status = ctx.codes.treatment_status.get(status)
    if record_status is None:
        built.problems.append(Problem("status", "unmapped_status",
                                      f"Procedure status {status!r} has no ims-record/1 treatment status"))
    else:
        data["status"] = record_status
    _put(data, "status_reason", _status_reason(el))
    patient = ctx.person_id(el, el.take("subject"), "Patient", "patient_id", built, path="subject")
    _put(data, "patient_id", patient)
    performers = el.take("performer") or []
    for i, perf in enumerate(performers):
        if i > 0 or not isinstance(perf, dict):
            el.note(f"performer[{i}]", "not_mapped", "ims-record/1 keeps one practitioner per treatment")
            continue
        for key in perf:
            if key != "actor":
                el.note(f"performer[0].{key}", "not_mapped", f"the {key} of a performer has no ims-record/1 field")
        _put(data, "practitioner_id", ctx.person_id(el, perf.get("actor"), "Practitioner", "practitioner_id", built,
                                                    path="performer[0].actor"))
    visit = ctx.context_ref(el, "encounter", built)
    _episode(ctx, visit, built)
    period = el.take("performedPeriod")
    when = el.take("performedDateTime")
    if isinstance(period, dict):
        _put(data, "started_at", period.get("start"))
        _put(data, "ended_at", period.get("end"))
    elif isinstance(when, str):
        data["started_at"] = when
    ctx.require(built, "patient_id", "the Procedure has no subject naming the patient")
    ctx.require(built, "practitioner_id", "the Procedure has no performer naming the practitioner")
    ctx.require(built, "started_at", "the Procedure has no performedPeriod.start or performedDateTime")
    _assessment_id(ctx, el, built)
    ext = el.extensions({**{ctx.codes.extension[k]: k for k in ("session-number", "consent")},
                         LEGACY_CONSENT_EXTENSION: "consent-obtained", LEGACY_SERIES_TOTAL_EXTENSION: "series-total"})
    _put(data, "session_number", ext.get("session-number", {}).get("valuePositiveInt"))
    _put(data, "series_total", ext.get("series-total", {}).get("valuePositiveInt"))
    _series_total(ctx, el, built)
    _put(data, "consent_obtained", ext.get("consent-obtained", {}).get("valueBoolean"))
    if "consent" in ext:
        _put(data, "consent_obtained", _consent(ctx, el, ext["consent"], built))
    if "consent_obtained" not in data:
        built.problems.append(Problem("consent_obtained", "required",
                                      "the Procedure names no Consent in the input (extension "
                                      f"{ctx.codes.extension['consent']}); consent is never assumed"))
    _put(data, "notes", notes_text(el, el.take("note")))

    sites: list[tuple[bool, int, int, dict[str, Any]]] = []
    events: list[tuple[bool, int, int, dict[str, Any]]] = []
    rejected: list[tuple[Entry, str]] = []
    expected_status = ctx.codes.treatment_observation_status.get(record_status or "")
    for n, part in enumerate(ctx.index.linked_from("partOf", entry.seq)):
        if part.resource_type != "Observation":
            rejected.append((part, f"a {part.resource_type} part of an IMS session has no ims-record/1 counterpart"))
            continue
        key = ctx.codes.concept(part.resource.get("code"))
        if key not in ("needling-site", "adverse-event", "pain-before-treatment", "pain-after-treatment", "pain-nrs"):
            rejected.append((part, f"an Observation {describe(part.resource.get('code'))} part of an IMS session "
                                   "has no ims-record/1 field"))
            continue
        pel = ctx.elements(part, built)
        index = _part_index(ctx, pel, data.get("id"))
        _part_shared(pel, entry, expected_status)
        if key == "needling-site":
            sites.append((index is None, index or 0, n, _site(ctx, pel)))
        elif key == "adverse-event":
            events.append((index is None, index or 0, n, _event(ctx, pel)))
        else:
            _pain(ctx, pel, key, data)
        pel.finish()

    if sites:
        el.skip("bodySite")  # derived from the site Observations
        data["sites"] = [s for *_, s in sorted(sites, key=lambda t: t[:3])]
    else:
        fallback = [_site_from_body_site(ctx, el, i, cc) for i, cc in enumerate(el.take("bodySite") or ())]
        if fallback:
            data["sites"] = fallback
    for n, found in enumerate(ctx.index.linked_from("suspectEntity", entry.seq)):
        if found.resource_type != "AdverseEvent":
            continue
        ctx.use(found, built)
        ael = ctx.elements(found, built)
        index = _event_index(ctx, ael, data.get("id"))
        events.append((index is None, index or 0, n, _adverse_event(ctx, ael, entry)))
        ael.finish()
    if events:
        el.skip("complication")
        data["adverse_events"] = [e for *_, e in sorted(events, key=lambda t: t[:3])]
    else:
        fallback = [_event_from_complication(ctx, el, i, cc) for i, cc in enumerate(el.take("complication") or ())]
        if fallback:
            data["adverse_events"] = fallback
    el.finish()
    return built, rejected


def _part_index(ctx: ReverseContext, el: Elements, treatment_id: str | None) -> int | None:
    idents = el.take("identifier") or []
    ours = ctx.our_identifier(idents, "treatment-finding")
    index = None
    if ours is not None and treatment_id is not None and ours[2].startswith(f"{treatment_id}/"):
        tail = ours[2][len(treatment_id) + 1:].rpartition("/")[2]
        index = int(tail) if tail.isdigit() else None
    for pos, _ in enumerate(idents):
        if ours is None or pos != ours[0]:
            el.note(f"identifier[{pos}]", "not_mapped", "a session finding's own identifier has no ims-record/1 field")
    return index


def _part_shared(el: Elements, procedure: Entry, expected_status: str | None) -> None:
    """What a part repeats of its Procedure (mapping/treatment.py derives it); a difference is reported."""
    proc = procedure.resource
    parts = el.take("partOf") or []
    if len(parts) > 1:
        el.note("partOf", "not_mapped", "part of more than one resource; only the IMS session is kept")
    status = el.take("status")
    if expected_status is not None and status != expected_status:
        el.note("status", "not_mapped", f"status {status!r} differs from the session's ({expected_status!r})")
    if not same_reference(el.take("subject"), proc.get("subject")):
        el.note("subject", "not_mapped", "differs from the session's subject; the treatment keeps the session's")
    actors = [p.get("actor") for p in proc.get("performer") or () if isinstance(p, dict)]
    performer = el.take("performer")
    if performer is not None and not same_reference(performer, actors[:1]):
        el.note("performer", "not_mapped", "differs from the session's performer; the treatment keeps the session's")
    el.skip("category", "code", "encounter", "effectiveDateTime")


def _site(ctx: ReverseContext, el: Elements) -> dict[str, Any]:
    el.value_of()
    muscle, side = body_site(ctx, el, "muscle")
    comps = _components(ctx, el, {
        "insertions": ("Integer", None), "needle-diameter": ("Quantity", "mm"), "needle-length": ("Quantity", "mm"),
        "twitch-response": ("CodeableConcept", "twitch_response"), "estim-frequency": ("Quantity", "Hz"),
        "estim-duration": ("Quantity", "min"), "spinal-segment": ("CodeableConcept", "segment")})
    site: dict[str, Any] = {}
    _put(site, "muscle", muscle)
    _put(site, "side", side)
    _put(site, "segment", _first(el, comps, "spinal-segment"))
    _put(site, "insertions", _first(el, comps, "insertions"))
    _put(site, "needle_diameter_mm", _first(el, comps, "needle-diameter"))
    _put(site, "needle_length_mm", _first(el, comps, "needle-length"))
    _put(site, "twitch_response", _first(el, comps, "twitch-response"))
    estim: dict[str, Any] = {}
    _put(estim, "frequency_hz", _first(el, comps, "estim-frequency"))
    _put(estim, "duration_min", _first(el, comps, "estim-duration"))
    if estim:
        site["electrical_stimulation"] = estim
    if side is None:
        el.note("bodySite", "not_mapped", "the site has no laterality, and ims-record/1 needs its side")
    return site


def _event(ctx: ReverseContext, el: Elements) -> dict[str, Any]:
    _, value = el.value_of("CodeableConcept")
    event: dict[str, Any] = {}
    slug = ctx.codes.slug(value, "event") if value is not None else None
    note = notes_text(el, el.take("note"))
    if slug is None and value is not None:
        slug = "other"
        text = _text(value)
        note = f"{text}: {note}" if note else text
        el.note("valueCodeableConcept", "assumed", f"{describe(value)} is not in the adverse event table: imported as 'other' "
                "with its text in the note")
    _put(event, "event", slug)
    _components(ctx, el, {})  # the severity component of older exports used a CodeSystem since retired
    muscle, side = body_site(ctx, el, "muscle")
    _put(event, "muscle", muscle)
    if side is not None:
        el.note("bodySite", "not_mapped", "an adverse event has no side in ims-record/1")
    _put(event, "note", note)
    return event


def _pain(ctx: ReverseContext, el: Elements, key: str, data: dict[str, Any]) -> None:
    vkind, value = el.value_of("Integer", "Quantity")
    score = _score(el, ctx, vkind, value)
    if key == "pain-nrs":
        when, start, end = (aware_datetime(el.res.get("effectiveDateTime")), aware_datetime(data.get("started_at")),
                            aware_datetime(data.get("ended_at")))
        if when is not None and start is not None and when <= start:
            key = "pain-before-treatment"
        elif when is not None and start is not None and ((end is not None and when >= end) or (end is None and when > start)):
            key = "pain-after-treatment"
        else:
            el.note("code", "not_mapped", "a pain score part of the session, neither at its start nor at its end")
            return
        el.note("code", "assumed", f"a pain score taken {'before' if key.endswith('before-treatment') else 'after'} "
                "the session: imported as " + ("pain_before_nrs" if key.endswith("before-treatment") else "pain_after_nrs"))
    field = "pain_before_nrs" if key == "pain-before-treatment" else "pain_after_nrs"
    if field in data:
        el.note("value[x]", "not_mapped", f"a second {field}; the first is kept")
    elif score is not None:
        data[field] = score


def _site_from_body_site(ctx: ReverseContext, el: Elements, i: int, cc: Any) -> dict[str, Any]:
    site: dict[str, Any] = {}
    _put(site, "muscle", ctx.coded(el, cc, "muscle", f"bodySite[{i}]"))
    side = ctx.site_side(el, cc, f"bodySite[{i}]")
    _put(site, "side", side)
    el.note(f"bodySite[{i}]", "not_mapped" if side is None else "assumed",
            "no needling-site Observation: the site comes from Procedure.bodySite, without insertions"
            + ("" if side is not None else " and without laterality (side)") + ", which ims-record/1 requires")
    return site


def _event_from_complication(ctx: ReverseContext, el: Elements, i: int, cc: Any) -> dict[str, Any]:
    slug = ctx.codes.slug(cc, "event")
    if slug is not None:
        return {"event": slug}
    el.note(f"complication[{i}]", "assumed", f"{describe(cc)} is not in the adverse event table: imported as "
            "'other' with its text in the note")
    return {"event": "other", "note": _text(cc)}
