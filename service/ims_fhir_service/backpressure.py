"""How deep a target's queue is, for ``POST /records``' backpressure, without counting it at every request.

Counting the deliveries queued or sending reads the queue's index from one end to the other
(a hundred thousand rows at the default limit): at every request, that alone cost more than
storing the request's records. The gauge counts at most ``limit + 1`` rows, and counts again
only when its last count is older than :data:`RECOUNT_SECONDS` or when that count plus the
deliveries this process queued since could pass the limit. So a request is refused only on a
fresh count, and a queue filled by other processes (several ``serve`` behind one balancer)
may pass its limit by at most what they queue in :data:`RECOUNT_SECONDS`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: the longest a count is trusted (a refusal always counts again)
RECOUNT_SECONDS = 1.0


@dataclass
class _Count:
    depth: int
    at: float
    added: int = 0


@dataclass
class QueueGauge:
    clock: Callable[[], float] = time.monotonic
    _counts: dict[str, _Count] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def over(self, target: str, limit: int, count: Callable[..., int]) -> int | None:
        """The depth counted when the queue holds more than ``limit`` deliveries, else None.

        ``count(at_most=n)`` counts the target's pending deliveries, stopping at ``n``."""
        now = self.clock()
        with self._lock:
            known = self._counts.get(target)
            if known is not None and now - known.at < RECOUNT_SECONDS and known.depth + known.added <= limit:
                return None
        depth = count(at_most=limit + 1)
        with self._lock:
            self._counts[target] = _Count(depth, now)
        return depth if depth > limit else None

    def added(self, target: str, deliveries: int) -> None:
        """This process queued that many deliveries to the target since."""
        with self._lock:
            known = self._counts.get(target)
            if known is not None:
                known.added += deliveries
