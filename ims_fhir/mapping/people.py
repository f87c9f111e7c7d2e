"""source -> Organization, patient -> Patient, practitioner -> Practitioner."""

from __future__ import annotations

from typing import Any

from ..records.models import Patient, Practitioner
from .context import MappedRecord, MappingContext, Resource


def map_organization(ctx: MappingContext) -> Resource:
    src = ctx.source
    org: Resource = {
        "resourceType": "Organization",
        "id": ctx.organization_id,
        "identifier": [ctx.identifier("organization", src.clinic_id)],
        "active": True,
        "type": [ctx.term.fixed_concept("organization_type")],
        "name": src.clinic_name or src.clinic_id,
    }
    address = {}
    if src.jurisdiction is not None:
        address["state"] = src.jurisdiction  # ISO 3166-2, e.g. CA-BC
    if src.country is not None:
        address["country"] = src.country  # ISO 3166-1 alpha-2
    if address:
        org["address"] = [address]
    return ctx.finish(org, "organization")


def _name(family: str, given: list[str] | None) -> dict[str, object]:
    name: dict[str, object] = {"family": family}
    if given:
        name["given"] = list(given)
    return name


def map_patient(rec: Patient, ctx: MappingContext) -> MappedRecord:
    chart: dict[str, Any] = {"use": "usual", "type": ctx.term.fixed_concept("chart_identifier_type"),
                             **ctx.identifier("patient", rec.id)}
    # a patient's other identifiers match the hospital's Patient: another organisation's record number
    # (MR, told by its system) or a health number (JHN) whose assigner is the clinic's jurisdiction
    health: dict[str, object] = {"type": ctx.term.fixed_concept("health_number_identifier_type")}
    if ctx.source.jurisdiction is not None:
        health["assigner"] = {"display": ctx.source.jurisdiction}
    mrn: dict[str, object] = {"type": ctx.term.fixed_concept("mrn_identifier_type")}
    identifiers = [chart] + [{**(mrn if ctx.is_mrn_system(i.system) else health), "system": i.system, "value": i.value}
                             for i in rec.identifiers or ()]
    res: Resource = {
        "resourceType": "Patient",
        "id": ctx.id_for("patient", rec.id),
        "identifier": identifiers,
        "name": [_name(rec.family_name, rec.given_names)],
    }
    telecom = []
    if rec.phone is not None:
        telecom.append({"system": "phone", "value": rec.phone})
    if rec.email is not None:
        telecom.append({"system": "email", "value": rec.email})
    if telecom:
        res["telecom"] = telecom
    if rec.sex is not None:
        res["gender"] = ctx.term.gender(rec.sex)
    if rec.birth_date is not None:
        res["birthDate"] = rec.birth_date
    res["managingOrganization"] = ctx.organization_ref
    res = ctx.finish(res, "patient")
    return MappedRecord("patient", rec.id, [res],
                        [ctx.dependency("Organization", "organization", ctx.source.clinic_id)], res["id"])


def map_practitioner(rec: Practitioner, ctx: MappingContext) -> MappedRecord:
    identifiers: list[dict[str, Any]] = [ctx.identifier("practitioner", rec.id)]
    if rec.registration is not None:
        identifiers.append({"type": ctx.term.fixed_concept("licence_identifier_type"),
                            "system": rec.registration.system, "value": rec.registration.value})
    res: Resource = {"resourceType": "Practitioner", "id": ctx.id_for("practitioner", rec.id)}
    if rec.ims_certified is not None:
        res["extension"] = [{"url": ctx.term.extension_url("ims-certified"), "valueBoolean": rec.ims_certified}]
    res["identifier"] = identifiers
    res["name"] = [_name(rec.family_name, rec.given_names)]
    if rec.ims_certified:
        res["qualification"] = [{"code": ctx.term.concept("ims-certification")}]
    res = ctx.finish(res, "practitioner")
    return MappedRecord("practitioner", rec.id, [res], [], res["id"])
