"""Property-based tests over the record space (hypothesis).

Valid records always convert, deterministically, into valid R4 with unique identifiers.
Broken records (a valid record with one thing broken) are always rejected with a
reason, and nothing escapes as an exception.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ims_fhir.fhir.validation import validate_resource
from ims_fhir.identifiers import identifiers_of
from ims_fhir.mapping import MappingContext, map_record
from ims_fhir.records.models import Source
from ims_fhir.records.validation import validate_record
from ims_fhir.terminology import default_terminology
from tests.strategies import any_record

CTX = MappingContext(Source(clinic_id="c1", system_base="https://clinic.example.org/ims"), default_terminology())
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _map(record_type: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    model, problems = validate_record(record_type, copy.deepcopy(data))
    assert problems == [], problems
    return map_record(record_type, model, CTX).resources  # type: ignore[arg-type]


@SETTINGS
@given(any_record)
def test_valid_records_convert_deterministically_to_valid_r4(pair: tuple[str, dict[str, Any]]) -> None:
    record_type, data = pair
    first = _map(record_type, data)
    second = _map(record_type, data)
    assert orjson.dumps(first) == orjson.dumps(second)
    ids = [(r["resourceType"], r["id"]) for r in first]
    assert len(ids) == len(set(ids))
    identifiers = [(identifiers_of(r)[0]["system"], identifiers_of(r)[0]["value"]) for r in first]
    assert len(identifiers) == len(set(identifiers))
    for res in first:
        assert validate_resource(res) == [], res


def _break(draw: Any, data: dict[str, Any]) -> dict[str, Any]:
    """One of: an unknown field, a required field removed, a wrong type, an unknown slug."""
    broken = copy.deepcopy(data)
    how = draw(st.sampled_from(["unknown", "remove", "type", "slug"]))
    if how == "unknown":
        broken[draw(st.sampled_from(["colour", "Id", "pain_nrs", "site"]))] = 1
    elif how == "remove":
        required = [k for k in ("id", "family_name", "patient_id", "practitioner_id", "performed_at", "started_at",
                                "consent_obtained") if k in broken]
        del broken[draw(st.sampled_from(required))]
    elif how == "type":
        key = draw(st.sampled_from(sorted(broken)))
        value = broken[key]
        broken[key] = {"nested": True} if not isinstance(value, dict) else "text"
    else:
        broken["id"] = broken.get("id", "x")
        if "sites" in broken:
            broken["sites"][0]["muscle"] = "not_a_muscle"
        elif "sex" in broken:
            broken["sex"] = "F"
        else:
            broken["birth_date" if "family_name" in broken and "patient_id" not in broken else "performed_at"] = "yesterday"
    return broken


@SETTINGS
@given(any_record, st.data())
def test_broken_records_are_rejected_with_reasons(pair: tuple[str, dict[str, Any]], data: Any) -> None:
    record_type, record = pair
    broken = _break(data.draw, record)
    model, problems = validate_record(record_type, broken)
    assert model is None
    assert problems and all(p.path and p.rule and p.message for p in problems)


@SETTINGS
@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers()),
                 st.dictionaries(st.text(max_size=5), st.one_of(st.none(), st.integers(), st.text(max_size=5)))),
       st.sampled_from(["patient", "practitioner", "assessment", "treatment", "other"]))
def test_arbitrary_json_never_raises(value: Any, record_type: str) -> None:
    model, problems = validate_record(record_type, value)
    assert (model is None) == bool(problems)
