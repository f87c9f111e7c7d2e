"""The queue gauge behind POST /records' 429: it counts rarely, and never refuses on an old count."""

from __future__ import annotations

from ims_fhir_service.backpressure import RECOUNT_SECONDS, QueueGauge


class Queue:
    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.counts: list[int] = []

    def count(self, at_most: int) -> int:
        self.counts.append(at_most)
        return min(self.depth, at_most)


def test_a_fresh_count_under_the_limit_is_trusted_and_a_count_stops_past_the_limit() -> None:
    now = [100.0]
    gauge, queue = QueueGauge(clock=lambda: now[0]), Queue(depth=3)
    assert gauge.over("h", 10, queue.count) is None
    gauge.added("h", 2)
    assert gauge.over("h", 10, queue.count) is None  # 3 + 2 queued here since: under 10, no count
    assert queue.counts == [11]  # one count, stopping at limit + 1
    now[0] += RECOUNT_SECONDS
    queue.depth = 50_000
    assert gauge.over("h", 10, queue.count) == 11  # an old count is counted again
    assert queue.counts == [11, 11]


def test_what_this_process_queued_since_makes_it_count_again_before_the_limit_is_passed() -> None:
    now = [0.0]
    gauge, queue = QueueGauge(clock=lambda: now[0]), Queue(depth=8)
    assert gauge.over("h", 10, queue.count) is None
    gauge.added("h", 3)  # 8 + 3 could be past 10: the next request counts
    queue.depth = 9  # a worker sent two meanwhile
    assert gauge.over("h", 10, queue.count) is None and len(queue.counts) == 2
    gauge.added("h", 2)
    queue.depth = 11
    assert gauge.over("h", 10, queue.count) == 11  # refused on a count, never on the estimate
    assert gauge.over("other", 10, queue.count) == 11 and len(queue.counts) == 4  # each target its own count
