"""The rate-limit decision: GCRA (the generic cell rate algorithm), as a pure function.

One timestamp per bucket, the *theoretical arrival time* (``tat``) of the next send, is all
the state: a send at ``now`` conforms if ``tat - now`` is within the burst tolerance, and then
pushes ``tat`` one emission interval (``1 / per_second``) further. In any window of ``w``
seconds at most ``ceil(w * per_second) + burst - 1`` sends conform, however many workers ask.

A send that does not conform gets a retry time. A second timestamp, ``queue_tat``, hands
those out one interval apart, so a backlog of waiting jobs comes back spread at the rate the
bucket lets through, rather than all at once at the next free slot.
"""

from __future__ import annotations

import datetime

import msgspec

# The limits every rate limit in notifier lies within (tenants' own, the NOTIFIER_RATE_LIMIT_*
# defaults, API keys'), so that its arithmetic holds for any state: at the slowest rate, one
# send every 1,000 s (about 17 minutes), the largest burst tolerance is 1,000 s x 999,999,
# about 32 years. An interval finer than a microsecond (datetime's resolution) would round
# to none at all. Before these bounds, a limit of 1e-300 per second made every delivery of
# the tenant's channel fail with OverflowError.
MIN_PER_SECOND = 0.001
MAX_PER_SECOND = 1_000_000.0
MAX_BURST = 1_000_000
# A backlog is handed slots one interval apart without end; past this horizon every one gets
# the horizon itself (and is spaced again when it comes back), so that a retry time is always
# a date Python and PostgreSQL can hold, however many notifications wait.
MAX_WAIT = datetime.timedelta(days=100 * 365)


def check_limit(per_second: float, burst: int) -> str | None:
    """What is wrong with a limit of ``per_second`` and ``burst``, if anything."""
    if not MIN_PER_SECOND <= per_second <= MAX_PER_SECOND:
        return f"per second must be between {MIN_PER_SECOND} and {MAX_PER_SECOND:.0f}"
    if not 1 <= burst <= MAX_BURST:
        return f"burst must be between 1 and {MAX_BURST}"
    return None


class Limit(msgspec.Struct, frozen=True):
    """``per_second`` sends, of which ``burst`` may go back to back (within the bounds above:
    a Limit outside them cannot be made)."""

    per_second: float
    burst: int = 1

    def __post_init__(self) -> None:
        if problem := check_limit(self.per_second, self.burst):
            raise ValueError(problem)

    @property
    def interval(self) -> datetime.timedelta:
        """Time between two sends at the sustained rate."""
        return datetime.timedelta(seconds=1 / self.per_second)

    @property
    def tolerance(self) -> datetime.timedelta:
        """How far ahead of the sustained rate a burst may run."""
        return self.interval * (self.burst - 1)


class Bucket(msgspec.Struct, frozen=True):
    """The shared state of one tenant's channel."""

    tat: datetime.datetime
    queue_tat: datetime.datetime


class Decision(msgspec.Struct, frozen=True):
    """Whether to send now; if not, how long to wait. ``bucket`` is the state to store."""

    wait_seconds: float
    bucket: Bucket

    @property
    def allowed(self) -> bool:
        """Whether the send may go now."""
        return self.wait_seconds == 0


def decide(now: datetime.datetime, bucket: Bucket, limit: Limit) -> Decision:
    """Take a send slot at ``now`` if one is free, else hand out a retry time."""
    tat = max(bucket.tat, now)
    if tat - now <= limit.tolerance:
        return Decision(0.0, Bucket(tat + limit.interval, bucket.queue_tat))
    slot = min(max(bucket.queue_tat, tat - limit.tolerance, now), now + MAX_WAIT)
    # tat - tolerance > now here, so the wait is positive.
    return Decision((slot - now).total_seconds(), Bucket(bucket.tat, slot + limit.interval))
