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

from html import escape
from typing import Any

from .context import Resource

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
    if isinstance(value, list):
        return "; ".join(filter(None, (_value(key, v) for v in value)))
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, str)):
        return str(value)
    if not isinstance(value, dict):
        return ""
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


def _observed(res: dict[str, Any]) -> str:
    for key, value in res.items():
        if key.startswith("value") and key[5:6].isupper():
            return _value("value", value)
    return ""


def narrative(resource: Resource, title: str) -> dict[str, str]:
    rows = []
    for key, label in _ROWS:
        text = _observed(resource) if key == "value" else _value(key, resource.get(key)) if key in resource else ""
        if text:
            rows.append(f"<tr><th>{escape(label)}</th><td>{escape(text)}</td></tr>")
    body = f"<p><b>{escape(title)}</b></p>"
    if rows:
        body += "<table>" + "".join(rows) + "</table>"
    return {"status": "generated", "div": f'<div xmlns="{XHTML_NS}">{body}</div>'}


def finish(resource: Resource, profile: str, title: str) -> Resource:
    """The resource with ``meta.profile`` and a generated narrative, in FHIR's usual element order."""
    out: Resource = {"resourceType": resource["resourceType"], "id": resource["id"],
                     "meta": {"profile": [profile]}, "text": narrative(resource, title)}
    for key, value in resource.items():
        if key not in out:
            out[key] = value
    return out
