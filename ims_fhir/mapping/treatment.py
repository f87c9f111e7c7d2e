"""treatment -> Encounter + Procedure + Observations ``partOf`` the Procedure.

The Procedure (identifier ``{system_base}/treatment``) is coded with the project's
``ims-procedure`` code only (no SNOMED CT concept means IMS; 231082000 is acupuncture and
is related in the IG's ConceptMap instead) and, when CPT applies (a US source, or
``--cpt``), for completed sessions on or after CPT's effective date, CPT 20560 (1-2
muscles) or 20561 (3 or more), counting distinct muscle+side pairs with ``bilateral`` as
left and right. Consent is a ``Consent`` resource (identifier ``{system_base}/consent`` =
the treatment id) the Procedure names by the IG extension ``ims-consent``; a side is a
BodyStructure (:class:`~ims_fhir.mapping.context.BodySites`). A session not done or
stopped keeps a ``finished`` Encounter and ``final`` findings (the patient was seen and
measured); its Procedure has a coded ``statusReason``.
The session series is an ``EpisodeOfCare`` (``{system_base}/series``, per patient and
assessment) the Encounter names in ``episodeOfCare``, and, when ``series_total`` is given, a
``ServiceRequest`` (intent ``plan``, ``occurrenceTiming.repeat.count`` = the planned sessions,
``{system_base}/series-plan``) the Procedure is ``basedOn``. Adverse events are
``AdverseEvent`` resources (``{system_base}/adverse-event`` = ``{treatment id}/{i}``; actuality
actual, HL7 adverse-event-severity, suspectEntity.instance = the Procedure); the Procedure's
``complication`` repeats their event codes. R4 AdverseEvent has no status: a retracted
session's AdverseEvents carry the IG's modifier extension ``ims-entered-in-error``.
The Procedure's ``reasonReference`` names the assessment panel (first) and then, when the
caller knows how many diagnoses that assessment has (:meth:`~ims_fhir.mapping.context.MappingContext.diagnosis_count`),
each of its Conditions ``{assessment id}/0..n-1`` in order; not known: the panel only.
What R4's Procedure has no element for is carried by an IG extension (session number) or by
Observations ``partOf`` the Procedure, identified by ``{system_base}/treatment-finding`` =
``{treatment id}/{part}``: ``pain-before``, ``pain-after`` and ``site/{i}`` (insertions,
needle size, twitch, electrical stimulation, segment as components).
"""

from __future__ import annotations

from typing import Any

from ..records.models import Treatment
from .context import BodySites, MappedRecord, MappingContext, Resource


def muscle_count(rec: Treatment) -> int:
    """Distinct muscle+side pairs needled; ``bilateral`` counts as left and right."""
    pairs: set[tuple[str, str]] = set()
    for site in rec.sites or ():
        if site.side == "bilateral":
            pairs.add((site.muscle, "left"))
            pairs.add((site.muscle, "right"))
        else:
            pairs.add((site.muscle, site.side))
    return len(pairs)


def _quantity(ctx: MappingContext, value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": ctx.term.systems["ucum"], "code": code}


def _procedure_code(rec: Treatment, ctx: MappingContext) -> dict[str, Any]:
    term = ctx.term
    base = term.concept("ims-procedure")
    if not ctx.cpt or rec.status != "completed" or rec.started_at[:10] < term.cpt_effective_from():
        return base
    count = muscle_count(rec)
    if count == 0:
        return base
    cpt = term.concept("cpt-1-2-muscles" if count <= 2 else "cpt-3-plus-muscles")
    return {"coding": base["coding"] + cpt["coding"], "text": base["text"]}


def map_treatment(rec: Treatment, ctx: MappingContext) -> MappedRecord:
    term = ctx.term
    subject = {"reference": f"Patient/{ctx.id_for('patient', rec.patient_id)}"}
    practitioner = {"reference": f"Practitioner/{ctx.id_for('practitioner', rec.practitioner_id)}"}
    encounter_value = f"treatment/{rec.id}"
    encounter_id = ctx.id_for("encounter", encounter_value)
    encounter_ref = {"reference": f"Encounter/{encounter_id}"}
    procedure_id = ctx.id_for("treatment", rec.id)
    procedure_ref = {"reference": f"Procedure/{procedure_id}"}
    consent_id = ctx.id_for("consent", rec.id)
    sites = BodySites(ctx, f"treatment/{rec.id}", subject)
    period = {"start": rec.started_at}
    if rec.ended_at is not None:
        period["end"] = rec.ended_at

    encounter: Resource = {
        "resourceType": "Encounter",
        "id": encounter_id,
        "identifier": [ctx.identifier("encounter", encounter_value)],
        "status": term.status("treatment_encounter", rec.status),
        "class": term.fixed_coding("encounter_class"),
        "type": [term.concept("treatment-visit")],
        "serviceType": term.concept("physiotherapy-service"),
        "subject": subject,
        "participant": [{"individual": practitioner}],
        "period": period,
        "serviceProvider": ctx.organization_ref,
    }

    series = _series(rec, ctx, subject)
    if series:
        encounter["episodeOfCare"] = [{"reference": f"EpisodeOfCare/{series[0]['id']}"}]
    encounter = ctx.finish(encounter, "encounter")

    extensions = []
    if rec.session_number is not None:
        extensions.append({"url": term.extension_url("session-number"), "valuePositiveInt": rec.session_number})
    extensions.append({"url": term.extension_url("consent"), "valueReference": {"reference": f"Consent/{consent_id}"}})

    procedure: Resource = {
        "resourceType": "Procedure",
        "id": procedure_id,
        "extension": extensions,
        "identifier": [ctx.identifier("treatment", rec.id)],
    }
    if len(series) > 1:
        procedure["basedOn"] = [{"reference": f"ServiceRequest/{series[1]['id']}"}]
    procedure["status"] = term.status("treatment", rec.status)
    if rec.status_reason is not None:
        reason = term.concept("status-reason-not-done" if rec.status == "not-done" else "status-reason-stopped")
        procedure["statusReason"] = {"coding": reason["coding"], "text": rec.status_reason}
    procedure["category"] = term.fixed_concept("procedure_category")
    procedure["code"] = _procedure_code(rec, ctx)
    procedure["subject"] = ctx.logical_ref("Patient", "patient", rec.patient_id)
    procedure["encounter"] = encounter_ref
    if rec.ended_at is not None:
        procedure["performedPeriod"] = period
    else:
        procedure["performedDateTime"] = rec.started_at
    procedure["performer"] = [{"actor": ctx.logical_ref("Practitioner", "practitioner", rec.practitioner_id)}]
    deps = [
        ctx.dependency("Patient", "patient", rec.patient_id),
        ctx.dependency("Practitioner", "practitioner", rec.practitioner_id),
        ctx.dependency("Organization", "organization", ctx.source.clinic_id),
    ]
    if rec.assessment_id is not None:
        aid = rec.assessment_id
        reasons = [ctx.logical_ref("Observation", "assessment", aid)]
        deps.append(ctx.dependency("Observation", "assessment", aid))
        for i in range(ctx.diagnosis_count(aid)):  # the assessment's diagnoses, in their order
            reasons.append(ctx.logical_ref("Condition", "diagnosis", f"{aid}/{i}"))
            deps.append(ctx.dependency("Condition", "diagnosis", f"{aid}/{i}"))
        procedure["reasonReference"] = reasons
    if rec.sites:
        procedure["bodySite"] = [sites.site("muscle", s.muscle, s.side) for s in rec.sites]
    if rec.notes is not None:
        procedure["note"] = [{"text": rec.notes}]
    if rec.adverse_events:
        procedure["complication"] = [term.vocab("event", ae.event) for ae in rec.adverse_events]
    procedure = ctx.finish(procedure, "procedure")

    consent = ctx.finish({
        "resourceType": "Consent",
        "id": consent_id,
        "identifier": [ctx.identifier("consent", rec.id)],
        # a retracted session's consent record is retracted with it (same resource, new version)
        "status": "entered-in-error" if rec.status == "entered-in-error" else "active",
        "scope": term.fixed_concept("consent_scope"),
        "category": [term.fixed_concept("consent_category")],
        "patient": subject,
        "dateTime": rec.started_at,
        "organization": [ctx.organization_ref],
        "policy": [{"uri": f"{term.base}/{term.fhir['consent_policy']['path']}"}],
        "provision": {"type": "permit" if rec.consent_obtained else "deny",
                      "data": [{"meaning": "related", "reference": procedure_ref}]},
    }, "consent")

    obs_status = term.status("treatment_observation", rec.status)
    observations: list[Resource] = []

    def observation(part: str, profile: str, category: str, code: dict[str, Any], effective: str, **fields: Any) -> None:
        value = f"{rec.id}/{part}"
        obs: Resource = {
            "resourceType": "Observation",
            "id": ctx.id_for("treatment-finding", value),
            "identifier": [ctx.identifier("treatment-finding", value)],
            "partOf": [procedure_ref],
            "status": obs_status,
            "category": [term.category(category)],
            "code": code,
            "subject": subject,
            "encounter": encounter_ref,
            "effectiveDateTime": effective,
            "performer": [practitioner],
        }
        obs.update(fields)
        observations.append(ctx.finish(obs, profile))

    if rec.pain_before_nrs is not None:
        observation("pain-before", "pain-score", "survey", term.concept("pain-before-treatment"), rec.started_at,
                    valueInteger=rec.pain_before_nrs)
    if rec.pain_after_nrs is not None:
        observation("pain-after", "pain-score", "survey", term.concept("pain-after-treatment"), rec.ended_at or rec.started_at,
                    valueInteger=rec.pain_after_nrs)

    for i, site in enumerate(rec.sites or ()):
        comps: list[dict[str, Any]] = [{"code": term.concept("insertions"), "valueInteger": site.insertions}]
        if site.needle_diameter_mm is not None:
            comps.append({"code": term.concept("needle-diameter"),
                          "valueQuantity": _quantity(ctx, site.needle_diameter_mm, "mm", "mm")})
        if site.needle_length_mm is not None:
            comps.append({"code": term.concept("needle-length"),
                          "valueQuantity": _quantity(ctx, site.needle_length_mm, "mm", "mm")})
        if site.twitch_response is not None:
            comps.append({"code": term.concept("twitch-response"),
                          "valueCodeableConcept": term.vocab("twitch_response", site.twitch_response)})
        if site.electrical_stimulation is not None:
            es = site.electrical_stimulation
            comps.append({"code": term.concept("estim-frequency"), "valueQuantity": _quantity(ctx, es.frequency_hz, "Hz", "Hz")})
            comps.append({"code": term.concept("estim-duration"), "valueQuantity": _quantity(ctx, es.duration_min, "min", "min")})
        if site.segment is not None:
            comps.append({"code": term.concept("spinal-segment"), "valueCodeableConcept": term.vocab("segment", site.segment)})
        observation(f"site/{i}", "needling-site", "procedure", term.concept("needling-site"), rec.started_at,
                    bodySite=sites.site("muscle", site.muscle, site.side), component=comps)

    events: list[Resource] = []
    for i, ae in enumerate(rec.adverse_events or ()):
        value = f"{rec.id}/{i}"
        event: Resource = {"resourceType": "AdverseEvent", "id": ctx.id_for("adverse-event", value)}
        ae_ext = []
        if ae.muscle is not None:
            ae_ext.append({"url": term.extension_url("adverse-event-muscle"),
                           "valueCodeableConcept": term.vocab("muscle", ae.muscle)})
        if ae.note is not None:
            ae_ext.append({"url": term.extension_url("adverse-event-note"), "valueString": ae.note})
        if ae_ext:
            event["extension"] = ae_ext
        if rec.status == "entered-in-error":  # retracted with its session; R4 AdverseEvent has no status
            event["modifierExtension"] = [{"url": term.extension_url("entered-in-error"), "valueBoolean": True}]
        event["identifier"] = ctx.identifier("adverse-event", value)  # R4: one identifier
        event["actuality"] = "actual"
        event["event"] = term.vocab("event", ae.event)
        event["subject"] = subject
        event["encounter"] = encounter_ref
        event["date"] = rec.started_at
        if ae.severity is not None:
            event["severity"] = term.adverse_event_severity(ae.severity)
        event["recorder"] = practitioner
        event["suspectEntity"] = [{"instance": procedure_ref}]
        events.append(ctx.finish(event, "adverse-event"))

    return MappedRecord("treatment", rec.id, [*series, encounter, procedure, consent, *observations, *events,
                                              *sites.resources], deps, procedure_id)


def _series(rec: Treatment, ctx: MappingContext, subject: dict[str, Any]) -> list[Resource]:
    """The session series a session belongs to: ``[EpisodeOfCare]``, plus the ServiceRequest of
    its planned sessions when ``series_total`` is known; ``[]`` when the record names no series.

    One EpisodeOfCare per patient and assessment (every session of the series emits the same
    resource, so sending it again changes nothing); one ServiceRequest per planned total, so a
    plan revised from 6 to 8 sessions is a new plan the later sessions are based on."""
    if rec.session_number is None and rec.series_total is None:
        return []
    term = ctx.term
    value = rec.patient_id if rec.assessment_id is None else f"{rec.patient_id}/{rec.assessment_id}"
    episode: Resource = {
        "resourceType": "EpisodeOfCare",
        "id": ctx.id_for("series", value),
        "identifier": [ctx.identifier("series", value)],
        # ims-record/1 does not say when a series ends: the episode stays active
        "status": "active",
        "type": [term.concept("session-series")],
        "patient": subject,
        "managingOrganization": ctx.organization_ref,
    }
    out = [ctx.finish(episode, "episode-of-care")]
    if rec.series_total is not None:
        plan_value = f"{value}/sessions-{rec.series_total}"
        plan: Resource = {
            "resourceType": "ServiceRequest",
            "id": ctx.id_for("series-plan", plan_value),
            "identifier": [ctx.identifier("series-plan", plan_value)],
            "status": "active",
            "intent": "plan",
            "category": [term.fixed_concept("procedure_category")],
            "code": term.concept("ims-procedure"),
            "subject": subject,
            "occurrenceTiming": {"repeat": {"count": rec.series_total}},
        }
        if rec.assessment_id is not None:
            plan["supportingInfo"] = [ctx.logical_ref("Observation", "assessment", rec.assessment_id)]
        out.append(ctx.finish(plan, "series-plan"))
    return out
