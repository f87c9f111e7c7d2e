"""The local HAPI FHIR server behaves the way the rest of the suite relies on.

Each test pins one property of ``hapi-server/`` configuration: FHIR R4, strict validation
of every write (422 on base-R4 errors, on a code system it does not know and on a binding a
coding breaks; codes of LOINC/SNOMED CT, which it cannot hold offline, are warnings),
client-assigned ids, conditional create, transactions, ETag/If-Match, no stale
search cache, and ``$expunge`` for wiping. The last tests check ``ims_fhir.dev.hapi``'s
toolchain check and source hash without a server.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from ims_fhir.dev import hapi
from ims_fhir.dev.hapi import DevServer
from ims_fhir.errors import ToolchainError

from .conftest import expunge_everything

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
IMS_CS = "https://ims-fhir.github.io/fhir/CodeSystem"
IDENTIFIER_SYSTEM = "https://ims-fhir.github.io/fhir/sid/test-patient"


def _patient(identifier: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": identifier}],
        **fields,
    }


def _error_issues(outcome: dict[str, Any]) -> list[dict[str, Any]]:
    assert outcome.get("resourceType") == "OperationOutcome", outcome
    return [i for i in outcome.get("issue", []) if i.get("severity") in ("error", "fatal")]


def _search_total(fhir: requests.Session, url: str) -> int:
    response = fhir.get(url, params={"_total": "accurate"}, timeout=30)
    assert response.status_code == 200, response.text
    bundle = response.json()
    return int(bundle.get("total", len(bundle.get("entry", []))))


def test_metadata_says_fhir_r4(fhir_server: DevServer, fhir: requests.Session) -> None:
    assert fhir_server.base_url.startswith("http://127.0.0.1:")
    assert fhir_server.base_url.endswith("/fhir")

    response = fhir.get(f"{fhir_server.base_url}/metadata", timeout=30)

    assert response.status_code == 200
    capability = response.json()
    assert capability["resourceType"] == "CapabilityStatement"
    assert capability["fhirVersion"].startswith("4.0.")
    interactions = {i["code"] for i in capability["rest"][0].get("interaction", [])}
    assert "transaction" in interactions


@pytest.mark.parametrize(
    ("resource", "expected_expression"),
    [
        pytest.param({"resourceType": "Patient", "gender": "banana"}, "Patient.gender", id="bad-code"),
        pytest.param(
            {"resourceType": "Observation", "subject": {"display": "no status, no code"}},
            "Observation",
            id="missing-required",
        ),
        pytest.param({"resourceType": "Patient", "birthDate": "31/12/1980"}, "Patient.birthDate", id="bad-date"),
        pytest.param(
            {
                "resourceType": "Condition",
                "clinicalStatus": {"coding": [{"system": f"{IMS_CS}/ims-status", "code": "ongoing"}]},
                "code": {"text": "low back pain"},
                "subject": {"display": "a patient"},
            },
            "Condition.clinicalStatus",
            id="required-binding-without-its-code",
        ),
    ],
)
def test_invalid_resource_is_refused_with_422(
    clean_fhir_server: DevServer, fhir: requests.Session, resource: dict[str, Any], expected_expression: str
) -> None:
    base = clean_fhir_server.base_url
    response = fhir.post(f"{base}/{resource['resourceType']}", json=resource, timeout=60)

    assert response.status_code == 422, response.text
    errors = _error_issues(response.json())
    assert errors, response.text
    expressions = [e for issue in errors for e in issue.get("expression", [])]
    assert any(e.startswith(expected_expression) for e in expressions), expressions
    # Nothing was stored.
    assert _search_total(fhir, f"{base}/{resource['resourceType']}") == 0


def test_invalid_resource_inside_transaction_is_refused(clean_fhir_server: DevServer, fhir: requests.Session) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {"resourceType": "Patient", "gender": "banana"},
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }

    response = fhir.post(clean_fhir_server.base_url, json=bundle, timeout=60)

    assert response.status_code == 422, response.text
    assert _error_issues(response.json())


def test_an_unknown_code_system_is_refused(clean_fhir_server: DevServer, fhir: requests.Session) -> None:
    """Strict: a code system the server does not know (not in the IG, not an external one) is an error."""
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": f"{IMS_CS}/ims-category", "code": "ims-session"}]}],
        "code": {"coding": [{"system": LOINC, "code": "72514-3"}]},
        "subject": {"display": "a patient"},
        "valueInteger": 7,
    }

    response = fhir.post(f"{clean_fhir_server.base_url}/Observation", json=observation, timeout=60)

    assert response.status_code == 422, response.text
    assert any(f"{IMS_CS}/ims-category" in i.get("diagnostics", "") for i in _error_issues(response.json()))


def test_external_code_systems_are_warnings_and_our_ig_codes_are_known(
    clean_fhir_server: DevServer, fhir: requests.Session
) -> None:
    """LOINC cannot be checked offline (a warning saying so); the IG's own CodeSystems are loaded."""
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "72514-3"}]},
        "subject": {"display": "a patient"},
        "bodySite": {"coding": [{"system": f"{IMS_CS}/ims-muscle", "code": "deltoid"}]},
        "valueInteger": 7,
    }

    response = fhir.post(f"{clean_fhir_server.base_url}/Observation", json=observation,
                         headers={"Prefer": "return=OperationOutcome"}, timeout=60)

    assert response.status_code == 201, response.text
    assert _error_issues(response.json()) == []


def test_required_binding_wants_every_coding_valid(clean_fhir_server: DevServer, fhir: requests.Session) -> None:
    """No relaxation: a coding outside a required value set is refused even beside a valid one."""
    condition = {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"},
                {"system": f"{IMS_CS}/ims-muscle", "code": "deltoid"},
            ]
        },
        "code": {"coding": [{"system": SNOMED, "code": "279039007", "display": "Low back pain"}]},
        "subject": {"display": "a patient"},
    }

    response = fhir.post(f"{clean_fhir_server.base_url}/Condition", json=condition, timeout=60)

    assert response.status_code == 422, response.text


def test_put_creates_patient_at_client_assigned_uuid(clean_fhir_server: DevServer, fhir: requests.Session) -> None:
    base = clean_fhir_server.base_url
    patient_id = str(uuid.uuid4())
    patient = _patient("put-1", id=patient_id, gender="female", birthDate="1980-12-31")

    created = fhir.put(f"{base}/Patient/{patient_id}", json=patient, timeout=60)

    assert created.status_code == 201, created.text
    read = fhir.get(f"{base}/Patient/{patient_id}", timeout=30)
    assert read.status_code == 200
    assert read.json()["id"] == patient_id
    assert read.json()["gender"] == "female"


def test_conditional_create_does_not_duplicate(clean_fhir_server: DevServer, fhir: requests.Session) -> None:
    base = clean_fhir_server.base_url
    headers = {"If-None-Exist": f"identifier={IDENTIFIER_SYSTEM}|cond-1"}

    first = fhir.post(f"{base}/Patient", json=_patient("cond-1"), headers=headers, timeout=60)
    second = fhir.post(f"{base}/Patient", json=_patient("cond-1"), headers=headers, timeout=60)

    assert first.status_code == 201, first.text
    assert second.status_code == 200, second.text
    assert first.headers["Location"].split("/_history")[0] == second.headers["Location"].split("/_history")[0]
    assert _search_total(fhir, f"{base}/Patient?identifier={IDENTIFIER_SYSTEM}|cond-1") == 1


def test_transaction_resolves_urn_uuid_references(clean_fhir_server: DevServer, fhir: requests.Session) -> None:
    base = clean_fhir_server.base_url
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_urn,
                "resource": _patient("tx-1"),
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier={IDENTIFIER_SYSTEM}|tx-1",
                },
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": LOINC, "code": "72514-3"}]},
                    "subject": {"reference": patient_urn},
                    "valueInteger": 4,
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }

    response = fhir.post(base, json=bundle, timeout=60)

    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in reply["entry"]]
    assert all(s.startswith("201") for s in statuses), statuses
    patient_location = reply["entry"][0]["response"]["location"]  # Patient/<id>/_history/1
    patient_ref = "/".join(patient_location.split("/")[:2])
    observation_location = reply["entry"][1]["response"]["location"]
    observation = fhir.get(f"{base}/{observation_location.split('/_history')[0]}", timeout=30).json()
    assert observation["subject"]["reference"] == patient_ref
    assert not observation["subject"]["reference"].startswith("urn:uuid:")


def test_etag_and_stale_if_match_gives_hapis_409(clean_fhir_server: DevServer, fhir: requests.Session) -> None:
    base = clean_fhir_server.base_url
    patient_id = f"etag-{uuid.uuid4()}"
    url = f"{base}/Patient/{patient_id}"

    created = fhir.put(url, json=_patient("etag-1", id=patient_id, gender="female"), timeout=60)
    assert created.status_code == 201, created.text
    assert created.headers["ETag"] == 'W/"1"'
    updated = fhir.put(
        url, json=_patient("etag-1", id=patient_id, gender="male"), headers={"If-Match": 'W/"1"'}, timeout=60
    )
    assert updated.status_code == 200, updated.text
    assert updated.headers["ETag"] == 'W/"2"'
    assert fhir.get(url, timeout=30).headers["ETag"] == 'W/"2"'

    stale = fhir.put(
        url, json=_patient("etag-1", id=patient_id, gender="other"), headers={"If-Match": 'W/"1"'}, timeout=60
    )

    # stock HAPI answers a stale If-Match with 409 (HAPI-0989), not the spec's 412: the
    # client must understand what real servers send, so the test server is not patched
    assert stale.status_code == 409, stale.text
    assert "HAPI-0989" in stale.text
    assert _error_issues(stale.json())
    assert fhir.get(url, timeout=30).json()["gender"] == "male"


def test_search_right_after_create_sees_it(clean_fhir_server: DevServer, fhir: requests.Session) -> None:
    """The same search twice around a create: a cached search result would hide the new one."""
    base = clean_fhir_server.base_url
    search = f"{base}/Patient?identifier={IDENTIFIER_SYSTEM}|fresh-1"
    assert _search_total(fhir, search) == 0

    created = fhir.post(f"{base}/Patient", json=_patient("fresh-1"), timeout=60)
    assert created.status_code == 201, created.text

    assert _search_total(fhir, search) == 1
    plain = fhir.get(search, timeout=30).json()
    assert len(plain.get("entry", [])) == 1


def test_expunge_wipes_everything(clean_fhir_server: DevServer, fhir: requests.Session) -> None:
    base = clean_fhir_server.base_url
    patient_id = str(uuid.uuid4())
    assert (
        fhir.put(f"{base}/Patient/{patient_id}", json=_patient("wipe-1", id=patient_id), timeout=60).status_code == 201
    )
    assert fhir.post(f"{base}/Patient", json=_patient("wipe-2"), timeout=60).status_code == 201
    assert _search_total(fhir, f"{base}/Patient") == 2

    expunge_everything(base)

    assert _search_total(fhir, f"{base}/Patient") == 0
    assert fhir.get(f"{base}/Patient/{patient_id}", timeout=30).status_code in (404, 410)
    # The same client id can be used again after the wipe.
    again = fhir.put(f"{base}/Patient/{patient_id}", json=_patient("wipe-1", id=patient_id), timeout=60)
    assert again.status_code == 201, again.text


# ---------------------------------------------------------------- the toolchain check itself
# (no server needed: fake `java`/`mvn` scripts on a PATH of their own)


def _fake_tool(directory: Path, name: str, version_line: str = "") -> None:
    script = directory / name
    script.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n", encoding="utf-8")
    script.chmod(0o755)


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        pytest.param({}, "`java` was not found", id="no-java"),
        pytest.param({"java": 'java version "1.8.0_292"', "mvn": ""}, "is Java 8", id="java-8"),
        pytest.param({"java": 'openjdk version "11.0.2" 2019-01-15'}, "is Java 11", id="java-11"),
        pytest.param({"java": 'openjdk version "17.0.15" 2025-04-15'}, "`mvn` was not found", id="no-maven"),
    ],
)
def test_check_toolchain_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tools: dict[str, str], message: str
) -> None:
    for name, version_line in tools.items():
        _fake_tool(tmp_path, name, version_line)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)

    with pytest.raises(ToolchainError) as caught:
        hapi.check_toolchain()

    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_check_toolchain_accepts_java_17_and_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tool(tmp_path, "java", 'openjdk version "21.0.1" 2023-10-17')
    _fake_tool(tmp_path, "mvn")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)

    toolchain = hapi.check_toolchain()

    assert toolchain.java_major == 21
    assert toolchain.mvn == str(tmp_path / "mvn")


def test_source_hash_follows_the_module_sources(tmp_path: Path) -> None:
    module = tmp_path / "hapi-server"
    shutil.copytree(hapi.locate_module_source(), module, ignore=shutil.ignore_patterns("target"))
    before = hapi.source_hash(module)
    (module / "target").mkdir(exist_ok=True)
    (module / "target" / "junk.txt").write_text("build output does not count")
    assert hapi.source_hash(module) == before

    config = module / "src" / "main" / "resources" / "application.yaml"
    config.write_text(config.read_text() + "\n# changed\n")

    assert hapi.source_hash(module) != before


def _fake_maven(directory: Path, *, exit_code: int = 0) -> Path:
    """A `mvn` that records each call and 'builds' the jar the way the real one names it."""
    calls = directory / "mvn-calls.txt"
    script = directory / "mvn"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$PWD $*" >> {calls}\n'
        "echo 'pretending to build'\n"
        f"[ {exit_code} -ne 0 ] && exit {exit_code}\n"
        f"mkdir -p target && echo jar > target/{hapi.JAR_NAME}\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    return calls


def test_build_runs_maven_once_per_source_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    _fake_tool(tools, "java", 'openjdk version "17.0.15" 2025-04-15')
    calls = _fake_maven(tools)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    module = tmp_path / "hapi-server"
    shutil.copytree(hapi.locate_module_source(), module, ignore=shutil.ignore_patterns("target"))
    cache = tmp_path / "cache"

    first = hapi.build(source=module, cache_root=cache)
    again = hapi.build(source=module, cache_root=cache)

    assert first == again == cache / hapi.source_hash(module) / hapi.JAR_NAME
    assert first.read_text() == "jar\n"
    assert len(calls.read_text().splitlines()) == 1
    assert "-DskipTests" in calls.read_text() and "package" in calls.read_text()
    assert (cache / f"{hapi.source_hash(module)}.build.log").read_text().count("pretending to build") == 1

    # Four more source versions: each builds once, and only the three newest builds stay.
    for n in range(4):
        (module / "src" / "main" / "resources" / f"extra-{n}.txt").write_text(str(n))
        assert hapi.build(source=module, cache_root=cache).is_file()
    assert len(calls.read_text().splitlines()) == 5
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 3
    assert hapi.artifact_path(source=module, cache_root=cache).is_file()


def test_failed_build_names_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    _fake_tool(tools, "java", 'openjdk version "17.0.15" 2025-04-15')
    _fake_maven(tools, exit_code=1)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    log = tmp_path / "build.log"

    with pytest.raises(ToolchainError) as caught:
        hapi.build(cache_root=tmp_path / "cache", log_path=log)

    assert "mvn exit 1" in str(caught.value)
    assert str(log) in str(caught.value)
    assert "pretending to build" in log.read_text()
    assert not list((tmp_path / "cache").glob("*/" + hapi.JAR_NAME))
