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
concurrency
    How many Bundles the workers of a target keep in flight (``--concurrency``, the
    service's ``concurrency``; None: one worker). Where a server without transactions and
    batches takes a Bundle entry by entry, it is also how many of that Bundle's entries may
    be on the wire at once (its *fan-out*, :mod:`ims_fhir.client.entrywise`): a Bundle is
    the unit a transaction would have been, and one resource per round trip would otherwise
    leave the server idle behind a slow link.
"""

from __future__ import annotations

import threading

from ims_fhir.client.retry import Clock


class Throttle:
    """See the module docstring. Thread-safe; times are on the clock's monotonic scale."""

    def __init__(self, concurrency: int | None = None) -> None:
        self._lock = threading.Lock()
        self._until = 0.0
        #: Bundles in flight for the target (None: one worker); see the module docstring
        self.concurrency = concurrency

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
