"""The throttle's request slots: at most N x min(N, 8) requests of a target on the wire."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ims_fhir.client.throttle import MAX_FAN_OUT, Throttle


def _peak(throttle: Throttle, callers: int) -> int:
    lock = threading.Lock()
    now = peak = 0

    def request() -> None:
        nonlocal now, peak
        with throttle.slot():
            with lock:
                now += 1
                peak = max(peak, now)
            time.sleep(0.01)
            with lock:
                now -= 1

    with ThreadPoolExecutor(max_workers=callers) as pool:
        for _ in range(callers * 4):
            pool.submit(request)
    return peak


def test_concurrency_bounds_the_requests_on_the_wire() -> None:
    throttle = Throttle(concurrency=2)
    assert (throttle.fan_out, throttle.requests) == (2, 4)
    assert _peak(throttle, 12) == 4


def test_fan_out_is_capped_and_one_worker_is_not_limited() -> None:
    assert Throttle(concurrency=20).fan_out == MAX_FAN_OUT
    assert Throttle(concurrency=20).requests == 20 * MAX_FAN_OUT
    assert Throttle().requests == 1
    assert _peak(Throttle(), 3) == 3  # one worker (no concurrency): no slots to wait for
