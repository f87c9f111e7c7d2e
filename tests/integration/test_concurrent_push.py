"""Concurrent delivery under a shared 429 back-off, against the real HAPI server.

``ims-fhir push --concurrency 4`` through the fault proxy, which answers ``429 Too Many
Requests`` with ``Retry-After: 3`` to a few transactions. The proxy's timestamps show that
after each 429 no request of any worker reached it until the announced pause was over (one
back-off for the whole target, not only for the worker that got the 429); its request
bodies show that the Bundles of one patient reached the server one after the other (each
after the one before was answered), in the order they were built; the server's counts that
every record landed exactly once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson

from ims_fhir.delivery.split import patient_keys
from ims_fhir.dev.hapi import DevServer
from ims_fhir.dev.synthetic.cli import main as synthetic_main
from tests.conftest import output_resources

from .faultproxy import Fault, FaultProxy, ProxyRequest
from .test_push import counts

RETRY_AFTER = 3.0
#: a worker may have sent its request just before the 429 reached the client (the client
#: cannot know of a pause before it is told): requests arriving this soon after it are allowed
GRACE = 0.5


class RecordingProxy(FaultProxy):
    """A fault proxy that also keeps the body of every transaction it receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bodies: dict[int, bytes] = {}
        self._bodies_lock = threading.Lock()

    def _admit(self, method: str, path: str, headers: dict[str, str], body: bytes) -> ProxyRequest | None:
        request = super()._admit(method, path, headers, body)
        if request is not None and self.is_transaction(request):
            with self._bodies_lock:
                self.bodies[request.index] = body
        return request


def test_concurrent_push_shares_one_back_off_keeps_patient_order_and_lands_once(
        run_cli: Any, clean_fhir_server: DevServer, tmp_path: Path) -> None:
    base = clean_fhir_server.base_url
    export = tmp_path / "generated.json"
    assert synthetic_main(["export", "--patients", "8", "--seed", "23", "--format", "json", "--out", str(export)]) == 0
    bundles = tmp_path / "bundles"
    assert run_cli("convert", export, "--out", bundles, "--format", "bundle", "--bundle-size", "30").code == 0
    out = tmp_path / "resources"
    assert run_cli("convert", export, "--out", out).code == 0
    expected = {t: len(rs) for t, rs in output_resources(out).items()}
    # which Bundle (by position) each entry belongs to, to tell the transactions apart
    built = sorted(bundles.glob("bundle-*.json"))
    bundle_of: dict[str, int] = {}
    patients_of: list[set[str]] = []  # the patients each Bundle is about (the keys of the pool)
    for position, path in enumerate(built):
        original = orjson.loads(path.read_bytes())
        patients_of.append(patient_keys(original))
        for entry in original["entry"]:
            # shared entries travel in several Bundles: the clinic, people, and a session series
            # (every session of it carries its EpisodeOfCare / ServiceRequest)
            if entry["resource"]["resourceType"] not in ("Organization", "Patient", "Practitioner",
                                                         "EpisodeOfCare", "ServiceRequest"):
                bundle_of[entry["fullUrl"]] = position
    assert len(built) >= 8

    with RecordingProxy(base, lifetime=600) as proxy:
        for skip in (2, 6, 11):  # three 429s, spread over the run (the rules see every transaction)
            proxy.inject(Fault.error(429, retry_after=f"{RETRY_AFTER:g}"), when=proxy.is_transaction, skip=skip)
        result = run_cli("push", bundles, "--server", proxy.base_url, "--concurrency", "4", "--max-attempts", "6",
                         "--json")
        log = proxy.log
        bodies = dict(proxy.bodies)
    assert result.code == 0, result.err
    assert orjson.loads(result.out)["failed_records"] == 0
    assert counts(base) == expected  # every record exactly once, though some transactions were sent twice

    # one back-off for every worker: nothing arrives inside a window a 429 announced
    throttled = [e for e in log if e.action == "error"]
    assert len(throttled) == 3
    for e in throttled:
        early = [o.index for o in log if e.answered + GRACE < o.at < e.answered + RETRY_AFTER]
        assert not early, f"requests {early} arrived within the Retry-After of the 429 to request {e.index}"

    # one patient's Bundles: one after the other, in the order they were built
    accepted = [e for e in log if e.action == "pass" and e.index in bodies and e.upstream_status == 200]
    per_patient: dict[str, list[tuple[int, float, float]]] = {}
    for e in accepted:
        sent = orjson.loads(bodies[e.index])
        positions = {bundle_of[x["fullUrl"]] for x in sent["entry"] if x.get("fullUrl") in bundle_of}
        if not positions:
            continue  # only shared entries left to send (the Bundle of Patients)
        (position,) = positions
        for key in patients_of[position]:
            per_patient.setdefault(key, []).append((position, e.at, e.answered))
    assert len(per_patient) >= 8
    concurrent = 0
    for key, seen in per_patient.items():
        by_arrival = sorted(seen, key=lambda s: s[1])
        assert [s[0] for s in by_arrival] == sorted(s[0] for s in seen), key
        for before, after in zip(by_arrival, by_arrival[1:], strict=False):
            assert after[1] >= before[2], f"two Bundles of patient {key} in flight at once"
    for e in accepted:
        concurrent = max(concurrent, sum(1 for o in accepted if o.at < e.answered and e.at < o.answered))
    assert concurrent >= 2  # the workers did overlap
