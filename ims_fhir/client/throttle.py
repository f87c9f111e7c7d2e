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
request slots
    With a concurrency N, at most N x min(N, :data:`MAX_FAN_OUT`) requests of the target's
    workers are on the wire at once, however many Bundle parts are in flight
    (:meth:`Throttle.slot`): to a server without transactions the parts of several Bundles
    go together (each waits for the server one round trip per dependency level), and this
    keeps their sum to what N Bundles fanned out would send.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from ims_fhir.client.retry import Clock

#: the most entries of one Bundle sent at once to a server without transactions
MAX_FAN_OUT = 8


class Throttle:
    """See the module docstring. Thread-safe; times are on the clock's monotonic scale."""

    def __init__(self, concurrency: int | None = None) -> None:
        self._lock = threading.Lock()
        self._until = 0.0
        #: Bundles in flight for the target (None: one worker); see the module docstring
        self.concurrency = concurrency
        self._slots = threading.BoundedSemaphore(self.requests) if concurrency and concurrency > 1 else None

    @property
    def fan_out(self) -> int:
        """Entries of one Bundle on the wire at once (see the module docstring)."""
        return min(self.concurrency or 1, MAX_FAN_OUT)

    @property
    def requests(self) -> int:
        """Requests of the target's workers on the wire at once (see "request slots")."""
        return (self.concurrency or 1) * self.fan_out

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one request slot while a request is on the wire."""
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


__all__ = ["MAX_FAN_OUT", "Throttle"]
