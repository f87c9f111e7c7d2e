"""What a server's answers mean, per entry and per refusal.

Terms:

- *outcome* of an entry that went through: ``created`` (201), ``unchanged`` (a conditional
  update the server reports with the OperationOutcome code ``SUCCESSFUL_UPDATE_NO_CHANGE``,
  or a conditional create that matched a resource already there: that one is referenced,
  never overwritten), else ``updated``.
- *ambiguous match*: a conditional create or update whose criteria matched several
  resources (e.g. two Patients with one health number). Told by the status and the
  OperationOutcome: 412 to a request carrying no ``If-Match`` (the only other source of a
  412), or the issue code ``multiple-matches``; a ``FhirAmbiguousMatchError`` from the
  client. Which entry it was: an issue ``expression``/``location`` naming
  ``Bundle.entry[n]``; else the one candidate entry; else HAPI's known message
  (:data:`HAPI_AMBIGUOUS_MATCH`), which quotes the match URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from ..client import EntryResponse, FhirResponse
from ..errors import FhirAmbiguousMatchError, FhirError, OutcomeIssue
from ..identifiers import IdentifierScheme, RecordKey, identifiers_of

Bundle = dict[str, Any]

#: OperationOutcome codings (suffixes) of a conditional update that changed nothing (HAPI:
#: ``SUCCESSFUL_UPDATE_NO_CHANGE``)
NO_CHANGE_CODES = ("NO_CHANGE",)
#: FHIR IssueType codes of an ambiguous conditional match
AMBIGUOUS_ISSUE_CODES = frozenset({"multiple-matches"})
#: Text fallback, for HAPI FHIR only: its two messages for a match URL matching several
#: resources (``BaseStorageDao.transactionOperationWithMultipleMatchFailure`` and
#: ``TransactionDetails.invalidMatchUrlMultipleMatches``); group 1 or 2 is the match URL.
HAPI_AMBIGUOUS_MATCH = re.compile(
    r'with match URL "([^"]+)" because this search matched \d+ resources'
    r'|Invalid match URL "([^"]+)" - Multiple resources match this search')
_ENTRY_PATH = re.compile(r"^Bundle\.entry\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class EntryResult:
    """What the server did with one entry of a transaction that went through."""

    record: RecordKey | None  # the record the entry belongs to (None: not one of ours)
    resource_type: str
    method: str
    outcome: str  # created | updated | unchanged
    status: int
    resource_id: str | None = None
    version_id: str | None = None
    #: the entry's business identifier (system, value), the key of a future identity map
    identifier: tuple[str, str] | None = None


def entry_outcome(method: str, response: EntryResponse, raw_response: Mapping[str, Any]) -> str:
    if response.status == 201:
        return "created"
    if method == "POST" or any(code.endswith(NO_CHANGE_CODES) for code in _outcome_codes(raw_response)):
        return "unchanged"
    return "updated"


def _outcome_codes(raw_response: Mapping[str, Any]) -> set[str]:
    outcome = raw_response.get("outcome") or {}
    return {str(c.get("code", "")) for issue in outcome.get("issue", []) if isinstance(issue, Mapping)
            for c in (issue.get("details") or {}).get("coding", []) if isinstance(c, Mapping)}


def entry_results(bundle: Bundle, response: FhirResponse, scheme: IdentifierScheme | None) -> list[EntryResult]:
    """Per-entry results of a transaction-response, in the order of the request's entries."""
    results = []
    # a transaction-response has one entry per request entry, in order (FHIR R4 3.1.0.11.4)
    for entry, raw in zip(bundle.get("entry", []), (response.resource or {}).get("entry", []), strict=False):
        parsed = EntryResponse.from_entry(raw)
        method = entry["request"]["method"]
        resource = entry["resource"]
        first = (identifiers_of(resource) or [{}])[0]
        ident = (str(first["system"]), str(first["value"])) if first.get("system") and first.get("value") else None
        results.append(EntryResult(
            record=scheme.record_key(first) if scheme is not None else None,
            resource_type=resource["resourceType"], method=method,
            outcome=entry_outcome(method, parsed, raw.get("response") or {}), status=parsed.status,
            resource_id=parsed.resource_id, version_id=parsed.version_id, identifier=ident))
    return results


# -- errors ------------------------------------------------------------------------------


def status_of(error: BaseException) -> int | None:
    """The HTTP status of an error (or of the error it was raised from)."""
    status = getattr(error, "status", None) or getattr(error.__cause__, "status", None)
    return int(status) if status else None


def issues_of(error: BaseException) -> list[OutcomeIssue]:
    issues: list[OutcomeIssue] = list(getattr(error, "issues", []) or [])
    if not issues and error.__cause__ is not None:
        issues = list(getattr(error.__cause__, "issues", []) or [])
    return issues


def issues_as_dicts(error: BaseException) -> list[dict[str, Any]]:
    """The OperationOutcome issues of an error as plain dicts (the ``--report`` shape)."""
    return [{"severity": i.severity, "code": i.code, "diagnostics": i.diagnostics, "expression": list(i.expression)}
            for i in list(getattr(error, "issues", []) or [])]


def operation_outcome(error: FhirError) -> dict[str, Any]:
    """The server's OperationOutcome of an error; one made from the message when it sent none."""
    for exc in (error, error.__cause__):
        outcome = getattr(exc, "outcome", None)
        if isinstance(outcome, dict) and outcome.get("resourceType") == "OperationOutcome":
            return outcome
    issues = issues_as_dicts(error)
    if not issues and isinstance(error.__cause__, FhirError):
        issues = issues_as_dicts(error.__cause__)
    if not issues:
        issues = [{"severity": "error", "code": "processing", "diagnostics": str(error), "expression": []}]
    return {"resourceType": "OperationOutcome",
            "issue": [{k: v for k, v in i.items() if v not in (None, [])} for i in issues]}


def is_ambiguous_match(error: BaseException, part: Bundle) -> bool:
    """Whether a refusal is an ambiguous conditional match (status and issue codes, see the module)."""
    if isinstance(error, FhirAmbiguousMatchError):
        return True
    if any(i.code in AMBIGUOUS_ISSUE_CODES for i in issues_of(error)):
        return True
    return status_of(error) == 412 and not any(
        isinstance(e.get("request"), Mapping) and e["request"].get("ifMatch") for e in part.get("entry", []))


def ambiguous_entries(error: BaseException, part: Bundle, candidates: list[int]) -> list[int]:
    """Which of the candidate entries (positions in ``part``) matched several resources."""
    named = {int(m.group(1)) for i in issues_of(error) for where in i.expression
             if (m := _ENTRY_PATH.match(where)) is not None}
    if named & set(candidates):
        return [n for n in candidates if n in named]
    if len(candidates) == 1:
        return candidates
    urls = {_normalise_match(m.group(1) or m.group(2)) for m in HAPI_AMBIGUOUS_MATCH.finditer(_texts(error))}
    entries = part.get("entry", [])
    return [n for n in candidates if _match_urls(entries[n]) & urls]


def _texts(error: BaseException) -> str:
    return " ".join([str(error)] + [i.diagnostics or "" for i in issues_of(error)])


def _normalise_match(url: str) -> str:
    """The search criteria of a match URL: HAPI quotes ``identifier=...`` for a conditional
    create and ``Type?identifier=...`` elsewhere, escaped or not."""
    text = unquote(url).replace("&amp;", "&").strip()
    return text.partition("?")[2] if "?" in text else text


def _match_urls(entry: Mapping[str, Any]) -> set[str]:
    """The criteria of an entry's conditional request (``ifNoneExist``, or a conditional update's URL)."""
    request = entry.get("request") or {}
    urls = set()
    if request.get("ifNoneExist"):
        urls.add(_normalise_match(str(request["ifNoneExist"])))
    if "?" in str(request.get("url", "")):
        urls.add(_normalise_match(str(request["url"])))
    return urls


__all__ = ["AMBIGUOUS_ISSUE_CODES", "HAPI_AMBIGUOUS_MATCH", "NO_CHANGE_CODES", "EntryResult", "ambiguous_entries",
           "entry_outcome", "entry_results", "is_ambiguous_match", "issues_as_dicts", "issues_of",
           "operation_outcome", "status_of"]
