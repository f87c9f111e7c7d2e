"""What every reverse mapper needs: element bookkeeping, identities, references.

Terms:

- *elements*: the top-level elements of one resource. A mapper *takes* the ones it maps
  and *skips* the ones the forward mapping derives (an Observation's ``category``, a
  member's ``encounter``); whatever is left when it is done is reported ``not_mapped``,
  so an element nobody expected (``Procedure.usedCode``, ``Observation.interpretation``)
  is named, never dropped in silence. ``id``, ``meta``, ``text`` (the narrative, a
  rendering of the data), ``language`` and ``contained`` (reached through ``#`` references)
  are bookkeeping and are not reported.
- *system base*: ``{system_base}/{kind}`` (:mod:`ims_fhir.identifiers`) is the system of
  our business identifiers; a base is *known* when an Organization (``/organization``), a
  Patient chart number (type MR, ``/patient``) or the caller names it. Our identifier of a
  resource is the one under a known base, else the first spelled ``{some base}/{kind}``
  (:func:`~ims_fhir.identifiers.split_system`: the import discovers the bases of data
  written elsewhere).
- *foreign* resource: one without our business identifier. Its record id is its first
  identifier's value, else its resource id (reported as ``assumed``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from ...errors import Problem
from ...identifiers import split_system
from .codes import UNIT_FACTORS, Codes, describe
from .outcomes import Built, ReportItem
from .resources import Entry, ResourceLookup, reference_keys, reference_type

#: elements that are bookkeeping, not data: never reported
#: the R4 core extension from a body site (CodeableConcept) to its BodyStructure
BODY_SITE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/bodySite"

IGNORED = frozenset({"resourceType", "id", "meta", "text", "language", "contained"})
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class Elements:
    """One resource's elements as a mapper goes through them."""

    __slots__ = ("entry", "res", "built", "used", "rtype")

    def __init__(self, entry: Entry, built: Built) -> None:
        self.entry = entry
        self.res = entry.resource
        self.rtype = entry.resource_type
        self.built = built
        self.used: set[str] = set(IGNORED)

    def take(self, name: str) -> Any:
        self.used.add(name)
        return self.res.get(name)

    def skip(self, *names: str) -> None:
        """Elements the forward mapping derives from others: consumed without a field of their own."""
        self.used.update(names)

    def note(self, path: str, rule: str, message: str) -> None:
        where = path if path.startswith(self.rtype) else f"{self.rtype}.{path}"
        self.built.report.append(ReportItem(self.entry.label, self.entry.origin, where, rule, message))

    def value(self) -> tuple[str | None, Any]:
        """The ``value[x]`` of an Observation: (type suffix, value), taken."""
        for key in self.res:
            if key.startswith("value") and key[5:6].isupper():
                self.used.add(key)
                return key[5:], self.res[key]
        return None, None

    def value_of(self, *accepted: str) -> tuple[str | None, Any]:
        kind, value = self.value()
        if kind is not None and kind not in accepted:
            self.note(f"value{kind}", "not_mapped",
                      f"a value{kind} cannot hold this finding (expected value{' or value'.join(accepted)})")
            return None, None
        return kind, value

    def extensions(self, known: dict[str, str]) -> dict[str, Any]:
        """Known extension url -> key; returns key -> extension; reports the unknown ones."""
        out: dict[str, Any] = {}
        for i, ext in enumerate(self.take("extension") or ()):
            url = ext.get("url") if isinstance(ext, dict) else None
            key = known.get(url or "")
            if key is None:
                self.note(f"extension[{i}]", "not_mapped", f"extension {url!r} has no ims-record/1 field")
            elif key in out:
                self.note(f"extension[{i}]", "not_mapped", f"extension {url!r} given more than once; the first is kept")
            else:
                out[key] = ext
        return out

    def finish(self) -> None:
        for key in self.res:
            if key not in self.used:
                self.note(key, "not_mapped", f"{self.rtype}.{key} has no ims-record/1 field")


def notes_text(el: Elements, notes: Any, path: str = "note") -> str | None:
    """Annotations -> one text (several are joined by a blank line); authors and times are reported."""
    texts = []
    for i, note in enumerate(notes or ()):
        if not isinstance(note, dict):
            continue
        for key in note:
            if key != "text":
                el.note(f"{path}[{i}].{key}", "not_mapped", f"the {key} of an annotation has no ims-record/1 field")
        if isinstance(note.get("text"), str) and note["text"].strip():
            texts.append(note["text"])
    return "\n\n".join(texts) if texts else None


class ReverseContext:
    """Per-run state shared by the reverse mappers."""

    def __init__(self, codes: Codes, index: ResourceLookup, bases: set[str]) -> None:
        self.codes = codes
        self.index = index
        self.bases = bases

    # -- records being built ---------------------------------------------------------------
    def elements(self, entry: Entry, built: Built) -> Elements:
        self.use(entry, built)
        return Elements(entry, built)

    @staticmethod
    def use(entry: Entry, built: Built) -> None:
        if all(seq != entry.seq for seq, _, _ in built.sources):
            built.sources.append((entry.seq, entry.label, entry.origin))

    # -- body sites ------------------------------------------------------------------------
    def site_side(self, el: Elements, cc: Any, path: str = "bodySite") -> str | None:
        """The side of a body site: its BodyStructure's ``locationQualifier`` (core ``bodySite``
        extension, the IG's representation) or a laterality extension valued with a side (older
        exports, other IGs). Other extensions are reported."""
        side = None
        for i, ext in enumerate(cc.get("extension") or () if isinstance(cc, dict) else ()):
            found = None
            if isinstance(ext, dict) and ext.get("url") == BODY_SITE_EXTENSION:
                target = self.resolve(ext.get("valueReference"), el.entry)
                if target is not None and target.resource_type == "BodyStructure":
                    self.use(target, el.built)
                    for qualifier in target.resource.get("locationQualifier") or ():
                        found = found or self.codes.slug(qualifier, "side")
                    if found is None:
                        el.note(f"{path}.extension[{i}]", "not_mapped", f"{target.label} names no side")
                        continue
                else:
                    el.note(f"{path}.extension[{i}]", "unresolved_reference",
                            "the body structure this site names is not in the input; its side is unknown")
                    continue
            elif self.codes.is_laterality_extension(ext):
                found = self.codes.slug(ext.get("valueCodeableConcept"), "side")
            else:
                url = ext.get("url") if isinstance(ext, dict) else None
                el.note(f"{path}.extension[{i}]", "not_mapped", f"extension {url!r} of a body site has no field")
                continue
            side = side or found
        return side

    # -- identities ------------------------------------------------------------------------
    def our_identifier(self, identifiers: Any, kind: str) -> tuple[int, str, str] | None:
        """(position, system base, value) of our business identifier of ``kind``, if any."""
        candidates = []
        for pos, ident in enumerate(identifiers if isinstance(identifiers, list) else ()):
            if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
                continue
            found = split_system(ident.get("system"))
            if found is not None and found[1] == kind:
                base = found[0]
                typed = kind != "patient" or self.codes.is_chart_type(ident.get("type"))
                if not typed and base not in self.bases:
                    continue  # a /patient system of someone else, not a chart number
                # a known base first, then (for a patient) the chart number's type MR, then position
                candidates.append((base not in self.bases, not typed, pos, base, ident["value"]))
        if not candidates:
            return None
        *_, pos, base, value = min(candidates)
        return pos, base, value

    def chart_number(self, entry: Entry) -> tuple[int, str | None, str] | None:
        """The Patient's chart number: ours, else a foreign identifier of type MR."""
        idents = entry.resource.get("identifier") or ()
        ours = self.our_identifier(idents, "patient")
        if ours is not None:
            return ours
        for pos, ident in enumerate(idents):
            if isinstance(ident, dict) and isinstance(ident.get("value"), str) and self.codes.is_chart_type(ident.get("type")):
                return pos, None, ident["value"]
        return None

    def practitioner_number(self, entry: Entry) -> tuple[int, str | None, str] | None:
        idents = entry.resource.get("identifier") or ()
        ours = self.our_identifier(idents, "practitioner")
        if ours is not None:
            return ours
        for pos, ident in enumerate(idents):
            if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                return pos, None, ident["value"]
        return None

    def business_id(self, el: Elements, kind: str, built: Built) -> None:
        """Set the record's id (and system base) from the resource's identifiers."""
        idents = el.take("identifier") or []
        ours = self.our_identifier(idents, kind)
        used = None
        if ours is not None:
            used, built.system_base, built.data["id"] = ours
        else:
            for pos, ident in enumerate(idents):
                if isinstance(ident, dict) and isinstance(ident.get("value"), str) and ident["value"].strip():
                    used, built.data["id"] = pos, ident["value"]
                    el.note(f"identifier[{pos}]", "assumed", f"no {{system_base}}/{kind} identifier: the record id is "
                            f"this identifier's value {ident['value']!r} (system {ident.get('system')!r})")
                    break
            else:
                rid = el.res.get("id") or (el.entry.full_url or "").rpartition(":")[2] or None
                if rid:
                    built.data["id"] = rid
                    el.note("id", "assumed", f"no identifier: the record id is the resource id {rid!r}")
                else:
                    built.problems.append(Problem("id", "required", "the resource has no identifier and no id"))
        for pos, ident in enumerate(idents):
            if pos != used:
                el.note(f"identifier[{pos}]", "not_mapped", f"identifier {_ident(ident)} has no ims-record/1 field")

    # -- references ------------------------------------------------------------------------
    def resolve(self, ref: Any, referrer: Entry) -> Entry | None:
        """The resource a Reference points at, if it is in the set (or contained in the referrer)."""
        if not isinstance(ref, dict):
            return None
        text = ref.get("reference")
        if isinstance(text, str) and text:
            if text.startswith("#"):
                for res in referrer.resource.get("contained") or ():
                    if isinstance(res, dict) and res.get("id") == text[1:] and isinstance(res.get("resourceType"), str):
                        return Entry(-1, res["resourceType"], res, referrer.origin, None, "contained")
                return None
            found = self.index.lookup(reference_keys(text, referrer.full_url))
            if found is not None:
                return found
        ident = ref.get("identifier")
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            rtype = ref.get("type") or (reference_type(text) if isinstance(text, str) else None)
            if rtype:
                return self.index.lookup([f"I|{rtype}|{ident.get('system') or ''}|{ident['value']}"])
        return None

    def person_id(self, el: Elements, ref: Any, rtype: str, field: str, built: Built, *, path: str) -> str | None:
        """The business identifier value of the Patient / Practitioner a reference names."""
        if not isinstance(ref, dict):
            return None
        target = self.resolve(ref, el.entry)
        if target is not None and target.resource_type == "PractitionerRole" and rtype == "Practitioner":
            self.use(target, built)
            role = Elements(target, built)
            role.skip("identifier", "active", "period", "organization")
            practitioner = role.take("practitioner")
            role.finish()
            return self.person_id(role, practitioner, rtype, field, built, path="practitioner")
        where = f"reference {ref.get('reference') or _ident(ref.get('identifier'))!r}"
        if target is not None:
            if target.resource_type != rtype:
                built.problems.append(Problem(field, "unresolved_reference",
                                              f"{where} is a {target.resource_type}, not a {rtype}"))
                return None
            found = self.chart_number(target) if rtype == "Patient" else self.practitioner_number(target)
            if found is not None:
                return found[2]
            built.problems.append(Problem(field, "unresolved_reference",
                                          f"the {rtype} {target.label} has no identifier usable as {field}"))
            return None
        # not in the set: the reference's own identifier (conditional or logical), by the same
        # rules as chart_number / practitioner_number
        kind = "patient" if rtype == "Patient" else "practitioner"
        for system, value in _reference_identifiers(ref):
            split = split_system(system)
            if split is not None and split[1] == kind:
                return value
        ident = ref.get("identifier")
        if isinstance(ident, dict) and isinstance(ident.get("value"), str) and (
                rtype == "Practitioner" or self.codes.is_chart_type(ident.get("type"))):
            el.note(path, "assumed", f"{rtype} not in the input: {field} taken from the reference's "
                    f"identifier {_ident(ident)}")
            return str(ident["value"])
        message = (f"{where} names no {rtype} in the input and carries no identifier ({{system_base}}/{kind}) "
                   f"to take {field} from")
        el.note(path, "unresolved_reference", message)
        built.problems.append(Problem(field, "unresolved_reference", message))
        return None

    def context_ref(self, el: Elements, name: str, built: Built) -> Entry | None:
        """A reference to a context resource (encounter, organization): used, not mapped to a field."""
        ref = el.take(name)
        target = self.resolve(ref, el.entry)
        if target is not None and target.role in ("encounter", "organization"):
            self.use(target, built)
        return target

    @staticmethod
    def require(built: Built, field: str, message: str) -> None:
        """A required record field the resources do not give: say why (once per field)."""
        if field not in built.data and all(p.path != field for p in built.problems):
            built.problems.append(Problem(field, "required", message))

    # -- values ----------------------------------------------------------------------------
    def quantity(self, el: Elements, q: Any, unit: str, path: str) -> float | int | None:
        """A Quantity in ``unit`` (UCUM), converting the units a foreign system may use."""
        if not isinstance(q, dict) or q.get("value") is None:
            el.note(path, "not_mapped", "a quantity without a value")
            return None
        if q.get("comparator"):
            el.note(f"{path}.comparator", "not_mapped", f"a value {q['comparator']}{q['value']} is not an exact value")
            return None
        value = q["value"]
        code = q.get("code")
        if code is None:
            if q.get("unit") not in (None, unit):
                el.note(path, "not_mapped", f"unit {q.get('unit')!r} without a UCUM code; expected {unit!r}")
                return None
            return value  # type: ignore[no-any-return]
        if q.get("system") not in (None, self.codes.ucum):
            el.note(path, "not_mapped", f"unit {code!r} is not a UCUM unit")
            return None
        factor = UNIT_FACTORS.get(unit, {unit: 1}).get(code)
        if factor is None:
            el.note(path, "not_mapped", f"unit {code!r} cannot be converted to {unit!r}")
            return None
        if factor == 1:
            return value  # type: ignore[no-any-return]
        el.note(path, "assumed", f"converted {value} {code} to {unit}")
        return round(value * factor, 6)  # type: ignore[no-any-return]

    def full_date(self, el: Elements, value: Any, path: str) -> str | None:
        if isinstance(value, str) and _DATE.match(value):
            return value
        if value is not None:
            el.note(path, "not_mapped", f"{value!r} is not a full date (YYYY-MM-DD), which ims-record/1 needs")
        return None

    def coded(self, el: Elements, cc: Any, vocabulary: str, path: str) -> str | None:
        slug = self.codes.slug(cc, vocabulary)
        if slug is None and cc is not None:
            el.note(path, "unknown_code", f"{describe(cc)} is not a {vocabulary} of the IMS code tables")
        return slug


def _ident(ident: Any) -> str:
    if not isinstance(ident, dict):
        return "(none)"
    return f"{ident.get('system', '')}|{ident.get('value', '')}"


def _reference_identifiers(ref: dict[str, Any]) -> Iterable[tuple[str, str]]:
    text = ref.get("reference")
    if isinstance(text, str) and "?" in text:
        from .resources import identifier_tokens

        yield from identifier_tokens(text.partition("?")[2])
    ident = ref.get("identifier")
    if isinstance(ident, dict) and isinstance(ident.get("value"), str):
        yield str(ident.get("system") or ""), ident["value"]


def with_record(item: ReportItem, record_type: str, record_id: str | None) -> ReportItem:
    return replace(item, record_type=record_type, record_id=record_id)


def _ref_key(value: Any) -> Any:
    """A Reference (or list of them) reduced to what it points at: the literal reference when
    there is one, so ``{reference, identifier}`` equals the bare ``{reference}``."""
    if isinstance(value, list):
        return [_ref_key(v) for v in value]
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        return value["reference"]
    if isinstance(value, dict) and "actor" in value:
        return {"actor": _ref_key(value["actor"])}
    return value


def same_reference(a: Any, b: Any) -> bool:
    return bool(_ref_key(a) == _ref_key(b))
