"""The published JSON Schema agrees with the validating models on the examples."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from ims_fhir.records.models import json_schema
from tests.conftest import EXAMPLES, read_ndjson


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    s = json_schema()
    Draft202012Validator.check_schema(s)
    return s


def test_example_document_is_valid(schema: dict[str, Any]) -> None:
    doc = orjson.loads((EXAMPLES / "clinic.json").read_bytes())
    assert list(Draft202012Validator(schema).iter_errors(doc)) == []


def test_example_ndjson_lines_are_valid(schema: dict[str, Any]) -> None:
    for line in read_ndjson(EXAMPLES / "records.ndjson"):
        name = line["record_type"].capitalize() + "Line"
        line_schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{name}"}
        assert list(Draft202012Validator(line_schema).iter_errors(line)) == []


@pytest.mark.parametrize("mutate", [
    lambda d: d["treatments"][0].update(pian=1),
    lambda d: d["treatments"][0]["sites"][0].update(muscle="bicepz"),
    lambda d: d["assessments"][0].update(performed_at="2025-03-04T09:30:00"),
    lambda d: d.update(format="ims-record/2"),
    lambda d: d["patients"][0].pop("family_name"),
])
def test_schema_rejects_what_the_models_reject(schema: dict[str, Any], mutate: Any) -> None:
    doc = copy.deepcopy(orjson.loads((EXAMPLES / "clinic.json").read_bytes()))
    mutate(doc)
    assert list(Draft202012Validator(schema).iter_errors(doc))


def test_schema_command_prints_it(run_cli: Any) -> None:
    result = run_cli("schema")
    assert result.code == 0
    assert orjson.loads(result.out)["$id"].endswith("ims-record-1.json")
