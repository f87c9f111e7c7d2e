"""What a FHIR interaction answered: status, resource, and the version headers.

Terms
-----
ETag
    ``ETag: W/"3"``: the version id of the resource the server returned or stored
    (FHIR http spec 3.1.0.2.1); :func:`version_from_etag` reads ``3``.
Location
    ``Location: [base]/Patient/123/_history/3``, sent after create/update, giving the
    logical id and version (:func:`parse_location`).
Last-Modified
    An HTTP-date header after read/create/update; when missing, ``meta.lastUpdated``
    of the returned resource is used.
entry response
    In a transaction or batch response Bundle, ``entry[i].response`` holds the same
    facts for entry *i* (``status`` as text such as ``"201 Created"``, ``location``,
    ``etag``, ``lastModified``, and an optional ``outcome``): :class:`EntryResponse`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from ims_fhir.errors import OutcomeIssue, issues_from_outcome

Resource = dict[str, Any]

_ETAG = re.compile(r'^\s*(?:W/)?"?([^"]*)"?\s*$')
_LOCATION = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/(?P<vid>[A-Za-z0-9\-.]{1,64}))?/?$"
)


def version_from_etag(etag: str | None) -> str | None:
    """``W/"3"`` -> ``"3"``; None or an empty tag -> None."""
    if not etag:
        return None
    match = _ETAG.match(etag)
    return (match.group(1) or None) if match else None


def parse_location(location: str | None) -> tuple[str, str, str | None] | None:
    """(resource type, id, version id or None) of a Location URL, or None if it is not one."""
    if not location:
        return None
    path = location.split("?", 1)[0].split("#", 1)[0]
    match = _LOCATION.search(path)
    if match is None:
        return None
    return match["type"], match["id"], match["vid"]


def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP-date header as an aware datetime, or None."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else None


def parse_instant(value: Any) -> datetime | None:
    """A FHIR ``instant`` (``2024-05-01T10:00:00.123Z``) as an aware datetime, or None."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _meta(resource: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = resource.get("meta") if isinstance(resource, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


@dataclass(frozen=True, slots=True)
class EntryResponse:
    """One ``entry.response`` of a transaction/batch response Bundle."""

    status: int
    location: str | None = None
    etag: str | None = None
    version_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    last_modified: datetime | None = None
    resource: Resource | None = field(default=None, repr=False)
    issues: tuple[OutcomeIssue, ...] = ()

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 299

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> EntryResponse:
        raw_response = entry.get("response")
        response: Mapping[str, Any] = raw_response if isinstance(raw_response, Mapping) else {}
        match = re.match(r"\s*(\d{3})", str(response.get("status", "")))
        resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else None
        location = response.get("location") if isinstance(response.get("location"), str) else None
        etag = response.get("etag") if isinstance(response.get("etag"), str) else None
        where = parse_location(location)
        return cls(
            status=int(match.group(1)) if match else 0,
            location=location,
            etag=etag,
            version_id=version_from_etag(etag) or (where[2] if where else None) or _meta(resource).get("versionId"),
            resource_type=(where[0] if where else None) or (resource or {}).get("resourceType"),
            resource_id=(where[1] if where else None) or (resource or {}).get("id"),
            last_modified=parse_instant(response.get("lastModified"))
            or parse_instant(_meta(resource).get("lastUpdated")),
            resource=resource,
            issues=tuple(issues_from_outcome(response.get("outcome"))),
        )


@dataclass(frozen=True, slots=True)
class FhirResponse:
    """The answer to one FHIR interaction (after retries), with its status and version facts.

    ``resource`` is the parsed body (a resource, a Bundle, an OperationOutcome) or None
    when the server sent no body. ``version_id`` comes from the ETag, else the Location,
    else ``meta.versionId``; ``resource_id`` from the Location, else the body's ``id``.
    """

    status: int
    resource: Resource | None = field(repr=False)
    location: str | None = None
    etag: str | None = None
    version_id: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    last_modified: datetime | None = None
    url: str | None = None
    #: ``Content-Location`` as sent: after a write, the stored version (HAPI sends it instead
    #: of ``Location`` for updates); after a search, the search URL. Not read into resource_id.
    content_location: str | None = None

    @classmethod
    def build(
        cls, *, status: int, resource: Resource | None, headers: Mapping[str, str], url: str | None = None
    ) -> FhirResponse:
        # Content-Location is not used: on a search it is the search URL, not a resource.
        location = headers.get("Location")
        etag = headers.get("ETag")
        where = parse_location(location)
        body_type = resource.get("resourceType") if resource else None
        body_id = resource.get("id") if resource and body_type != "OperationOutcome" else None
        return cls(
            status=status,
            resource=resource,
            location=location,
            etag=etag,
            version_id=version_from_etag(etag) or (where[2] if where else None) or _meta(resource).get("versionId"),
            resource_type=(where[0] if where else None) or body_type,
            resource_id=(where[1] if where else None) or body_id,
            last_modified=parse_http_date(headers.get("Last-Modified"))
            or parse_instant(_meta(resource).get("lastUpdated")),
            url=url,
            content_location=headers.get("Content-Location"),
        )

    @property
    def issues(self) -> list[OutcomeIssue]:
        """Issues of a returned OperationOutcome (e.g. with ``Prefer: return=OperationOutcome``)."""
        return issues_from_outcome(self.resource)

    def entries(self) -> list[EntryResponse]:
        """The per-entry responses of a transaction/batch response Bundle, in entry order."""
        if not self.resource or self.resource.get("resourceType") != "Bundle":
            return []
        return [EntryResponse.from_entry(e) for e in self.resource.get("entry", []) if isinstance(e, Mapping)]


__all__ = [
    "EntryResponse",
    "FhirResponse",
    "Resource",
    "parse_http_date",
    "parse_instant",
    "parse_location",
    "version_from_etag",
]
