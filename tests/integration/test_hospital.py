"""Hospitals as they really are (issue 9), through ``ims-fhir push`` against the real HAPI server.

A hospital that already has the patient (same health number); incremental pushes of one
record; ownership (the clinic's resources are updated, the hospital's are kept); a Procedure
edited at the hospital is a conflict, not a silent overwrite, and each resolution does what it
says; a retraction; a Provenance naming every written resource, valid for HAPI.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import requests

from ims_fhir.dev.hapi import DevServer
from tests.conftest import EXAMPLES, SOURCE, read_ndjson

HEADERS = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
PATIENT_SYS = f"{SOURCE['system_base']}/patient"
TREATMENT_SYS = f"{SOURCE['system_base']}/treatment"
ASSESSMENT_SYS = f"{SOURCE['system_base']}/assessment"


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.headers.update(HEADERS)
    return s


def search(base: str, rtype: str, **params: str) -> list[dict[str, Any]]:
    with _session() as s:
        reply = s.get(f"{base}/{rtype}", params={**params, "_count": "500"}, headers={"Cache-Control": "no-cache"},
                      timeout=60)
    assert reply.status_code == 200, reply.text
    return [e["resource"] for e in reply.json().get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]


def read(base: str, ref: str) -> dict[str, Any]:
    with _session() as s:
        reply = s.get(f"{base}/{ref}", timeout=60)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _doc() -> dict[str, Any]:
    return dict(orjson.loads((EXAMPLES / "clinic.json").read_bytes()))


def _write(path: Path, doc: dict[str, Any], **lists: list[dict[str, Any]]) -> Path:
    path.write_bytes(orjson.dumps({"format": "ims-record/1", "source": doc["source"], **lists}))
    return path


def _push(run_cli: Any, base: str, path: Path, state: Path, *extra: Any) -> tuple[int, dict[str, Any], str]:
    result = run_cli("push", path, "--server", base, "--state", state, "--json", *extra)
    return result.code, orjson.loads(result.out) if result.out.strip() else {}, result.err


def _hospital_patient(base: str, patient: dict[str, Any]) -> str:
    ident = patient["identifiers"][0]
    body = {"resourceType": "Patient", "identifier": [{"system": ident["system"], "value": ident["value"]}],
            "name": [{"family": "HospitalName"}], "gender": "unknown"}
    with _session() as s:
        created = s.post(f"{base}/Patient", data=orjson.dumps(body), timeout=60)
    assert created.status_code == 201, created.text
    return str(created.headers["Location"].split("/Patient/")[1].split("/")[0])


def test_known_hospital_patient_survives_incremental_pushes(run_cli: Any, clean_fhir_server: DevServer,
                                                           tmp_path: Path) -> None:
    base, state = clean_fhir_server.base_url, tmp_path / "state.sqlite"
    doc = _doc()
    patient = next(p for p in doc["patients"] if p.get("identifiers"))
    hospital_id = _hospital_patient(base, patient)

    code, summary, err = _push(run_cli, base, EXAMPLES / "clinic.json", state)
    assert code == 0, err
    assert summary["kept (server-owned)"] == 1  # the hospital's Patient: referenced, not written

    # one edited treatment alone, as an incremental export sends it
    treatment = copy.deepcopy(next(t for t in doc["treatments"] if t["patient_id"] == patient["id"]))
    treatment["notes"] = "Edited after the session: patient tolerated well"
    code, summary, err = _push(run_cli, base, _write(tmp_path / "t.json", doc, treatments=[treatment]), state)
    assert code == 0, err
    assert summary["updated"] >= 1 and summary["failed_records"] == 0
    (procedure,) = search(base, "Procedure", identifier=f"{TREATMENT_SYS}|{treatment['id']}")
    assert procedure["subject"]["reference"] == f"Patient/{hospital_id}"
    assert procedure["meta"]["versionId"] == "2" and procedure["note"][0]["text"].startswith("Edited after")

    # one new assessment alone
    assessment = copy.deepcopy(next(a for a in doc["assessments"] if a["patient_id"] == patient["id"]))
    assessment["id"] = "A9999999"
    code, summary, err = _push(run_cli, base, _write(tmp_path / "a.json", doc, assessments=[assessment]), state)
    assert code == 0, err
    (panel,) = search(base, "Observation", identifier=f"{ASSESSMENT_SYS}|A9999999")
    assert panel["subject"]["reference"] == f"Patient/{hospital_id}"

    hospital = read(base, f"Patient/{hospital_id}")
    assert hospital["meta"]["versionId"] == "1"
    assert hospital["name"] == [{"family": "HospitalName"}]
    assert [i["system"] for i in hospital["identifier"]] == [patient["identifiers"][0]["system"]]  # no clinic data
    assert "telecom" not in hospital and "birthDate" not in hospital
    assert len(search(base, "Patient", identifier=f"{PATIENT_SYS}|{patient['id']}")) == 0

    # the state is safe to delete: it is rebuilt by searching. The hospital's Patient lacks the
    # clinic's identifier, so a treatment alone cannot name it any more: a clear failure, nothing written
    state.unlink()
    treatment["notes"] = "Edited again"
    report = tmp_path / "report.ndjson"
    code, summary, err = _push(run_cli, base, _write(tmp_path / "t2.json", doc, treatments=[treatment]), state,
                               "--report", report)
    assert code == 1
    (item,) = read_ndjson(report)
    assert f"patient {patient['id']}" in item["error"]
    assert search(base, "Procedure", identifier=f"{TREATMENT_SYS}|{treatment['id']}")[0]["meta"]["versionId"] == "2"
    # with the patient's record (and so its health number) in the push, it is found again
    code, summary, err = _push(run_cli, base, _write(tmp_path / "t3.json", doc, patients=[patient],
                                                     treatments=[treatment]), state)
    assert code == 0, err
    assert summary["kept (server-owned)"] == 1
    (procedure,) = search(base, "Procedure", identifier=f"{TREATMENT_SYS}|{treatment['id']}")
    assert procedure["subject"]["reference"] == f"Patient/{hospital_id}" and procedure["meta"]["versionId"] == "3"
    assert read(base, f"Patient/{hospital_id}")["meta"]["versionId"] == "1"


def test_unknown_patient_fails_its_record_with_a_reason_and_writes_nothing(run_cli: Any, clean_fhir_server: DevServer,
                                                                          tmp_path: Path) -> None:
    base, state = clean_fhir_server.base_url, tmp_path / "state.sqlite"
    doc = _doc()
    treatment = doc["treatments"][0]
    report = tmp_path / "report.ndjson"
    code, summary, err = _push(run_cli, base, _write(tmp_path / "t.json", doc, treatments=[treatment]), state,
                               "--report", report)
    assert code == 1
    (item,) = read_ndjson(report)
    assert {"record_type": "treatment", "id": treatment["id"]} in item["records"]
    assert f"patient {treatment['patient_id']}" in item["error"]
    assert search(base, "Procedure") == [] and search(base, "Encounter") == []


def test_ownership_clinic_patient_updated_hospital_patient_kept(run_cli: Any, clean_fhir_server: DevServer,
                                                               tmp_path: Path) -> None:
    base, state = clean_fhir_server.base_url, tmp_path / "state.sqlite"
    doc = _doc()
    owned = next(p for p in doc["patients"] if p.get("identifiers"))
    hospital_id = _hospital_patient(base, owned)
    ours = next(p for p in doc["patients"] if p["id"] != owned["id"])
    code, summary, err = _push(run_cli, base, EXAMPLES / "clinic.json", state)
    assert code == 0, err

    for p in (owned, ours):
        p["phone"] = "+1-604-555-0199"
    code, summary, err = _push(run_cli, base, _write(tmp_path / "p.json", doc, patients=[owned, ours]), state)
    assert code == 0, err
    assert summary["by_type"]["Patient"] == {"updated": 1, "kept (server-owned)": 1}
    (clinic_patient,) = search(base, "Patient", identifier=f"{PATIENT_SYS}|{ours['id']}")
    assert clinic_patient["meta"]["versionId"] == "2"
    assert {"system": "phone", "value": "+1-604-555-0199"}.items() <= clinic_patient["telecom"][0].items()
    hospital = read(base, f"Patient/{hospital_id}")
    assert hospital["meta"]["versionId"] == "1" and "telecom" not in hospital

    # pushing the same again: nothing written
    code, summary, err = _push(run_cli, base, _write(tmp_path / "p.json", doc, patients=[owned, ours]), state)
    assert code == 0 and summary["by_type"]["Patient"] == {"unchanged": 1, "kept (server-owned)": 1}


def _edit_at_hospital(base: str, procedure: dict[str, Any], note: str) -> dict[str, Any]:
    edited = {**procedure, "note": [{"text": note}]}
    with _session() as s:
        reply = s.put(f"{base}/Procedure/{procedure['id']}", data=orjson.dumps(edited), timeout=60)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _conflict_setup(run_cli: Any, base: str, tmp_path: Path) -> tuple[Path, dict[str, Any], dict[str, Any], dict[str, Any]]:
    state = tmp_path / "state.sqlite"
    doc = _doc()
    code, _, err = _push(run_cli, base, EXAMPLES / "clinic.json", state)
    assert code == 0, err
    treatment = copy.deepcopy(doc["treatments"][0])
    (procedure,) = search(base, "Procedure", identifier=f"{TREATMENT_SYS}|{treatment['id']}")
    _edit_at_hospital(base, procedure, "Hospital: reviewed by the physiatrist")
    treatment["notes"] = "Clinic: patient reported less pain next day"
    _write(tmp_path / "t.json", doc, treatments=[treatment])
    return state, doc, treatment, procedure


def test_hospital_edit_is_a_conflict_not_an_overwrite(run_cli: Any, clean_fhir_server: DevServer,
                                                      tmp_path: Path) -> None:
    base = clean_fhir_server.base_url
    state, doc, treatment, procedure = _conflict_setup(run_cli, base, tmp_path)
    report = tmp_path / "report.ndjson"
    code, summary, err = _push(run_cli, base, tmp_path / "t.json", state, "--report", report)
    assert code == 1 and summary["conflicts"] == 1, err
    (item,) = read_ndjson(report)
    assert item["records"] == [{"record_type": "treatment", "id": treatment["id"]}] and item["conflict"]
    server = read(base, f"Procedure/{procedure['id']}")
    assert server["meta"]["versionId"] == "2" and server["note"] == [{"text": "Hospital: reviewed by the physiatrist"}]

    listed = run_cli("conflicts", "--state", state, "--json")
    assert listed.code == 0, listed.err
    (conflict,) = orjson.loads(listed.out)
    assert conflict["resourceType"] == "Procedure" and conflict["server_id"] == procedure["id"]
    assert (conflict["base_version"], conflict["server_version"]) == ("1", "2")
    assert {"path": "note[0].text", "clinic": "Clinic: patient reported less pain next day",
            "server": "Hospital: reviewed by the physiatrist"} in conflict["diff"]


def test_resolution_resend_overrides_the_server(run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path) -> None:
    base = clean_fhir_server.base_url
    state, _, _, procedure = _conflict_setup(run_cli, base, tmp_path)
    assert _push(run_cli, base, tmp_path / "t.json", state)[0] == 1
    (conflict,) = orjson.loads(run_cli("conflicts", "--state", state, "--json").out)
    done = run_cli("conflicts", "--state", state, "--server", base, "--resolve", conflict["id"], "--as", "resend")
    assert done.code == 0, done.err
    server = read(base, f"Procedure/{procedure['id']}")
    assert server["meta"]["versionId"] == "3"
    assert server["note"] == [{"text": "Clinic: patient reported less pain next day"}]
    assert orjson.loads(run_cli("conflicts", "--state", state, "--json").out) == []
    # the clinic's version is now the one written: pushing it again changes nothing
    code, summary, _ = _push(run_cli, base, tmp_path / "t.json", state)
    assert code == 0 and summary["conflicts"] == 0 and read(base, f"Procedure/{procedure['id']}")["meta"]["versionId"] == "3"


def test_resolution_accept_imports_the_server_version(run_cli: Any, clean_fhir_server: DevServer,
                                                      tmp_path: Path) -> None:
    base = clean_fhir_server.base_url
    state, _, treatment, procedure = _conflict_setup(run_cli, base, tmp_path)
    assert _push(run_cli, base, tmp_path / "t.json", state)[0] == 1
    (conflict,) = orjson.loads(run_cli("conflicts", "--state", state, "--json").out)
    out = tmp_path / "accepted.ndjson"
    done = run_cli("conflicts", "--state", state, "--server", base, "--resolve", conflict["id"], "--as", "accept",
                   "--out", out)
    assert done.code == 0, done.err
    (record,) = [r for r in read_ndjson(out) if r.get("id") == treatment["id"]]
    assert record["notes"] == "Hospital: reviewed by the physiatrist"  # the clinic's new revision
    assert read(base, f"Procedure/{procedure['id']}")["meta"]["versionId"] == "2"  # untouched
    # the accepted revision, pushed back, is not a conflict
    accepted = _write(tmp_path / "accepted.json", _doc(), treatments=[{k: v for k, v in record.items() if k != "record_type"}])
    code, summary, err = _push(run_cli, base, accepted, state)
    assert code == 0 and summary["conflicts"] == 0, err
    assert read(base, f"Procedure/{procedure['id']}")["note"] == [{"text": "Hospital: reviewed by the physiatrist"}]


def test_resolution_dismiss_keeps_the_server_version(run_cli: Any, clean_fhir_server: DevServer,
                                                     tmp_path: Path) -> None:
    base = clean_fhir_server.base_url
    state, _, _, procedure = _conflict_setup(run_cli, base, tmp_path)
    assert _push(run_cli, base, tmp_path / "t.json", state)[0] == 1
    (conflict,) = orjson.loads(run_cli("conflicts", "--state", state, "--json").out)
    done = run_cli("conflicts", "--state", state, "--server", base, "--resolve", conflict["id"], "--as", "dismiss")
    assert done.code == 0, done.err
    code, summary, _ = _push(run_cli, base, tmp_path / "t.json", state)
    assert code == 0 and summary["conflicts"] == 0
    server = read(base, f"Procedure/{procedure['id']}")
    assert server["meta"]["versionId"] == "2" and server["note"] == [{"text": "Hospital: reviewed by the physiatrist"}]
    (resolved,) = orjson.loads(run_cli("conflicts", "--state", state, "--all", "--json").out)
    assert (resolved["state"], resolved["resolution"]) == ("resolved", "dismiss")


def test_retracted_treatment_is_entered_in_error_and_pulls_back(run_cli: Any, clean_fhir_server: DevServer,
                                                                tmp_path: Path) -> None:
    base, state = clean_fhir_server.base_url, tmp_path / "state.sqlite"
    doc = _doc()
    assert _push(run_cli, base, EXAMPLES / "clinic.json", state)[0] == 0
    treatment = copy.deepcopy(next(t for t in doc["treatments"] if t.get("status", "completed") == "completed"))
    (before,) = search(base, "Procedure", identifier=f"{TREATMENT_SYS}|{treatment['id']}")
    treatment["status"] = "entered-in-error"
    code, _, err = _push(run_cli, base, _write(tmp_path / "t.json", doc, treatments=[treatment]), state)
    assert code == 0, err
    (after,) = search(base, "Procedure", identifier=f"{TREATMENT_SYS}|{treatment['id']}")
    assert after["id"] == before["id"] and after["meta"]["versionId"] == "2" and after["status"] == "entered-in-error"
    parts = search(base, "Observation", **{"part-of": f"Procedure/{after['id']}"})
    assert parts and {o["status"] for o in parts} == {"entered-in-error"}
    out = tmp_path / "pulled.ndjson"
    result = run_cli("pull", "--server", base, "--out", out)
    assert result.code == 0, result.err
    (back,) = [r for r in read_ndjson(out) if r["record_type"] == "treatment" and r["id"] == treatment["id"]]
    assert back["status"] == "entered-in-error"
    # pull records the Provenance of what it imported: the retraction is an UPDATE of version 2
    provenance = read_ndjson(tmp_path / "pulled.provenance.ndjson")
    (line,) = [p for p in provenance if p["resource"] == f"Procedure/{after['id']}"]
    assert (line["record_type"], line["id"]) == ("treatment", treatment["id"])
    assert [(p["activity"], p["version"]) for p in line["provenance"]] == [("CREATE", "1"), ("UPDATE", "2")]
    assert {a["type"] for p in line["provenance"] for a in p["agents"]} == {"author", "assembler"}


def test_every_written_resource_has_a_valid_provenance(run_cli: Any, clean_fhir_server: DevServer,
                                                       tmp_path: Path) -> None:
    base, state = clean_fhir_server.base_url, tmp_path / "state.sqlite"
    assert _push(run_cli, base, EXAMPLES / "clinic.json", state)[0] == 0
    provenances = search(base, "Provenance")
    assert provenances
    targets = {t["reference"].split("/_history/")[0]: t["reference"] for p in provenances for t in p["target"]}
    # targets carry the version written (HAPI's auto-versioned references)
    assert all("/_history/" in ref for ref in targets.values())
    for rtype in ("Patient", "Practitioner", "Encounter", "Observation", "Procedure"):
        for res in search(base, rtype):
            assert f"{rtype}/{res['id']}" in targets, f"{rtype}/{res['id']} has no Provenance"
    (device,) = search(base, "Device")
    assert device["version"][0]["value"]
    for prov in provenances:
        assert prov["agent"][1]["who"]["reference"] == f"Device/{device['id']}"
        assert prov["agent"][0]["who"]["reference"].startswith("Organization/")
        with _session() as s:
            body = {k: v for k, v in prov.items() if k != "meta"}
            reply = s.post(f"{base}/Provenance/$validate", data=orjson.dumps(body), timeout=60)
        errors = [i for i in reply.json().get("issue", []) if i["severity"] in ("error", "fatal")]
        assert reply.status_code == 200 and errors == [], errors
    # an update brings a Provenance with activity UPDATE naming the new version
    doc = _doc()
    treatment = doc["treatments"][0]
    treatment["notes"] = "changed"
    assert _push(run_cli, base, _write(tmp_path / "t.json", doc, treatments=[treatment]), state)[0] == 0
    (procedure,) = search(base, "Procedure", identifier=f"{TREATMENT_SYS}|{treatment['id']}")
    updates = search(base, "Provenance", target=f"Procedure/{procedure['id']}")
    refs = {t["reference"] for p in updates for t in p["target"] if p["activity"]["coding"][0]["code"] == "UPDATE"}
    assert f"Procedure/{procedure['id']}/_history/2" in refs
