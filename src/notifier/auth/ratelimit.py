"""Per-key request rate limits: GCRA (a token bucket kept as one timestamp per key).

The state lives in the API process. A shared store would mean PostgreSQL (the only one
notifier uses) and a write on every request, which would cost more ingest throughput than
the limit protects: so the limit is per API process, and N processes let a key through N
times the configured rate. It is a guard against runaway clients, not a billing meter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# Entries whose bucket is full again are dropped past this many keys.
MAX_TRACKED_KEYS = 10_000


class RateLimiter:
    """Allows ``rate`` requests per second per key on average, bursts of up to ``burst``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # key -> theoretical arrival time: when the key's bucket would be full again.
        self._tat: dict[str, float] = {}

    def acquire(self, key: str, rate: float, burst: int) -> float | None:
        """Take one request for ``key``; None if allowed, else seconds until it would be."""
        now = self._clock()
        interval = 1.0 / rate
        tat = max(self._tat.get(key, now), now)
        allowed_from = tat + interval - burst * interval
        if now < allowed_from:
            return allowed_from - now
        self._tat[key] = tat + interval
        if len(self._tat) > MAX_TRACKED_KEYS:
            self._forget_idle(now)
        return None

    def __len__(self) -> int:
        """How many keys' state is held."""
        return len(self._tat)

    def _forget_idle(self, now: float) -> None:
        """Drop keys whose bucket is full: forgetting them changes nothing."""
        self._tat = {key: tat for key, tat in self._tat.items() if tat > now}


def retry_after_header(wait_seconds: float) -> str:
    """``Retry-After`` in whole seconds, never 0 (a client would retry at once)."""
    return str(max(1, math.ceil(wait_seconds)))
