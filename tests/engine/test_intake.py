"""One record-parsing path: a request body is read by the file readers' rules, lenient included,
and converted by the same pipeline as ``convert``."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ims_fhir.convert import Converter, ConvertOptions
from ims_fhir.errors import InputError
from ims_fhir.mapping import MappingContext
from ims_fhir.records.models import Source
from ims_fhir.rejects import Rejected
from ims_fhir.sync import parse_body, take
from ims_fhir.terminology import default_terminology
from tests.conftest import EXAMPLES, SOURCE

CTX = MappingContext(Source(**SOURCE), default_terminology())
PATIENT = {"record_type": "patient", "id": "PZ1", "family_name": "Quixotically", "shoe_size": 44}


def test_lenient_reaches_the_body_as_it_reaches_files() -> None:
    body = orjson.dumps(PATIENT)
    strict = take(parse_body(body)[0], CTX)
    assert [p.rule for r in strict.rejected for p in r.problems] == ["unknown_field"]
    lenient = take(parse_body(body, lenient=True)[0], CTX, lenient=True)
    assert lenient.rejected == [] and [(a.record_type, a.record_id) for a in lenient.accepted] == [("patient", "PZ1")]


def test_a_document_body_follows_the_document_rules_of_files() -> None:
    doc = {"format": "ims-record/1", "patients": [{k: v for k, v in PATIENT.items() if k != "shoe_size"}],
           "exported_by": "someone"}
    with pytest.raises(InputError, match="unknown top-level field"):
        parse_body(orjson.dumps(doc))
    records, source = parse_body(orjson.dumps(doc), lenient=True)
    assert source is None and [(r.record_type, r.origin) for r in records] == [("patient", "patients[0]")]
    doc = {"format": "ims-record/1", "invoices": [{"id": "I1"}]}
    (raw,) = parse_body(orjson.dumps(doc))[0]
    assert [p.rule for p in raw.problems] == ["unknown_record_type"] and raw.origin == "invoices[0]"


def test_a_body_and_a_file_give_the_same_records_and_rejects(tmp_path: Path) -> None:
    lines = (EXAMPLES / "records.ndjson").read_bytes().splitlines()
    bad = orjson.dumps({"record_type": "patient", "id": "P000001", "family_name": ""})  # duplicate id, empty name
    body = b"\n".join([*lines, bad]) + b"\n"
    intake = take(parse_body(body)[0], CTX)
    path = tmp_path / "records.ndjson"
    path.write_bytes(body)
    outputs = list(Converter(ConvertOptions(out_dir=tmp_path, source=SOURCE)).outputs([path]))
    file_rejects = [item for kind, item in outputs if kind == "rejected"]
    assert isinstance(intake.rejected[0], Rejected)
    # the same problems; only the origins differ ("line 27" in a body, "records.ndjson:27" in a file)
    assert [(r.record_type, r.record_id, [(p.path, p.rule) for p in r.problems]) for r in intake.rejected] == [
        (r.record_type, r.record_id, [(p.path, p.rule) for p in r.problems]) for r in file_rejects]
    assert sorted(p.rule for p in intake.rejected[0].problems) == ["duplicate_id", "non_empty"]
    assert intake.rejected[0].origin == f"line {len(lines) + 1}" and file_rejects[0].origin == f"records.ndjson:{len(lines) + 1}"
    assert len(intake.accepted) == len(lines)
