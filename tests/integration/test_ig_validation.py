"""Every resource ``convert`` emits validates against the IMS IG in the strict test server.

The server (``fhir_server``) has the IG package loaded and no relaxation: every coding must be
valid and unknown code systems are errors. The only warnings allowed are the documented
"not checkable offline" ones (codes of LOINC, SNOMED CT, CPT and ICD, whose content the
server cannot hold), listed in docs/ig/index.md. Counts per resource kind are printed
(``-s``) for the report.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ims_fhir.dev.hapi import DevServer
from ims_fhir.mapping import (
    MappingContext,
    MappingOptions,
    map_organization,
    map_record,
)
from ims_fhir.mapping.provenance import provenance, software_device
from ims_fhir.records.models import Source
from ims_fhir.records.validation import validate_record
from ims_fhir.terminology import default_terminology
from tests.conftest import EXAMPLES, output_resources
from tests.strategies import assessments, ids, patients, practitioners, treatments

TERM = default_terminology()
#: the documented warnings: an external code system's content is not available offline
OFFLINE = re.compile(r"not checked: the content of (http://loinc\.org|http://snomed\.info/sct|"
                     r"http://www\.ama-assn\.org/go/cpt|http://hl7\.org/fhir/sid/icd-[0-9a-z-]+) is not available offline")


def validate(base: str, session: requests.Session, resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The server's OperationOutcome issues for one resource (``$validate``)."""
    response = session.post(f"{base}/{resource['resourceType']}/$validate", json=resource, timeout=120)
    outcome = response.json()
    assert outcome.get("resourceType") == "OperationOutcome", response.text[:500]
    return [i for i in outcome.get("issue", []) if i.get("severity") in ("fatal", "error", "warning")]


def _unexpected(issues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in issues if i["severity"] != "warning" or not OFFLINE.search(i.get("diagnostics", ""))]


def _check_all(base: str, session: requests.Session, resources: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    problems = []
    for res in resources:
        issues = validate(base, session, res)
        for issue in issues:
            counts[(res["resourceType"], issue["severity"])] += 1
        bad = _unexpected(issues)
        if bad:
            problems.append((res["resourceType"], res["meta"]["profile"][0].rsplit("/", 1)[1],
                             [(i["severity"], i.get("diagnostics", "")[:300], i.get("expression")) for i in bad[:4]]))
    assert problems == [], problems[:10]
    return counts


def test_every_example_resource_validates_against_the_ig(fhir_server: DevServer, fhir: requests.Session,
                                                          run_cli: Any, tmp_path: Any,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    result = run_cli("convert", EXAMPLES / "clinic.json", "--out", out, "--cpt")
    assert result.code == 0, result.err
    resources = [r for rs in output_resources(out).values() for r in rs]
    assert len(resources) > 300
    assert {"AdverseEvent", "EpisodeOfCare", "ServiceRequest"} <= {r["resourceType"] for r in resources}
    # the Provenance delivery writes with every transaction (ims-provenance)
    org = next(r for r in resources if r["resourceType"] == "Organization")
    device = software_device(TERM, "0.1.0")
    resources.append(provenance([f"Procedure/{r['id']}" for r in resources if r["resourceType"] == "Procedure"][:3],
                                activity="create", recorded=datetime(2026, 12, 1, tzinfo=UTC),
                                organization=f"Organization/{org['id']}", device=f"Device/{device['id']}", term=TERM))
    counts = _check_all(fhir_server.base_url, fhir, resources)
    kinds = Counter(r["resourceType"] for r in resources)
    with capsys.disabled():
        print("\nvalidated", dict(kinds))
        print("issues per kind and severity (warnings: external code systems not checkable offline)", dict(counts))
    assert not any(sev in ("error", "fatal") for _, sev in counts)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.data())
def test_property_generated_records_validate_against_the_ig(fhir_server: DevServer, fhir: requests.Session,
                                                            data: Any) -> None:
    source = data.draw(st.sampled_from([
        Source(clinic_id="c1", system_base="https://clinic.example.org/ims", country="CA", jurisdiction="CA-BC"),
        Source(clinic_id="us", system_base="https://us.example.org/ims", country="US")]))
    ctx = MappingContext(source, TERM, MappingOptions())
    pid, prid, aid = data.draw(ids), data.draw(ids), data.draw(ids)
    records = [("patient", data.draw(patients(pid))), ("practitioner", data.draw(practitioners(prid))),
               ("assessment", data.draw(assessments(aid, pid, prid)))]
    records += [("treatment", data.draw(treatments(f"{aid}-T{n}", pid, prid, assessment_id=aid)))
                for n in range(data.draw(st.integers(0, 2)))]
    # as convert's first pass: the sessions name the assessment's diagnoses (Procedure.reasonReference -> Condition)
    diagnoses = len(records[2][1].get("diagnoses") or ())
    ctx = ctx.with_diagnoses({aid: diagnoses}.get)
    resources = [map_organization(ctx)]
    for record_type, rec in records:
        model, problems = validate_record(record_type, copy.deepcopy(rec))
        assert problems == []
        resources += map_record(record_type, model, ctx).resources  # type: ignore[arg-type]
    _check_all(fhir_server.base_url, fhir, resources)


def test_unknown_code_systems_are_errors_external_ones_are_not(fhir_server: DevServer, fhir: requests.Session) -> None:
    unknown = "https://ims-fhir.github.io/fhir/CodeSystem/ims-no-such-system"
    observation = {"resourceType": "Observation", "status": "final",
                   "category": [{"coding": [{"system": unknown, "code": "x"}]}],
                   "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
                   "subject": {"display": "a patient"}, "effectiveDateTime": "2025-03-04T09:30:00Z", "valueInteger": 3,
                   "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}}
    issues = validate(fhir_server.base_url, fhir, observation)
    errors = [i for i in issues if i["severity"] in ("error", "fatal")]
    assert errors and all(unknown in i.get("diagnostics", "") for i in errors), issues
    observation["category"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                            "code": "exam"}]}]
    assert not [i for i in validate(fhir_server.base_url, fhir, observation) if i["severity"] in ("error", "fatal")]


def test_offline_validate_reports_per_resource_and_fails_on_errors(run_cli: Any, tmp_path: Any) -> None:
    """``ims-fhir validate`` runs the same HAPI validator and IG without a server."""
    out = tmp_path / "out"
    assert run_cli("convert", EXAMPLES / "clinic.json", "--out", out).code == 0
    broken = tmp_path / "broken.json"
    broken.write_bytes(orjson.dumps({
        "resourceType": "Observation", "id": "bad", "status": "final",
        "meta": {"profile": [TERM.profile_url("pain-score")]},
        "code": {"coding": [{"system": "https://ims-fhir.github.io/fhir/CodeSystem/ims-no-such-system", "code": "x"}]},
        "valueInteger": 3}))
    result = run_cli("validate", out / "Procedure.ndjson", out / "Consent.ndjson", "--json")
    assert result.code == 0, result.err
    lines = [orjson.loads(x) for x in result.out.splitlines()]
    assert len(lines) == 28 and all(line["resource"].startswith(("Procedure/", "Consent/")) for line in lines)
    assert not [i for line in lines for i in line["issues"] if i["severity"] in ("error", "fatal")]
    assert "validated 28 resources: 0 errors" in result.err
    result = run_cli("validate", broken)
    assert result.code == 1
    assert "Observation/bad error" in result.out and "ims-no-such-system" in result.out
