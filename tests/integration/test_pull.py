"""``ims-fhir pull`` against the real HAPI server: push the examples, pull them back equal;
edit one on the server, pull with --since, and get exactly that one."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import requests

from ims_fhir.dev.hapi import DevServer
from ims_fhir.importing import normalise
from tests.conftest import EXAMPLES, SOURCE, read_ndjson

HEADERS = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}


def _examples() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for line in read_ndjson(EXAMPLES / "records.ndjson"):
        record_type = line.pop("record_type")
        out.append((record_type, normalise(record_type, line)))
    return out


def _pulled(path: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for line in read_ndjson(path):
        record_type = line.pop("record_type")
        out.append((record_type, line))
    return out


def _key(item: tuple[str, dict[str, Any]]) -> tuple[str, str]:
    return item[0], item[1]["id"]


def test_push_then_pull_gives_the_records_back(run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path) -> None:
    base = clean_fhir_server.base_url
    assert run_cli("push", EXAMPLES / "clinic.json", "--server", base).code == 0
    out = tmp_path / "pulled.ndjson"
    result = run_cli("pull", "--server", base, "--out", out)
    assert result.code == 0, result.err
    assert sorted(_pulled(out), key=_key) == sorted(_examples(), key=_key)

    # one patient's data only
    doc = orjson.loads((EXAMPLES / "clinic.json").read_bytes())
    patient = next(p for p in doc["patients"] if p.get("identifiers"))
    ident = patient["identifiers"][0]
    one = tmp_path / "one.ndjson"
    assert run_cli("pull", "--server", base, "--patient", f"{ident['system']}|{ident['value']}", "--out", one).code == 0
    got = _pulled(one)
    assert {r["patient_id"] for t, r in got if t in ("assessment", "treatment")} == {patient["id"]}
    assert len([1 for t, r in got if t == "treatment"]) == sum(1 for t in doc["treatments"] if t["patient_id"] == patient["id"])

    # edit one treatment on the server side, then pull only what changed
    time.sleep(1.1)
    since = datetime.now(UTC).replace(microsecond=0).isoformat()
    time.sleep(1.1)
    treatment = doc["treatments"][2]
    with requests.Session() as s:
        s.trust_env = False
        s.headers.update(HEADERS)
        found = s.get(f"{base}/Procedure", params={"identifier": f"{SOURCE['system_base']}/treatment|{treatment['id']}"},
                      timeout=60).json()
        procedure = found["entry"][0]["resource"]
        procedure["note"] = [{"text": "Corrected at the hospital: session note added"}]
        assert s.put(f"{base}/Procedure/{procedure['id']}", data=orjson.dumps(procedure), timeout=60).status_code == 200
    changed = tmp_path / "changed.ndjson"
    result = run_cli("pull", "--server", base, "--since", since, "--out", changed)
    assert result.code == 0, result.err
    ((record_type, record),) = _pulled(changed)
    assert record_type == "treatment" and record["id"] == treatment["id"]
    assert record["notes"] == "Corrected at the hospital: session note added"
    assert record == normalise("treatment", {**treatment, "notes": "Corrected at the hospital: session note added"})
