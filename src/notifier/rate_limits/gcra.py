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


class Limit(msgspec.Struct, frozen=True):
    """``per_second`` sends, of which ``burst`` may go back to back."""

    per_second: float
    burst: int = 1

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
    slot = max(bucket.queue_tat, tat - limit.tolerance, now)
    # tat - tolerance > now here, so the wait is positive.
    return Decision((slot - now).total_seconds(), Bucket(bucket.tat, slot + limit.interval))
