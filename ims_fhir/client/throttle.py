"""One back-off shared by every worker that talks to a target.

Terms
-----
throttle
    A :class:`Throttle` shared by the transports of one target (several workers, each with
    its own client). When the server answers 429 (too many requests), or 503 with a
    ``Retry-After``, the worker that saw it *holds* the throttle until the wait is over;
    every worker then *waits* for the throttle before its next request starts. So a
    server that asks for a pause gets it from the whole process, not from one worker while
    the others keep sending.
in flight
    The most requests the workers of a target have on the wire at once (``--concurrency``,
    the service's ``concurrency``): each request takes a *slot* for as long as it is sent
    and answered. Without a limit (a single worker) nothing is counted. The limit is also
    how far one Bundle may fan out where a server without transactions takes its entries
    one by one (:mod:`ims_fhir.client.entrywise`): a request waiting for a slot holds
    nothing else, so workers and fan-out share the slots without deadlock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from ims_fhir.client.retry import Clock


class Throttle:
    """See the module docstring. Thread-safe; times are on the clock's monotonic scale."""

    def __init__(self, in_flight: int | None = None) -> None:
        self._lock = threading.Lock()
        self._until = 0.0
        #: the most requests on the wire at once (None: no limit, one worker)
        self.in_flight = in_flight
        self._slots = threading.BoundedSemaphore(in_flight) if in_flight is not None else None

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``in_flight`` slots while a request is on the wire."""
        if self._slots is None:
            yield
            return
        with self._slots:
            yield

    def hold(self, seconds: float, clock: Clock) -> None:
        """No request starts for ``seconds`` from now (a later hold only extends it)."""
        with self._lock:
            self._until = max(self._until, clock.monotonic() + max(0.0, seconds))

    def remaining(self, clock: Clock) -> float:
        with self._lock:
            return max(0.0, self._until - clock.monotonic())

    def wait(self, clock: Clock) -> float:
        """Sleep until the throttle is free; return the seconds slept."""
        slept = 0.0
        while True:
            left = self.remaining(clock)
            if left <= 0:
                return slept
            clock.sleep(left)
            slept += left


__all__ = ["Throttle"]
