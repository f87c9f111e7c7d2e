"""assessment -> Encounter + panel Observation + one member Observation per finding.

The panel (code ``assessment-panel``, identifier ``{system_base}/assessment`` = the
assessment id) lists every member in ``hasMember``. Members carry the identifier
``{system_base}/assessment-finding`` = ``{assessment id}/{part}``, where part is
``chief-complaint``, ``pain-nrs``, ``pain-duration``, ``pain-location/{i}``,
``sign/{i}``, ``palpation/{i}``, ``rom/{i}``, ``outcome/{i}`` or ``candidacy``
(``i`` = position in the record's list). A spinal segment is a component
(``spinal-segment``); a side is a BodyStructure referenced from ``bodySite`` (see
:class:`~ims_fhir.mapping.context.BodySites`). Each diagnosis is a Condition
(encounter-diagnosis, identifier ``{system_base}/diagnosis`` = ``{assessment id}/{i}``)
listed in ``Encounter.diagnosis``. Every resource carries its IG profile and a narrative.
"""

from __future__ import annotations

from typing import Any

from ..records.models import Assessment
from .context import BodySites, MappedRecord, MappingContext, Resource


def _quantity(ctx: MappingContext, value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": ctx.term.systems["ucum"], "code": code}


def map_assessment(rec: Assessment, ctx: MappingContext) -> MappedRecord:
    term = ctx.term
    status = term.status("assessment", rec.status)
    subject = {"reference": f"Patient/{ctx.id_for('patient', rec.patient_id)}"}
    performer = [{"reference": f"Practitioner/{ctx.id_for('practitioner', rec.practitioner_id)}"}]
    encounter_value = f"assessment/{rec.id}"
    encounter_id = ctx.id_for("encounter", encounter_value)
    encounter_ref = {"reference": f"Encounter/{encounter_id}"}
    exam, survey = term.category("exam"), term.category("survey")
    sites = BodySites(ctx, f"assessment/{rec.id}", subject)

    conditions: list[Resource] = []
    for i, dx in enumerate(rec.diagnoses or ()):
        value = f"{rec.id}/{i}"
        code: dict[str, Any] = {"coding": [{"system": term.diagnosis_system(dx.system), "code": dx.code}]}
        if dx.text is not None:
            code["text"] = dx.text
        conditions.append(ctx.finish({
            "resourceType": "Condition",
            "id": ctx.id_for("diagnosis", value),
            "identifier": [ctx.identifier("diagnosis", value)],
            "verificationStatus": {"coding": [{
                "system": term.systems["condition-ver-status"],
                "code": term.status("condition_verification", rec.status)}]},
            "category": [term.fixed_concept("condition_category")],
            "code": code,
            "subject": subject,
            "encounter": encounter_ref,
            "recordedDate": rec.performed_at,
            "recorder": performer[0],
        }, "condition"))

    encounter: Resource = {
        "resourceType": "Encounter",
        "id": encounter_id,
        "identifier": [ctx.identifier("encounter", encounter_value)],
        "status": term.status("assessment_encounter", rec.status),
        "class": term.fixed_coding("encounter_class"),
        "type": [term.concept("assessment-visit")],
        "serviceType": term.concept("physiotherapy-service"),
        "subject": subject,
        "participant": [{"individual": performer[0]}],
        "period": {"start": rec.performed_at},
    }
    if conditions:
        encounter["diagnosis"] = [{"condition": {"reference": f"Condition/{c['id']}"}, "rank": i + 1}
                                  for i, c in enumerate(conditions)]
    encounter["serviceProvider"] = ctx.organization_ref
    encounter = ctx.finish(encounter, "encounter")

    members: list[Resource] = []

    def member(part: str, profile: str, category: dict[str, Any], code: dict[str, Any], **fields: Any) -> Resource:
        value = f"{rec.id}/{part}"
        obs: Resource = {
            "resourceType": "Observation",
            "id": ctx.id_for("assessment-finding", value),
            "identifier": [ctx.identifier("assessment-finding", value)],
            "status": status,
            "category": [category],
            "code": code,
            "subject": subject,
            "encounter": encounter_ref,
            "effectiveDateTime": rec.performed_at,
            "performer": performer,
        }
        obs.update(fields)
        obs = ctx.finish(obs, profile)
        members.append(obs)
        return obs

    def segment_component(segment: str | None) -> list[dict[str, Any]]:
        if segment is None:
            return []
        return [{"code": term.concept("spinal-segment"), "valueCodeableConcept": term.vocab("segment", segment)}]

    def bool_component(key: str, value: bool | None) -> list[dict[str, Any]]:
        return [] if value is None else [{"code": term.concept(key), "valueBoolean": value}]

    if rec.chief_complaint is not None:
        member("chief-complaint", "chief-complaint", exam, term.concept("chief-complaint"), valueString=rec.chief_complaint)

    if rec.pain is not None:
        pain = rec.pain
        member("pain-nrs", "pain-score", survey, term.concept("pain-nrs"), valueInteger=pain.nrs)
        if pain.duration_weeks is not None:
            member("pain-duration", "pain-duration", survey, term.concept("pain-duration"),
                   valueQuantity=_quantity(ctx, pain.duration_weeks, "weeks", "wk"))
        for i, loc in enumerate(pain.locations or ()):
            member(f"pain-location/{i}", "pain-location", survey, term.concept("pain-location"),
                   valueCodeableConcept=term.vocab("region", loc.region),
                   bodySite=sites.site("region", loc.region, loc.side))

    for i, sign in enumerate(rec.neuropathic_signs or ()):
        fields: dict[str, Any] = {"valueBoolean": sign.present}
        if sign.note is not None:
            fields["note"] = [{"text": sign.note}]
        if sign.side is not None:
            fields["bodySite"] = sites.side_only(sign.side)
        comps = segment_component(sign.segment)
        if comps:
            fields["component"] = comps
        member(f"sign/{i}", "neuropathic-sign", exam, term.vocab("sign", sign.sign), **fields)

    for i, palp in enumerate(rec.palpation or ()):
        fields = {}
        if palp.note is not None:
            fields["note"] = [{"text": palp.note}]
        fields["bodySite"] = sites.site("muscle", palp.muscle, palp.side)
        comps = (
            bool_component("tender", palp.tender)
            + bool_component("taut-band", palp.taut_band)
            + bool_component("trigger-point", palp.trigger_point)
            + segment_component(palp.segment)
        )
        if comps:
            fields["component"] = comps
        member(f"palpation/{i}", "palpation", exam, term.concept("palpation"), **fields)

    for i, rom in enumerate(rec.range_of_motion or ()):
        fields = {}
        if rom.degrees is not None:
            fields["valueQuantity"] = _quantity(ctx, rom.degrees, "degrees", "deg")
        if rom.side is not None:
            fields["bodySite"] = sites.side_only(rom.side)
        comps = bool_component("painful", rom.painful)
        if comps:
            fields["component"] = comps
        member(f"rom/{i}", "range-of-motion", exam, term.vocab("movement", rom.movement), **fields)

    for i, measure in enumerate(rec.outcome_measures or ()):
        unit_code, unit_display = term.instrument_unit(measure.instrument)
        member(f"outcome/{i}", "outcome-measure", survey, term.vocab("instrument", measure.instrument),
               valueQuantity=_quantity(ctx, measure.score, unit_display, unit_code))

    if rec.candidacy is not None:
        cand = rec.candidacy
        fields = {"valueBoolean": cand.suitable}
        if cand.note is not None:
            fields["note"] = [{"text": cand.note}]
        comps = [
            {"code": term.concept("contraindication"), "valueCodeableConcept": term.vocab("contraindication", c)}
            for c in cand.contraindications or ()
        ]
        if comps:
            fields["component"] = comps
        member("candidacy", "candidacy", exam, term.concept("candidacy"), **fields)

    panel: Resource = {
        "resourceType": "Observation",
        "id": ctx.id_for("assessment", rec.id),
        "identifier": [ctx.identifier("assessment", rec.id)],
        "status": status,
        "category": [exam],
        "code": term.concept("assessment-panel"),
        "subject": ctx.logical_ref("Patient", "patient", rec.patient_id),
        "encounter": encounter_ref,
        "effectiveDateTime": rec.performed_at,
        "performer": [ctx.logical_ref("Practitioner", "practitioner", rec.practitioner_id)],
    }
    if rec.notes is not None:
        panel["note"] = [{"text": rec.notes}]
    if members:
        panel["hasMember"] = [{"reference": f"Observation/{m['id']}"} for m in members]
    panel = ctx.finish(panel, "assessment-panel")

    deps = [
        ctx.dependency("Patient", "patient", rec.patient_id),
        ctx.dependency("Practitioner", "practitioner", rec.practitioner_id),
        ctx.dependency("Organization", "organization", ctx.source.clinic_id),
    ]
    return MappedRecord("assessment", rec.id, [encounter, *conditions, panel, *members, *sites.resources], deps,
                        panel["id"])
