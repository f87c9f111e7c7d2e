"""Turn a raw record (a dict from any reader) into a validated model, or into problems.

A *problem* (:class:`ims_fhir.errors.Problem`) names the field path inside the record
(``sites[0].insertions``), a stable rule name and a sentence. Field rules come from the
models; the rules that involve several fields are checked here, on the raw dict, so that
a record with a wrong type in one field still gets its cross-field problems reported in
the same pass ("rejected as a whole, with every problem it has").
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, TypeGuard

from pydantic import BaseModel, ValidationError

from ..errors import Problem
from . import vocabulary as v
from .models import MODELS

#: pydantic error type -> (rule, message template); ``{what}`` is filled in below.
_RULES: dict[str, tuple[str, str]] = {
    "missing": ("required", "is required"),
    "extra_forbidden": ("unknown_field",
                        "is not a field of ims-record/1 {type} (a typo? use --lenient to ignore unknown fields)"),
    "literal_error": ("enum", "{value} is not a known {what}"),
    "greater_than_equal": ("range", "{value} is below the minimum {ge}"),
    "less_than_equal": ("range", "{value} is above the maximum {le}"),
    "greater_than": ("range", "{value} must be greater than {gt}"),
    "less_than": ("range", "{value} must be less than {lt}"),
    "int_type": ("type", "must be an integer, not {got}"),
    "int_from_float": ("type", "must be a whole number, not {value}"),
    "float_type": ("type", "must be a number, not {got}"),
    "bool_type": ("type", "must be true or false, not {got}"),
    "string_type": ("type", "must be a string, not {got}"),
    "list_type": ("type", "must be a list, not {got}"),
    "model_type": ("type", "must be an object, not {got}"),
    "dict_type": ("type", "must be an object, not {got}"),
    "model_attributes_type": ("type", "must be an object, not {got}"),
    "string_too_short": ("required", "must not be empty"),
    "string_too_long": ("length", "is longer than {max_length} characters"),
    "finite_number": ("type", "must be a finite number"),
}


def _got(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return repr(shown)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def format_path(loc: Iterable[Any]) -> str:
    """``("sites", 0, "insertions")`` -> ``sites[0].insertions``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def problems_from_validation_error(exc: ValidationError, record_type: str) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = format_path(loc) or "(record)"
        etype = err["type"]
        ctx = err.get("ctx") or {}
        value = err.get("input")
        if etype in _RULES:
            rule, template = _RULES[etype]
            field = next((p for p in reversed(loc) if isinstance(p, str)), "")
            what = v.FIELD_VOCABULARY.get(field, field)
            if etype == "literal_error":
                slugs = v.VOCABULARIES.get(what, ())
                if 0 < len(slugs) <= 10:
                    template += " (expected one of: " + ", ".join(slugs) + ")"
                else:
                    template += f" (see the {what} list of ims-record/1, or `ims-fhir schema`)"
            message = template.format(
                what=what, value=_show(value), got=_got(value), type=record_type,
                ge=ctx.get("ge"), le=ctx.get("le"), gt=ctx.get("gt"), lt=ctx.get("lt"),
                max_length=ctx.get("max_length"),
            )
        else:
            # our own PydanticCustomError types carry their rule name as the error type
            rule = etype
            message = err["msg"]
        problems.append(Problem(path=path, rule=rule, message=message))
    return problems


# ---------------------------------------------------------------------------------------
# cross-field rules on the raw dict (types are checked defensively: a wrong type is the
# models' problem, not a second one here)


def aware_datetime(value: Any) -> datetime | None:
    """The value as a datetime if it is an ISO 8601 string with an offset, else None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _assessment_rules(raw: dict[str, Any]) -> list[Problem]:
    problems = []
    measures = raw.get("outcome_measures")
    if isinstance(measures, list):
        for i, m in enumerate(measures):
            if not isinstance(m, dict):
                continue
            rng = v.INSTRUMENT_RANGES.get(m.get("instrument"))  # type: ignore[arg-type]
            score = m.get("score")
            if rng and _is_num(score) and not (rng[0] <= score <= rng[1]):
                problems.append(Problem(
                    f"outcome_measures[{i}].score", "range",
                    f"{score} is outside the {m['instrument']} range {rng[0]:g}-{rng[1]:g}",
                ))
    return problems


def _treatment_rules(raw: dict[str, Any]) -> list[Problem]:
    problems = []
    status = raw.get("status", "completed")
    start, end = aware_datetime(raw.get("started_at")), aware_datetime(raw.get("ended_at"))
    if start and end and end < start:
        problems.append(Problem("ended_at", "end_before_start", "is before started_at"))
    if status in ("not-done", "stopped") and raw.get("status_reason") in (None, ""):
        problems.append(Problem("status_reason", "required", f"is required when status is {status}"))
    if status == "completed":
        if raw.get("consent_obtained") is False:
            problems.append(Problem("consent_obtained", "consent_required", "must be true for a completed treatment"))
        sites = raw.get("sites")
        if sites is None or (isinstance(sites, list) and not sites):
            problems.append(Problem("sites", "required", "a completed treatment needs at least one needled site"))
    session, total = raw.get("session_number"), raw.get("series_total")
    if _is_int(session) and _is_int(total) and total < session:
        problems.append(Problem("series_total", "range", f"{total} is less than session_number {session}"))
    return problems


_CROSS_FIELD = {"assessment": _assessment_rules, "treatment": _treatment_rules}


def _drop_path(data: Any, loc: tuple[Any, ...]) -> None:
    for part in loc[:-1]:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(data, dict):
        data.pop(loc[-1], None)


def validate_record(
    record_type: str,
    raw: Any,
    *,
    context: dict[str, Any] | None = None,
    lenient: bool = False,
) -> tuple[BaseModel | None, list[Problem]]:
    """Validate one raw record. Returns ``(model, [])`` or ``(None, problems)``.

    With ``lenient``, unknown fields are dropped (and nothing else is relaxed).
    Never raises for bad data.
    """
    model_cls = MODELS.get(record_type)
    if model_cls is None:
        return None, [Problem("record_type", "unknown_record_type",
                              f"{_show(record_type)} is not a record type of ims-record/1 "
                              f"(expected one of: {', '.join(v.RECORD_TYPES)})")]
    if not isinstance(raw, dict):
        return None, [Problem("(record)", "type", f"a record must be a JSON object, not {_got(raw)}")]
    try:
        model = model_cls.model_validate(raw, context=context)
        problems: list[Problem] = []
    except ValidationError as exc:
        model = None
        errors = exc.errors(include_url=False)
        if lenient and any(e["type"] == "extra_forbidden" for e in errors):
            import copy

            raw = copy.deepcopy(raw)
            for e in errors:
                if e["type"] == "extra_forbidden":
                    _drop_path(raw, tuple(e["loc"]))
            return validate_record(record_type, raw, context=context, lenient=False)
        problems = problems_from_validation_error(exc, record_type)
    rules = _CROSS_FIELD.get(record_type)
    if rules is not None:
        problems.extend(rules(raw))
    if problems:
        return None, problems
    return model, []


def record_id_of(raw: Any) -> str | None:
    """The record's id if it is readable (a non-empty string), else None."""
    if isinstance(raw, dict):
        rid = raw.get("id")
        if isinstance(rid, str) and rid.strip():
            return rid
    return None
