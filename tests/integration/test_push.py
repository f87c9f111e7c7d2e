"""``ims-fhir push`` against the real HAPI FHIR server (validating every write).

Shows: every resource kind the converter emits passes HAPI's validator; pushing twice
leaves the server's counts unchanged; an edited record becomes version 2 of the same
resource; a Patient already on the server is matched and left untouched; an invalid
resource fails only its own record, with HAPI's OperationOutcome in the report; two
Patients with one identifier is a clear per-record error; faults injected by a proxy in
front of the server end with exactly one copy of everything.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ims_fhir.dev.hapi import DevServer
from tests.conftest import EXAMPLES, SOURCE, output_resources, read_ndjson
from tests.strategies import assessments, patients, practitioners, treatments

from .faultproxy import Fault, FaultProxy

TYPES = ("Organization", "Patient", "Practitioner", "Encounter", "Observation", "Procedure", "Condition", "Consent",
         "BodyStructure", "AdverseEvent", "EpisodeOfCare", "ServiceRequest")
HEADERS = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.headers.update(HEADERS)
    return s


def counts(base: str) -> dict[str, int]:
    with _session() as s:
        return {t: s.get(f"{base}/{t}", params={"_summary": "count"}, timeout=60).json()["total"] for t in TYPES}


def search(base: str, rtype: str, **params: str) -> list[dict[str, Any]]:
    with _session() as s:
        bundle = s.get(f"{base}/{rtype}", params={**params, "_count": "500"}, timeout=60).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def _push(run_cli: Any, base: str, *args: Any) -> Any:
    return run_cli("push", *args, "--server", base)


def test_every_emitted_resource_kind_passes_hapi_validation(run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("convert", EXAMPLES / "clinic.json", "--out", out).code == 0
    kinds: set[str] = set()
    with _session() as s:
        for rtype, resources in output_resources(out).items():
            for res in resources:
                response = s.post(f"{clean_fhir_server.base_url}/{rtype}/$validate", data=orjson.dumps(res), timeout=60)
                outcome = response.json()
                errors = [i for i in outcome.get("issue", []) if i["severity"] in ("error", "fatal")]
                assert response.status_code == 200 and errors == [], (rtype, errors)
                kinds.add(rtype)
    assert kinds == set(TYPES)


def test_push_twice_changes_nothing_and_edit_makes_version_2(run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path) -> None:
    base = clean_fhir_server.base_url
    first = _push(run_cli, base, EXAMPLES / "clinic.json", "--json")
    assert first.code == 0, first.err
    summary = orjson.loads(first.out)
    assert summary["failed_records"] == 0 and summary["created"] > 200
    before = counts(base)
    out = tmp_path / "out"
    run_cli("convert", EXAMPLES / "clinic.json", "--out", out)
    expected = {t: len(rs) for t, rs in output_resources(out).items()}
    assert before == expected

    second = orjson.loads(_push(run_cli, base, EXAMPLES / "clinic.json", "--json").out)
    # the identity map knows every resource and its content: nothing is even sent
    assert second["created"] == 0 and second["updated"] == 0 and second["sent"] == 0
    assert second["unchanged"] >= summary["sent"] - second["bundles"]
    assert counts(base) == before

    # the same records from the CSV form and from convert's NDJSON folder change nothing either
    assert orjson.loads(_push(run_cli, base, EXAMPLES / "csv", "--json").out)["created"] == 0
    assert orjson.loads(_push(run_cli, base, out, "--json").out)["created"] == 0
    assert counts(base) == before

    doc = orjson.loads((EXAMPLES / "clinic.json").read_bytes())
    treatment = doc["treatments"][0]
    (procedure,) = search(base, "Procedure", identifier=f"{SOURCE['system_base']}/treatment|{treatment['id']}")
    assert procedure["meta"]["versionId"] == "1"
    treatment["notes"] = "Edited after the session: patient reported relief the next day."
    edited = tmp_path / "edited.json"
    edited.write_bytes(orjson.dumps({**doc, "treatments": [treatment]}))
    third = orjson.loads(_push(run_cli, base, edited, "--json").out)
    assert third["by_type"]["Procedure"] == {"updated": 1}
    (after,) = search(base, "Procedure", identifier=f"{SOURCE['system_base']}/treatment|{treatment['id']}")
    assert after["id"] == procedure["id"] and after["meta"]["versionId"] == "2"
    assert after["note"][0]["text"].startswith("Edited after the session")
    assert counts(base) == before


def test_existing_patient_is_matched_and_untouched(run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path) -> None:
    base = clean_fhir_server.base_url
    doc = orjson.loads((EXAMPLES / "clinic.json").read_bytes())
    patient = next(p for p in doc["patients"] if p.get("identifiers"))
    ident = patient["identifiers"][0]
    hospital = {"resourceType": "Patient", "identifier": [{"system": ident["system"], "value": ident["value"]}],
                "name": [{"family": "HospitalRecordName"}], "gender": "unknown"}
    with _session() as s:
        created = s.post(f"{base}/Patient", data=orjson.dumps(hospital), timeout=60)
    assert created.status_code == 201
    hospital_id = created.headers["Location"].split("/Patient/")[1].split("/")[0]

    result = _push(run_cli, base, EXAMPLES / "clinic.json")
    assert result.code == 0, result.err
    with _session() as s:
        after = s.get(f"{base}/Patient/{hospital_id}", timeout=60).json()
    assert after["meta"]["versionId"] == "1" and after["name"][0]["family"] == "HospitalRecordName"
    assert len(search(base, "Patient")) == len(doc["patients"])  # matched, not duplicated
    procedures = search(base, "Procedure", subject=f"Patient/{hospital_id}")
    assert len(procedures) == sum(1 for t in doc["treatments"] if t["patient_id"] == patient["id"]) > 0


def test_two_patients_with_one_identifier_is_a_clear_error(run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path) -> None:
    base = clean_fhir_server.base_url
    doc = orjson.loads((EXAMPLES / "clinic.json").read_bytes())
    patient = next(p for p in doc["patients"] if p.get("identifiers"))
    ident = patient["identifiers"][0]
    with _session() as s:
        for name in ("Twin-A", "Twin-B"):
            body = {"resourceType": "Patient", "identifier": [ident], "name": [{"family": name}]}
            assert s.post(f"{base}/Patient", data=orjson.dumps(body), timeout=60).status_code == 201
    report = tmp_path / "report.ndjson"
    result = _push(run_cli, base, EXAMPLES / "clinic.json", "--report", report)
    assert result.code == 1
    failures = read_ndjson(report)
    failed = {(r["record_type"], r["id"]) for f in failures for r in f["records"]}
    assert ("patient", patient["id"]) in failed
    # found when the adapter resolved the patient's identity, before anything was written
    assert all("2 resources on the server match" in f["error"] for f in failures)
    # every other patient's records went through
    others = [p for p in doc["patients"] if p["id"] != patient["id"]]
    assert len(search(base, "Patient")) == 2 + len(others)


def test_invalid_resource_fails_only_its_record_with_hapi_reasons(
        run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path) -> None:
    base = clean_fhir_server.base_url
    out = tmp_path / "out"
    assert run_cli("convert", EXAMPLES / "clinic.json", "--out", out, "--format", "bundle", "--bundle-size", "1000").code == 0
    (bundle_path,) = sorted(out.glob("bundle-*.json"))
    bundle = orjson.loads(bundle_path.read_bytes())
    broken = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Procedure")
    broken["resource"]["status"] = "finished-ish"  # not a Procedure status: HAPI's validator says 422
    broken_id = broken["resource"]["identifier"][0]["value"]
    bad = tmp_path / "bad-bundle.json"
    bad.write_bytes(orjson.dumps(bundle))
    report = tmp_path / "report.ndjson"
    result = _push(run_cli, base, bad, "--report", report)
    assert result.code == 1
    (failure,) = read_ndjson(report)
    assert failure["status"] == 422
    assert failure["records"] == [{"record_type": "treatment", "id": broken_id}]
    assert any("finished-ish" in (i["diagnostics"] or "") and i["severity"] == "error" for i in failure["issues"])
    assert f"treatment {broken_id}" in result.err
    assert counts(base)["Procedure"] == sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == "Procedure") - 1


def test_faults_between_client_and_server_end_with_one_copy(run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path) -> None:
    base = clean_fhir_server.base_url
    out = tmp_path / "out"
    assert run_cli("convert", EXAMPLES / "clinic.json", "--out", out).code == 0
    expected = {t: len(rs) for t, rs in output_resources(out).items()}
    with FaultProxy(base, lifetime=240) as proxy:
        proxy.inject(Fault.reset(), times=1)
        proxy.inject(Fault.reset(forward="before"), when=proxy.is_transaction, times=1)
        proxy.inject(Fault.error(503, forward="before"), when=proxy.is_transaction, times=1)
        proxy.inject(Fault.error(429, retry_after="1"), when=proxy.is_transaction, times=1)
        proxy.inject(Fault.error(500), when=proxy.is_transaction, times=1)
        proxy.inject(Fault.delay(4, forward="after"), when=proxy.is_transaction, times=1)
        result = run_cli("push", EXAMPLES / "clinic.json", "--server", proxy.base_url, "--bundle-size", "60",
                         "--timeout", "2", "--max-attempts", "8", "--json")
        actions = [e.action for e in proxy.log]
    assert result.code == 0, result.err
    assert {"reset", "error", "delay"} <= set(actions)
    assert counts(base) == expected


def test_dry_run_sends_nothing(run_cli: Any, clean_fhir_server: DevServer) -> None:
    result = run_cli("push", EXAMPLES / "clinic.json", "--dry-run", "--json")
    assert result.code == 0
    assert orjson.loads(result.out)["bundles"] >= 1
    assert sum(counts(clean_fhir_server.base_url).values()) == 0


def test_unreachable_server_is_exit_2(run_cli: Any) -> None:
    result = run_cli("push", EXAMPLES / "clinic.json", "--server", "http://127.0.0.1:9/fhir", "--timeout", "1")
    assert result.code == 2 and "Traceback" not in result.err


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_generated_records_are_accepted_by_hapi(run_cli: Any, fhir_server: DevServer, tmp_path: Path, data: Any) -> None:
    n = data.draw(st.integers(1, 1_000_000))
    pid, prid, aid = f"HP{n}", f"HPR{n}", f"HA{n}"
    records = [("patient", data.draw(patients(pid))), ("practitioner", data.draw(practitioners(prid))),
               ("assessment", data.draw(assessments(aid, pid, prid)))]
    records += [("treatment", data.draw(treatments(f"HT{n}-{i}", pid, prid, aid))) for i in range(2)]
    inp = tmp_path / f"gen-{n}.ndjson"
    inp.write_bytes(b"".join(orjson.dumps({"record_type": t, **copy.deepcopy(r)}) + b"\n" for t, r in records))
    report = tmp_path / f"report-{n}.ndjson"
    result = run_cli("push", inp, "--server", fhir_server.base_url, "--clinic-id", "gen",
                     "--system-base", "https://gen.example.org/ims", "--report", report)
    assert result.code == 0, read_ndjson(report) if report.exists() else result.err
