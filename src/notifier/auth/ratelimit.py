"""Per-key request rate limits: the GCRA of :mod:`notifier.rate_limits.gcra`, one
theoretical arrival time per key.

The state lives in the API process. A shared store would mean PostgreSQL (the only one
notifier uses) and a write on every request, which would cost more ingest throughput than
the limit protects: so the limit is per API process, and N processes let a key through N
times the configured rate. It is a guard against runaway clients, not a billing meter.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable

from notifier.rate_limits.gcra import Bucket, Limit, decide

# Entries whose bucket is full again are dropped past this many keys.
MAX_TRACKED_KEYS = 10_000
# The clock counts seconds from an arbitrary start (monotonic): instants from this one.
_CLOCK_START = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


class RateLimiter:
    """Allows ``rate`` requests per second per key on average, bursts of up to ``burst``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # key -> theoretical arrival time: when the key's bucket would be full again.
        self._tat: dict[str, datetime.datetime] = {}

    def acquire(self, key: str, rate: float, burst: int) -> float | None:
        """Take one request for ``key``; None if allowed, else seconds until it would be."""
        now = _CLOCK_START + datetime.timedelta(seconds=self._clock())
        tat = self._tat.get(key, now)
        # A refused request is not queued (unlike a delivery): each is told the first time
        # one would conform, so the bucket's queue starts afresh at every call.
        decision = decide(now, Bucket(tat=tat, queue_tat=now), Limit(rate, burst))
        if not decision.allowed:
            return decision.wait_seconds
        self._tat[key] = decision.bucket.tat
        if len(self._tat) > MAX_TRACKED_KEYS:
            self._forget_idle(now)
        return None

    def __len__(self) -> int:
        """How many keys' state is held."""
        return len(self._tat)

    def _forget_idle(self, now: datetime.datetime) -> None:
        """Drop keys whose bucket is full: forgetting them changes nothing."""
        self._tat = {key: tat for key, tat in self._tat.items() if tat > now}


def retry_after_header(wait_seconds: float) -> str:
    """``Retry-After`` in whole seconds, never 0 (a client would retry at once)."""
    return str(max(1, math.ceil(wait_seconds)))
