"""Retry policy of the FHIR client: which failures are retried, how long to wait, when to stop.

Terms
-----
attempt
    One HTTP request sent (or tried) on the wire. The first request is attempt 1.
retryable failure
    A connection error, a connect or read timeout, or one of the statuses in
    :attr:`RetryPolicy.retry_statuses` (408, 429, 500, 502, 503, 504 by default).
    Every other 4xx is final at once: sending the same request again cannot help.
idempotent request
    A request that may be sent twice without changing the outcome: GET, PUT, DELETE,
    a conditional create (``If-None-Exist``) and, when the policy says so, a
    transaction whose entries are conditional creates or PUTs to deterministic ids
    (:attr:`RetryPolicy.retry_transactions`). A non-idempotent request (a plain
    create) is retried only when the failure proves the server never saw it: the
    connection could not be opened, or the server answered 429 (rate limited).
full jitter
    The wait before retry *n* is a uniform random time in ``[0, min(cap, base * 2**(n-1))]``
    (the "full jitter" backoff of the AWS architecture blog), so that many clients
    failing together do not retry together.
Retry-After
    A 429/503 (or any retryable status) may say when to come back, in seconds or as
    an HTTP-date; that wait replaces the backoff.
budget
    Two bounds hold together: at most :attr:`RetryPolicy.max_attempts` attempts, and no
    waiting past :attr:`RetryPolicy.total_budget` seconds after the first attempt began.
    A wait (backoff or Retry-After) is cut to what remains of the budget, and the attempt
    after a cut wait is the last one: no wait ever ends past the budget, and a server
    asking for ``Retry-After: 3600`` gets one more try when the budget runs out, not an
    hour of waiting. An attempt in flight runs to its own timeout, so the whole call
    ends within ``total_budget`` plus one request's duration.
clock
    :class:`Clock` bundles ``sleep``, a monotonic clock, the wall clock (for HTTP-dates)
    and the random source, so tests can run the policy instantly and deterministically.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from ims_fhir.errors import UsageError

#: Statuses worth another try: the server (or a proxy) was busy, down or timed out.
DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How the client retries. All times are in seconds.

    ``retry_transactions`` is the explicit statement that a transaction POST may be sent
    again after a timeout or a 5xx: true for ims-fhir because every entry it puts in a
    transaction is a conditional create or a PUT on a deterministic id, so a second
    delivery changes nothing. Set it to false for transactions that contain plain
    creates; a single call can also override it (``FhirClient.transaction(..., idempotent=...)``).
    """

    max_attempts: int = 5
    total_budget: float = 120.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    retry_statuses: frozenset[int] = field(default=DEFAULT_RETRY_STATUSES)
    retry_transactions: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UsageError(f"retry max_attempts must be at least 1, got {self.max_attempts}")
        if not (self.total_budget > 0 and math.isfinite(self.total_budget)):
            raise UsageError(f"retry total_budget must be a positive number of seconds, got {self.total_budget}")
        if self.backoff_base < 0 or self.backoff_cap < 0:
            raise UsageError("retry backoff_base and backoff_cap must not be negative")
        bad = sorted(s for s in self.retry_statuses if not (s in (408, 429) or 500 <= s <= 599))
        if bad:
            # Retrying other 4xx would resend a request the server has already refused.
            raise UsageError(f"only 408, 429 and 5xx may be retried, not {bad}")

    @classmethod
    def no_retries(cls) -> RetryPolicy:
        """A policy that sends every request exactly once (useful for probes and tests)."""
        return cls(max_attempts=1)

    def backoff(self, attempt: int, *, rng: Callable[[], float]) -> float:
        """The full-jitter wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt - 1, 60))
        return rng() * ceiling


@dataclass(frozen=True, slots=True)
class Clock:
    """The time functions the retry loop and token cache use; inject fakes in tests.

    ``monotonic`` measures budgets and token lifetimes, ``now`` (seconds since the epoch)
    turns an HTTP-date ``Retry-After`` into a wait, ``random`` returns a float in [0, 1).
    """

    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    now: Callable[[], float] = time.time
    random: Callable[[], float] = random.random


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header, or None if absent or unreadable.

    Accepts delta-seconds (``"120"``) and an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``);
    a date in the past means "now" (0). ``now`` is the wall clock in seconds since the epoch.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means the zone was missing
        return None
    return max(0.0, when.timestamp() - now)


__all__ = ["DEFAULT_RETRY_STATUSES", "Clock", "RetryPolicy", "parse_retry_after"]
