"""The one error tree of ims-fhir.

Every exception the library raises on purpose derives from :class:`ImsFhirError`.
Exceptions carry data (record key, field path, rule, HTTP status, OperationOutcome
issues) rather than only a message, so that the CLI, the service and tests can act on
them. Lower-level errors (``OSError``, ``requests`` errors, ``json`` errors) are
translated once, at the boundary that sees them, with ``raise X(...) from exc``; they
are logged once, at the top (CLI or Flask error handler).

::

    ImsFhirError                      exit_code 1
    ├── UsageError                    exit_code 2  bad option, bad configuration value
    │   └── ConfigurationError        exit_code 2  configuration file or environment
    ├── InputError                    exit_code 2  a whole input cannot be read (missing file, not UTF-8, not a form we know)
    ├── RecordError                   exit_code 1  one record broke rules; carries every Problem
    ├── TerminologyError              exit_code 2  the code tables under mappings/ are inconsistent
    ├── ToolchainError                exit_code 2  Java 17 / Maven needed for dev-server are missing or the build failed
    └── FhirError                     exit_code 1  anything that went wrong talking FHIR
        ├── FhirTransportError        exit_code 2  connection refused, reset, timeout, TLS (after retries)
        ├── FhirServerError           exit_code 1  the server answered with an error status;
        │                                          carries status + OperationOutcome issues
        │   ├── FhirClientSideError        4xx other than the ones below
        │   │   ├── FhirAuthError          401 / 403, token refusal  exit_code 2
        │   │   ├── FhirNotFoundError      404 / 410
        │   │   ├── FhirConflictError      409 / 412 (conflict or failed precondition)
        │   │   │   └── FhirVersionConflictError  409 (HAPI) / 412 (spec) to a write with If-Match:
        │   │   │                                 the server's version moved
        │   │   └── FhirUnprocessableError 422 (validation failed)
        │   └── FhirServerSideError        5xx, 429 (after retries)
        ├── FhirCapabilityError       exit_code 2  the server is not FHIR R4 or lacks an interaction we need
        └── FhirAmbiguousMatchError   exit_code 1  a conditional match found more than one resource

Exit codes: 0 everything was converted/accepted, 1 some records were rejected or
failed, 2 usage, configuration, unreadable input or connection errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken rule of one record.

    ``path`` is a dotted field path inside the record (``sites[0].insertions``) or, for
    CSV input, ``file.csv:row.column``; ``rule`` is a short stable name (``range``,
    ``required``, ``unknown_field``, ``enum``, ``offset_required`` ...); ``message`` is the
    sentence a person reads. ``value`` is a short repr of the offending value, when safe.
    """

    path: str
    rule: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "rule": self.rule, "message": self.message}


class ImsFhirError(Exception):
    """Base of every error raised on purpose by ims-fhir."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ImsFhirError):
    """A command was called with options that cannot work."""

    exit_code = 2


class ConfigurationError(UsageError):
    """A configuration file or environment variable is missing or wrong."""


class InputError(ImsFhirError):
    """A whole input (file, folder, stream) cannot be read."""

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class RecordError(ImsFhirError):
    """One record broke one or more rules. Carries every problem found."""

    def __init__(
        self,
        problems: list[Problem],
        *,
        record_type: str | None = None,
        record_id: str | None = None,
        origin: str | None = None,
    ) -> None:
        self.problems = list(problems)
        self.record_type = record_type
        self.record_id = record_id
        self.origin = origin
        who = f"{record_type or 'record'} {record_id!r}" if record_id else (record_type or "record")
        where = f" at {origin}" if origin else ""
        first = "; ".join(f"{p.path}: {p.message}" for p in self.problems[:3])
        more = f" (+{len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        super().__init__(f"{who}{where}: {first}{more}")


class TerminologyError(ImsFhirError):
    """The code tables under mappings/ are inconsistent (a startup error)."""

    exit_code = 2


class ToolchainError(ImsFhirError):
    """A required external tool (Java 17, Maven) is missing or its build failed."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class OutcomeIssue:
    """One ``OperationOutcome.issue`` as a server sent it."""

    severity: str
    code: str
    diagnostics: str | None = None
    expression: tuple[str, ...] = field(default_factory=tuple)

    def line(self) -> str:
        where = f" at {', '.join(self.expression)}" if self.expression else ""
        text = self.diagnostics or self.code
        return f"{self.severity}: {text}{where}"

    @classmethod
    def from_fhir(cls, issue: dict[str, Any]) -> OutcomeIssue:
        expression = issue.get("expression") or issue.get("location") or ()
        diagnostics = issue.get("diagnostics")
        if diagnostics is None:
            details = issue.get("details") or {}
            diagnostics = details.get("text")
        return cls(
            severity=str(issue.get("severity", "error")),
            code=str(issue.get("code", "processing")),
            diagnostics=diagnostics,
            expression=tuple(str(e) for e in expression),
        )


def issues_from_outcome(outcome: Any) -> list[OutcomeIssue]:
    """Read the issues of an OperationOutcome dict; anything else gives no issues."""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return []
    return [OutcomeIssue.from_fhir(i) for i in outcome.get("issue", []) if isinstance(i, dict)]


class FhirError(ImsFhirError):
    """Something went wrong talking FHIR."""


class FhirTransportError(FhirError):
    """The server could not be reached or did not answer in time (after retries)."""

    exit_code = 2


class FhirServerError(FhirError):
    """The server answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        issues: list[OutcomeIssue] | None = None,
        outcome: dict[str, Any] | None = None,
        url: str | None = None,
    ) -> None:
        self.status = status
        self.issues = list(issues or [])
        self.outcome = outcome
        self.url = url
        lines = "; ".join(i.line() for i in self.issues if i.severity in ("fatal", "error")) or "; ".join(
            i.line() for i in self.issues
        )
        super().__init__(f"{message} (HTTP {status})" + (f": {lines}" if lines else ""))


class FhirClientSideError(FhirServerError):
    """4xx: the request was refused."""


class FhirAuthError(FhirClientSideError):
    """401 or 403, or the token endpoint refused the client: the whole target is unusable
    until credentials or registration are fixed, so the CLI exits 2 (like a connection error)."""

    exit_code = 2


class FhirNotFoundError(FhirClientSideError):
    """404 or 410."""


class FhirConflictError(FhirClientSideError):
    """409 or 412: version conflict or failed precondition."""


class FhirVersionConflictError(FhirConflictError):
    """A version-aware write (``If-Match``) found the server's resource at another version.

    FHIR R4 (http.html, "Managing Resource Contention") answers a stale ``If-Match`` with
    412 Precondition Failed; stock HAPI FHIR answers 409 Conflict (HAPI-0989, "not the
    current version"). Both mean the same thing to the adapter: someone else wrote the
    resource since it was last written here, so it must not be overwritten blindly.
    """


class FhirUnprocessableError(FhirClientSideError):
    """422: the server's validator rejected the resource."""


class FhirServerSideError(FhirServerError):
    """5xx or 429, still failing after the retry budget."""


class FhirCapabilityError(FhirError):
    """The server is not FHIR R4 or lacks an interaction the adapter needs."""

    exit_code = 2


class FhirAmbiguousMatchError(FhirError):
    """A conditional match on a business identifier found more than one resource."""


__all__ = [
    "ConfigurationError",
    "FhirAmbiguousMatchError",
    "FhirAuthError",
    "FhirCapabilityError",
    "FhirClientSideError",
    "FhirConflictError",
    "FhirError",
    "FhirNotFoundError",
    "FhirServerError",
    "FhirServerSideError",
    "FhirTransportError",
    "FhirUnprocessableError",
    "FhirVersionConflictError",
    "ImsFhirError",
    "InputError",
    "OutcomeIssue",
    "Problem",
    "RecordError",
    "TerminologyError",
    "ToolchainError",
    "UsageError",
    "issues_from_outcome",
]
