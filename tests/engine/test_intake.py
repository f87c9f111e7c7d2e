"""One record-parsing path: a request body is read by the file readers' rules, lenient included,
and converted by the same pipeline as ``convert``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from ims_fhir.convert import Converter, ConvertOptions
from ims_fhir.errors import InputError
from ims_fhir.fhir.bundles import group_from_bytes
from ims_fhir.mapping import MappingContext
from ims_fhir.records.models import Source
from ims_fhir.rejects import Rejected
from ims_fhir.sync import SQLiteOutbox, parse_body, stored_diagnoses, take
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


def _reasons(intake: Any) -> dict[str, list[str]]:
    """Each accepted treatment's Procedure reasonReference identifier values."""
    out = {}
    for inc in intake.accepted:
        if inc.record_type == "treatment":
            procedure = next(r for r in group_from_bytes(inc.group).resources if r["resourceType"] == "Procedure")
            out[inc.record_id] = [ref["identifier"]["value"] for ref in procedure["reasonReference"]]
    return out


def test_a_session_names_the_diagnoses_of_an_assessment_in_the_body_or_posted_before(tmp_path: Path) -> None:
    records = [orjson.loads(line) for line in (EXAMPLES / "records.ndjson").read_bytes().splitlines()]
    assessment = next(r for r in records if r["record_type"] == "assessment" and r.get("diagnoses"))
    aid, n = assessment["id"], len(assessment["diagnoses"])
    session = next(r for r in records if r["record_type"] == "treatment" and r.get("assessment_id") == aid)
    expected = [aid] + [f"{aid}/{i}" for i in range(n)]
    # in one body, the session first
    both = take(parse_body(orjson.dumps([session, assessment]))[0], CTX)
    assert both.rejected == [] and _reasons(both) == {session["id"]: expected}
    # posted alone: the panel only, unless the outbox holds the assessment
    outbox = SQLiteOutbox(tmp_path / "outbox.sqlite")
    try:
        alone = parse_body(orjson.dumps(session))[0]
        assert _reasons(take(alone, CTX, earlier_diagnoses=stored_diagnoses(outbox.record_group))) == {
            session["id"]: [aid]}
        outbox.put([i for i in both.accepted if i.record_type == "assessment"], ["t"], now=1.0)
        assert _reasons(take(alone, CTX, earlier_diagnoses=stored_diagnoses(outbox.record_group))) == {
            session["id"]: expected}
        # the assessment posted again without diagnoses: the body's version counts, not the stored one
        undiagnosed = {k: v for k, v in assessment.items() if k != "diagnoses"}
        again = take(parse_body(orjson.dumps([session, undiagnosed]))[0], CTX,
                     earlier_diagnoses=stored_diagnoses(outbox.record_group))
        assert _reasons(again) == {session["id"]: [aid]}
    finally:
        outbox.close()
