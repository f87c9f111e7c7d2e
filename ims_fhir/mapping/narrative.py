"""Generated narrative (``text.status = generated``) and profile stamping for emitted resources.

Terms:

- *narrative*: the XHTML ``text.div`` a clinician reads when a system cannot render the
  coded content (FHIR R4 dom-6 asks for one). It is generated from the resource itself,
  after the mapping, so it never says something the coded data does not.
- *finish*: put ``meta.profile`` and the narrative in front of a resource's elements, in
  the order FHIR JSON usually shows them (resourceType, id, meta, text, ...).

Every text is escaped (``html.escape``): record text such as ``<b>`` or ``&`` stays text.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

Resource = dict[str, Any]

XHTML_NS = "http://www.w3.org/1999/xhtml"

#: element -> row label, in the order rows are shown
_ROWS: tuple[tuple[str, str], ...] = (
    ("name", "Name"),
    ("identifier", "Identifier"),
    ("type", "Type"),
    ("gender", "Gender"),
    ("birthDate", "Birth date"),
    ("telecom", "Contact"),
    ("qualification", "Qualification"),
    ("status", "Status"),
    ("statusReason", "Status reason"),
    ("class", "Class"),
    ("serviceType", "Service"),
    ("category", "Category"),
    ("scope", "Scope"),
    ("code", "What"),
    ("event", "What"),
    ("severity", "Severity"),
    ("intent", "Intent"),
    ("verificationStatus", "Verification"),
    ("location", "Location"),
    ("locationQualifier", "Side"),
    ("description", "Description"),
    ("period", "When"),
    ("effectiveDateTime", "When"),
    ("performedDateTime", "When"),
    ("performedPeriod", "When"),
    ("dateTime", "When"),
    ("date", "When"),
    ("value", "Value"),
    ("bodySite", "Body site"),
    ("component", "Details"),
    ("complication", "Complications"),
    ("provision", "Decision"),
    ("note", "Note"),
)


#: element -> (position, label, the row's opening markup) of the rows shown from the element itself
_RANK: dict[str, tuple[int, str]] = {key: (i, f"<tr><th>{escape(label)}</th><td>")
                                     for i, (key, label) in enumerate(_ROWS) if key != "value"}
#: the row of the resource's value[x] (the first element named value + a type)
_VALUE_ROW = (next(i for i, (key, _) in enumerate(_ROWS) if key == "value"), "<tr><th>Value</th><td>")
_SPECIAL = re.compile("[&<>\"']")
_TITLES: dict[str, str] = {}


def _concept(cc: Any) -> str:
    if not isinstance(cc, dict):
        return str(cc)
    if cc.get("text"):
        return str(cc["text"])
    codings = cc.get("coding") or []
    if codings:
        c = codings[0]
        return str(c.get("display") or c.get("code"))
    if "code" in cc:  # a bare Coding (Encounter.class)
        return str(cc.get("display") or cc["code"])
    return ""


def _value(key: str, value: Any) -> str:
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is list:
        return "; ".join([text for v in value if (text := _value(key, v))])
    if kind is dict:
        return _dict_value(key, value)
    if isinstance(value, list):
        return "; ".join([text for v in value if (text := _value(key, v))])
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, str)):
        return str(value)
    if not isinstance(value, dict):
        return ""
    return _dict_value(key, value)


def _dict_value(key: str, value: dict[str, Any]) -> str:
    if key == "name":
        return " ".join([*value.get("given", []), value.get("family", "")]).strip()
    if key == "identifier":
        return str(value.get("value", ""))
    if key == "telecom":
        return f"{value.get('system')}: {value.get('value')}"
    if key == "note":
        return str(value.get("text", ""))
    if key == "qualification":
        return _concept(value.get("code"))
    if key in ("period", "performedPeriod"):
        start, end = value.get("start", ""), value.get("end")
        return f"{start} to {end}" if end else str(start)
    if key == "provision":
        return str(value.get("type", ""))
    if key == "component":
        return f"{_concept(value.get('code'))}: {_observed(value)}"
    if "value" in value and ("unit" in value or "code" in value and "system" in value):
        return f"{value['value']} {value.get('unit', value.get('code', ''))}".strip()
    return _concept(value)


def _is_value_x(key: str) -> bool:
    return key.startswith("value") and key[5:6].isupper()


def _observed(res: dict[str, Any]) -> str:
    for key, value in res.items():
        if _is_value_x(key):
            return _value("value", value)
    return ""


def narrative(resource: Resource, title: str) -> dict[str, str]:
    # one pass over the resource's elements (not over every row label), rows put in their order after;
    # escaping only when some text has a character to escape (record text rarely has)
    rows: list[tuple[int, str, str]] = []
    observed = False
    rank = _RANK
    for key, value in resource.items():
        row = rank.get(key)
        if row is None:
            if not observed and key[:5] == "value" and key[5:6].isupper():
                observed = True
                text = _value("value", value)
                if text:
                    rows.append((_VALUE_ROW[0], _VALUE_ROW[1], text))
            continue
        text = _value(key, value)
        if text:
            rows.append((row[0], row[1], text))
    head = _TITLES.get(title)
    if head is None:
        head = _TITLES[title] = f'<div xmlns="{XHTML_NS}"><p><b>{escape(title)}</b></p>'
    if not rows:
        return {"status": "generated", "div": head + "</div>"}
    rows.sort()
    if _SPECIAL.search("".join([text for _, _, text in rows])) is None:
        cells = "".join([f"{opening}{text}</td></tr>" for _, opening, text in rows])
    else:
        cells = "".join([f"{opening}{escape(text)}</td></tr>" for _, opening, text in rows])
    return {"status": "generated", "div": f"{head}<table>{cells}</table></div>"}


def finish(resource: Resource, profile: str, title: str) -> Resource:
    """The resource with ``meta.profile`` and a generated narrative, in FHIR's usual element order."""
    out: Resource = {"resourceType": resource["resourceType"], "id": resource["id"],
                     "meta": {"profile": [profile]}, "text": narrative(resource, title)}
    if "meta" in resource or "text" in resource:  # what the mapping gave is kept, in its place after these
        for key, value in resource.items():
            if key not in out:
                out[key] = value
        return out
    out.update(resource)  # resourceType and id stay first (same values), the rest in the resource's order
    return out
