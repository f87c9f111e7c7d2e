"""KeyedPool: bounded concurrency, per-key order, a failure never blocks the others."""

from __future__ import annotations

import threading
import time

import pytest

from ims_fhir.client.keyed_pool import KeyedPool


def test_bounded_in_flight_and_one_key_at_a_time_in_order() -> None:
    lock = threading.Lock()
    running: list[str] = []
    peak = 0
    order: dict[str, list[int]] = {}
    done: list[int] = []

    def job(key: str, n: int) -> int:
        nonlocal peak
        with lock:
            assert key not in running  # never two jobs of one key at once
            running.append(key)
            peak = max(peak, len(running))
            order.setdefault(key, []).append(n)
        time.sleep(0.01)
        with lock:
            running.remove(key)
        return n

    pool: KeyedPool[int] = KeyedPool(3, on_done=done.append)
    for n in range(40):
        key = f"patient-{n % 5}"
        pool.submit([key], lambda k=key, i=n: job(k, i))  # type: ignore[misc]
    pool.close()
    assert sorted(done) == list(range(40))
    assert peak <= 3 and peak >= 2
    for key, numbers in order.items():
        assert numbers == sorted(numbers), key  # submission order kept per key


def test_a_failing_job_does_not_block_others_and_is_reraised() -> None:
    done: list[int] = []
    pool: KeyedPool[int] = KeyedPool(2, on_done=done.append)

    def boom() -> int:
        raise RuntimeError("target down")

    pool.submit(["a"], boom)
    for n in range(5):
        pool.submit(["a" if n == 0 else "b"], lambda i=n: i)  # type: ignore[misc]
    with pytest.raises(RuntimeError, match="target down"):
        pool.close()
    assert sorted(done) == [0, 1, 2, 3, 4]


def test_a_job_waiting_for_its_key_does_not_hold_up_later_jobs_of_other_keys() -> None:
    # one patient's Bundles in a row (a, a) must not keep the second worker idle: b runs beside
    # the first a while the second a waits; and a job after a waiting one of its key waits too
    started: list[str] = []
    release = threading.Event()
    lock = threading.Lock()

    def job(name: str) -> str:
        with lock:
            started.append(name)
        if name == "a1":
            assert release.wait(5)
        return name

    done: list[str] = []
    pool: KeyedPool[str] = KeyedPool(2, on_done=done.append)
    pool.submit(["a"], lambda: job("a1"))
    pool.submit(["a", "c"], lambda: job("a2"))
    pool.submit(["c"], lambda: job("c1"))  # after a2 (shares c): waits for it although c is free
    pool.submit(["b"], lambda: job("b1"))
    deadline = time.monotonic() + 5
    while "b1" not in done and time.monotonic() < deadline:
        time.sleep(0.01)
    with lock:
        assert started == ["a1", "b1"]  # b1 ran while a1 held the other worker
    release.set()
    pool.close()
    assert started == ["a1", "b1", "a2", "c1"]


def test_a_job_after_another_waits_for_it_but_not_for_its_siblings() -> None:
    lock = threading.Lock()
    events: list[str] = []
    overlap = threading.Barrier(2, timeout=5)

    def job(name: str, meet: bool = False) -> str:
        with lock:
            events.append(f"start {name}")
        if meet:
            overlap.wait()  # the two parts run at the same time, or this times out
        else:
            time.sleep(0.05)
        with lock:
            events.append(f"end {name}")
        return name

    done: list[str] = []
    pool: KeyedPool[str] = KeyedPool(3, on_done=done.append)
    shared = pool.submit(["shared:org"], lambda: job("org"))
    pool.submit(["patient-a"], lambda: job("a", meet=True), after=shared)
    pool.submit(["patient-b"], lambda: job("b", meet=True), after=shared)
    pool.close()
    assert sorted(done) == ["a", "b", "org"]
    assert events.index("end org") < events.index("start a")
    assert events.index("end org") < events.index("start b")
