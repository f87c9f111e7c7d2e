"""A CI-sized chaos run (the full one is ``benchmarks/chaos.py``): at least 50 faults, nothing lost or duplicated.

kill -9 of ``ims-fhir serve`` and ``ims-fhir worker``, resets, 5xx, delays past the
client's timeout and outages between the worker and the real HAPI server (see
:mod:`tests.integration.chaos`); afterwards every resource of every record's final
version is on HAPI exactly once and the ledger says synced.
"""

from __future__ import annotations

from pathlib import Path

from ims_fhir.dev.hapi import DevServer
from tests.service.support import artifacts

from .chaos import run_chaos


def test_chaos_50_faults_lose_and_duplicate_nothing(clean_fhir_server: DevServer, tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_chaos(clean_fhir_server.base_url, tmp_path / "chaos", faults=50, patients=12, seed=50,
                       max_seconds=300, drain_seconds=300, log=lines.append)
    (artifacts() / "chaos-ci.txt").write_text("\n".join(lines + result.lines()) + "\n", encoding="utf-8")
    assert result.faults_injected >= 50, result.lines()
    assert result.faults["kill_serve"] >= 1 and result.faults["kill_worker"] >= 1, result.lines()
    assert result.records_posted > 0 and result.resources_expected > 0
    assert result.lost == 0 and result.duplicated == 0, result.lines()
    assert result.records_lost == 0 and result.records_duplicated == 0, result.lines()
    assert result.arrived == result.resources_expected, result.lines()
    assert set(result.ledger) == {"synced"}, result.lines()
    for name in ("serve.log", "worker.log"):
        text = (tmp_path / "chaos" / name).read_text(encoding="utf-8", errors="replace")
        assert "Traceback" not in text, name
