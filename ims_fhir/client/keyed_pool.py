"""Bounded concurrent delivery that keeps each patient's records in order.

Terms
-----
keyed pool
    :class:`KeyedPool`: at most ``workers`` jobs in flight; each job names *keys* (for
    delivery: the patients its Bundle is about). A job starts only when no job in flight
    shares a key with it, and jobs are started in submission order, so the Bundles of one
    patient reach the server one after the other, in order, while Bundles of other patients
    go in parallel. A job that fails ends like one that succeeds: it never holds up the
    others. The first exception of a job is kept and re-raised by :meth:`KeyedPool.close`
    unless the ``on_error`` callback consumes it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from ims_fhir.errors import UsageError

T = TypeVar("T")


class KeyedPool(Generic[T]):
    """See the module docstring. Submit from one thread; callbacks run in worker threads."""

    def __init__(self, workers: int, *, on_done: Callable[[T], None], name: str = "ims-fhir-send") -> None:
        if workers < 1:
            raise UsageError(f"concurrency must be at least 1, not {workers}")
        self.workers = workers
        self._on_done = on_done
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._cond = threading.Condition()
        self._busy: list[frozenset[str]] = []
        self._error: BaseException | None = None

    @property
    def failed(self) -> bool:
        with self._cond:
            return self._error is not None

    def submit(self, keys: Iterable[str], job: Callable[[], T]) -> None:
        """Start ``job`` once a slot is free and no job in flight shares one of ``keys``."""
        wanted = frozenset(keys)
        with self._cond:
            while len(self._busy) >= self.workers or any(wanted & busy for busy in self._busy):
                self._cond.wait()
            self._busy.append(wanted)
        future: Future[T] = self._executor.submit(job)
        future.add_done_callback(lambda f: self._finish(f, wanted))

    def _finish(self, future: Future[T], keys: frozenset[str]) -> None:
        try:
            error = future.exception()
            if error is None:
                self._on_done(future.result())
        except BaseException as exc:  # noqa: BLE001 - a failing callback must not wedge the pool
            error = exc
        with self._cond:
            if error is not None and self._error is None:
                self._error = error
            self._busy.remove(keys)
            self._cond.notify_all()

    def close(self) -> None:
        """Wait for every job; re-raise the first failure, if any."""
        self._executor.shutdown(wait=True)
        if self._error is not None:
            raise self._error


__all__ = ["KeyedPool"]
