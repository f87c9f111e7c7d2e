"""Patient -> patient, Practitioner -> practitioner, the clinic's Organization -> source.

Patient: the chart number is our identifier ``{system_base}/patient`` (type MR); a
foreign Patient without it gives its identifier of type MR instead (reported
``assumed``); a Patient with neither is rejected (no chart number, and a health number
is not one). Every other identifier with a system becomes ``identifiers``. Of several
names the ``official`` (else ``usual``, else first) is taken; the first phone and the
first email are taken; ``birthDate`` only when it is a full date.

Practitioner: our identifier ``{system_base}/practitioner`` is the id and the next
identifier the registration; a foreign Practitioner's first identifier is its id.
``ims_certified`` comes from our extension, else from a qualification coded with our
``ims-certification`` concept.
"""

from __future__ import annotations

from typing import Any

from ...errors import Problem
from .context import Elements, ReverseContext
from .outcomes import Built
from .resources import Entry


def _name(el: Elements, built: Built) -> None:
    names = [n for n in el.take("name") or () if isinstance(n, dict)]
    if not names:
        return
    rank: dict[str | None, int] = {"official": 0, "usual": 1}
    chosen = min(range(len(names)), key=lambda i: (rank.get(names[i].get("use"), 2), i))
    for i in range(len(names)):
        if i != chosen:
            el.note(f"name[{i}]", "not_mapped", "ims-record/1 keeps one name per person")
    name = names[chosen]
    if isinstance(name.get("family"), str):
        built.data["family_name"] = name["family"]
    given = [g for g in name.get("given") or () if isinstance(g, str)]
    if given:
        built.data["given_names"] = given
    for key in name:
        if key not in ("family", "given", "use"):
            el.note(f"name[{chosen}].{key}", "not_mapped", f"the {key} of a name has no ims-record/1 field")


def _other_identifier(el: Elements, pos: int, ident: Any, *, chart: bool = False) -> dict[str, str] | None:
    if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
        el.note(f"identifier[{pos}]", "not_mapped", "an identifier without a value")
        return None
    if not isinstance(ident.get("system"), str):
        el.note(f"identifier[{pos}]", "not_mapped", f"identifier {ident['value']!r} has no system, which ims-record/1 needs")
        return None
    for key in ident:
        if key not in ("system", "value") and not (chart and key in ("type", "use")) and not _derived(key, ident):
            el.note(f"identifier[{pos}].{key}", "not_mapped", f"the {key} of an identifier has no ims-record/1 field")
    return {"system": ident["system"], "value": ident["value"]}


#: identifier types the forward mapping adds (v2-0203 JHN health number, MR record number, PRN registration)
_DERIVED_TYPES = frozenset({("http://terminology.hl7.org/CodeSystem/v2-0203", "JHN"),
                            ("http://terminology.hl7.org/CodeSystem/v2-0203", "MR"),
                            ("http://terminology.hl7.org/CodeSystem/v2-0203", "PRN")})


def _derived(key: str, ident: dict[str, Any]) -> bool:
    """A type or assigner the forward mapping derives (from the record kind and source.jurisdiction)."""
    value = ident.get(key)
    if key == "type" and isinstance(value, dict):
        codings = [c for c in value.get("coding") or () if isinstance(c, dict)]
        return bool(codings) and all((c.get("system"), c.get("code")) in _DERIVED_TYPES for c in codings)
    if key == "assigner" and isinstance(value, dict):
        return set(value) == {"display"}
    return False


def map_patient(entry: Entry, ctx: ReverseContext) -> Built:
    built = Built("patient")
    el = ctx.elements(entry, built)
    idents = el.take("identifier") or []
    chart = ctx.chart_number(entry)
    if chart is None:
        built.problems.append(Problem("id", "no_chart_number",
                                      "the Patient has no chart number: no {system_base}/patient identifier "
                                      "and no identifier of type MR"))
        chart_pos = -1
    else:
        chart_pos, built.system_base, built.data["id"] = chart
        if built.system_base is None:
            el.note(f"identifier[{chart_pos}]", "assumed",
                    f"no {{system_base}}/patient identifier: the chart number is the MR identifier "
                    f"{idents[chart_pos].get('system')}|{idents[chart_pos]['value']}")
        else:
            for key in idents[chart_pos]:
                if key not in ("system", "value", "type", "use"):
                    el.note(f"identifier[{chart_pos}].{key}", "not_mapped",
                            f"the {key} of an identifier has no ims-record/1 field")
    others = []
    for pos, ident in enumerate(idents):
        if pos == chart_pos and built.system_base is not None:
            continue
        # a foreign chart number (type MR) stays among the identifiers too: its system says whose it is
        other = _other_identifier(el, pos, ident, chart=pos == chart_pos)
        if other is not None:
            others.append(other)
    if others:
        built.data["identifiers"] = others
    _name(el, built)
    telecom = {}
    for i, point in enumerate(el.take("telecom") or ()):
        system = point.get("system") if isinstance(point, dict) else None
        if system in ("phone", "email") and system not in telecom and isinstance(point.get("value"), str):
            telecom[system] = point["value"]
            for key in point:
                if key not in ("system", "value"):
                    el.note(f"telecom[{i}].{key}", "not_mapped", f"the {key} of a contact point has no ims-record/1 field")
        else:
            el.note(f"telecom[{i}]", "not_mapped", "ims-record/1 keeps one phone and one email")
    gender = el.take("gender")
    if gender is not None:
        sex = ctx.codes.gender.get(gender)
        if sex is None:
            el.note("gender", "unknown_code", f"gender {gender!r} has no ims-record/1 sex")
        else:
            built.data["sex"] = sex
    birth = ctx.full_date(el, el.take("birthDate"), "birthDate")
    if birth is not None:
        built.data["birth_date"] = birth
    if "phone" in telecom:
        built.data["phone"] = telecom["phone"]
    if "email" in telecom:
        built.data["email"] = telecom["email"]
    ctx.context_ref(el, "managingOrganization", built)
    el.finish()
    return built


def map_practitioner(entry: Entry, ctx: ReverseContext) -> Built:
    built = Built("practitioner")
    el = ctx.elements(entry, built)
    idents = el.take("identifier") or []
    found = ctx.practitioner_number(entry)
    used = {found[0]} if found else set()
    if found is None:
        built.problems.append(Problem("id", "required", "the Practitioner has no identifier to take its id from"))
    else:
        pos, built.system_base, built.data["id"] = found
        if built.system_base is None:
            el.note(f"identifier[{pos}]", "assumed", f"no {{system_base}}/practitioner identifier: the id is this "
                    f"identifier's value {idents[pos]['value']!r}")
        else:
            # ours first, then the registration (mapping/people.py writes them in this order)
            for other_pos, ident in enumerate(idents):
                if other_pos not in used:
                    reg = _other_identifier(el, other_pos, ident)
                    used.add(other_pos)
                    if reg is not None:
                        built.data["registration"] = reg
                        break
    for pos in range(len(idents)):
        if pos not in used:
            el.note(f"identifier[{pos}]", "not_mapped", "ims-record/1 keeps one registration per practitioner")
    _name(el, built)
    exts = el.extensions({ctx.codes.extension["ims-certified"]: "ims-certified"})
    certified = exts.get("ims-certified", {}).get("valueBoolean")
    qualified = False
    for i, qual in enumerate(el.take("qualification") or ()):
        if isinstance(qual, dict) and ctx.codes.concept(qual.get("code")) == "ims-certification":
            qualified = True
            for key in qual:
                if key != "code":
                    el.note(f"qualification[{i}].{key}", "not_mapped", f"the {key} of the IMS certification has no field")
        else:
            el.note(f"qualification[{i}]", "not_mapped", "only the Gunn IMS certification has an ims-record/1 field")
    if isinstance(certified, bool):
        built.data["ims_certified"] = certified
        if certified != qualified:
            el.note("qualification", "not_mapped",
                    "the ims-certified extension and the qualifications disagree; the extension is kept")
    elif qualified:
        built.data["ims_certified"] = True
    el.finish()
    return built


def organization_source(entry: Entry, ctx: ReverseContext) -> dict[str, str] | None:
    """The source a clinic's Organization stands for (``clinic_id``, ``clinic_name``, ``system_base``)."""
    ours = ctx.our_identifier(entry.resource.get("identifier"), "organization")
    if ours is None:
        return None
    _, base, clinic_id = ours
    source = {"clinic_id": clinic_id}
    name = entry.resource.get("name")
    # mapping/people.py writes the clinic id as the name when the clinic has none
    if isinstance(name, str) and name.strip() and name != clinic_id:
        source["clinic_name"] = name
    source["system_base"] = base
    # mapping/people.py: address.country = source.country, address.state = source.jurisdiction (ISO 3166-2)
    for address in (entry.resource.get("address") or [])[:1]:
        if isinstance(address, dict):
            for key, field in (("country", "country"), ("state", "jurisdiction")):
                if isinstance(address.get(key), str):
                    source[field] = address[key]
    return source
