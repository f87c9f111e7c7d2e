"""Provenance of what the adapter writes: one ``Provenance`` per activity in each transaction.

Terms:

- *written entry*: an entry of a transaction Bundle that creates or updates a resource of the
  clinic: everything but the clinic's Organization (an agent, not a target), the adapter's
  Device and Provenance entries themselves. Its *activity* follows from its request:
  ``PUT Type/id`` (a resource whose server id the adapter knows) is an ``update``; a
  conditional create (``POST`` with ``ifNoneExist``) or a conditional update on a business
  identifier that the adapter has not written before is a ``create``.
- *software Device*: the adapter itself as a FHIR ``Device`` (name ``ims-fhir``, its version),
  one per version, sent as a conditional create on its identifier so that every transaction
  can name it.
- *versioned target*: ``Provenance.target`` should name the version written (``Type/id/_history/n``).
  Inside one transaction the versions are not known yet: the targets name the entries'
  ``urn:uuid`` full URLs, and the Provenance carries HAPI FHIR's
  ``auto-version-references-at-path`` meta extension for ``target``, so a HAPI server stores
  each target with the version the same transaction wrote. A server without that feature
  stores unversioned targets; the local audit trail keeps the versions in every case.

Pure mapping code: the send time (``recorded``) is passed in, ids are derived from the content.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from ..identifiers import identifiers_of
from ..terminology import Terminology

Resource = dict[str, Any]

#: HAPI FHIR's meta extension asking the server to version the references at a path when it stores the resource
AUTO_VERSION_EXTENSION = "http://hapifhir.io/fhir/StructureDefinition/auto-version-references-at-path"

ACTIVITIES = ("create", "update")
_NOT_TARGETS = ("Organization", "Device", "Provenance")
_NAMESPACE = uuid.UUID("5b0f5a2e-6a43-4d2c-9a43-6e2d1f3f9b51")  # the adapter's namespace for derived ids


def entry_activity(entry: dict[str, Any]) -> str | None:
    """``create`` or ``update`` for a written entry (see the terms), None for any other entry."""
    resource = entry.get("resource") or {}
    request = entry.get("request") or {}
    if resource.get("resourceType") in _NOT_TARGETS:
        return None
    method, url = request.get("method"), str(request.get("url", ""))
    if method == "POST":
        return "create"
    if method == "PUT":
        return "create" if "?" in url else "update"
    return None


def software_device(term: Terminology, version: str) -> Resource:
    """The adapter as a Device (see the terms); its id is derived from its version."""
    software = term.fhir["software"]
    value = f"{software['name']}/{version}"
    return {
        "resourceType": "Device",
        "id": str(uuid.uuid5(_NAMESPACE, f"device|{value}")),
        "identifier": [{"system": f"{term.base}/{software['identifier_system']}", "value": value}],
        "deviceName": [{"name": software["name"], "type": "user-friendly-name"}],
        "version": [{"value": version}],
    }


def _concept(term: Terminology, table: str, key: str) -> dict[str, Any]:
    row = term.fhir[table][key]
    return {"coding": [{"system": term.systems[row["system"]], "code": row["code"], "display": row["display"]}]}


def _instant(recorded: datetime) -> str:
    if recorded.tzinfo is None or recorded.utcoffset() is None:
        raise ValueError("Provenance.recorded needs a time zone")
    return recorded.isoformat(timespec="milliseconds")


def provenance(targets: list[str], *, activity: str, recorded: datetime, organization: str, device: str,
               term: Terminology) -> Resource:
    """One Provenance: ``targets`` (references), the clinic ``organization`` as author and the
    adapter's ``device`` as assembler on its behalf, ``recorded`` (time-zoned), ``activity``."""
    if activity not in ACTIVITIES:
        raise ValueError(f"activity must be one of {ACTIVITIES}, not {activity!r}")
    if not targets:
        raise ValueError("a Provenance needs at least one target")
    stamp = _instant(recorded)
    key = "|".join([activity, stamp, *sorted(targets)])
    what = _concept(term, "provenance_activity", activity)["coding"][0]["display"]
    told = (f"{term.profiles['provenance']['title']}: {what} of {len(targets)} "
            f"resource{'s' if len(targets) != 1 else ''} at {stamp}, authored by the clinic, assembled and sent by "
            f"{term.fhir['software']['name']} on its behalf")
    return {
        "resourceType": "Provenance",
        "id": str(uuid.uuid5(_NAMESPACE, f"provenance|{key}")),
        "meta": {"extension": [{"url": AUTO_VERSION_EXTENSION, "valueString": "target"}],
                 "profile": [term.profile_url("provenance")]},
        "text": {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{escape(told)}</p></div>'},
        "target": [{"reference": t} for t in targets],
        "recorded": stamp,
        "activity": _concept(term, "provenance_activity", activity),
        "agent": [
            {"type": _concept(term, "provenance_agent", "author"), "who": {"reference": organization}},
            {"type": _concept(term, "provenance_agent", "assembler"), "who": {"reference": device},
             "onBehalfOf": {"reference": organization}},
        ],
    }


def _identifier_query(resource: Resource) -> str:
    ident = (identifiers_of(resource) or [{}])[0]
    return f"identifier={quote(ident.get('system', ''), safe='')}|{quote(ident.get('value', ''), safe='')}"


def with_provenance(bundle: Resource, *, recorded: datetime, term: Terminology, version: str) -> Resource:
    """The transaction ``bundle`` with the software Device (conditional create) and one Provenance
    per activity present (``create``, ``update``) appended; unchanged when nothing is written.

    The clinic's Organization must be an entry of the Bundle (the packer puts it first).
    """
    entries = list(bundle.get("entry") or [])
    org_url = next((e.get("fullUrl") for e in entries
                    if (e.get("resource") or {}).get("resourceType") == "Organization"), None)
    if org_url is None:
        raise ValueError("a transaction with Provenance needs the clinic's Organization entry")
    by_activity: dict[str, list[str]] = {}
    for entry in entries:
        activity = entry_activity(entry)
        if activity is not None and entry.get("fullUrl"):
            by_activity.setdefault(activity, []).append(entry["fullUrl"])
    if not by_activity:
        return bundle
    device = software_device(term, version)
    device_url = f"urn:uuid:{device['id']}"
    added: list[dict[str, Any]] = [{
        "fullUrl": device_url,
        "resource": {k: v for k, v in device.items() if k != "id"},
        "request": {"method": "POST", "url": "Device", "ifNoneExist": _identifier_query(device)},
    }]
    for activity in ACTIVITIES:
        targets = by_activity.get(activity)
        if not targets:
            continue
        prov = provenance(targets, activity=activity, recorded=recorded, organization=org_url, device=device_url,
                          term=term)
        # PUT with the id derived from the content: a transaction sent again after a timeout
        # leaves one Provenance, not two
        added.append({"fullUrl": f"urn:uuid:{prov['id']}", "resource": prov,
                      "request": {"method": "PUT", "url": f"Provenance/{prov['id']}"}})
    return {**bundle, "entry": entries + added}


def provenance_ids(bundle: Resource) -> list[str]:
    """The ids of the Provenance entries of a Bundle built by :func:`with_provenance`."""
    return [e["resource"]["id"] for e in bundle.get("entry") or []
            if (e.get("resource") or {}).get("resourceType") == "Provenance" and "id" in e["resource"]]


__all__ = ["ACTIVITIES", "AUTO_VERSION_EXTENSION", "entry_activity", "provenance", "provenance_ids",
           "software_device", "with_provenance"]
