"""The delivery's decisions, as functions of what they are given: no database, no network,
no clock of their own.

:mod:`notifier.notifications.delivery` reads the rows, sends, and writes back what these
functions decide: whether a reminder is still in time, what an attempt comes to (sent,
retried when, failed, or dead-lettered after the last attempt), when a retry may go given
the recipient's quiet hours, and what becomes of the jobs a batch took along.
"""

from __future__ import annotations

import datetime

import msgspec

from notifier.channels.base import DeliveryError, DeliveryReceipt
from notifier.notifications.localtime import QuietHours, leave_quiet_hours, zone_named
from notifier.notifications.schemas import AttemptOutcome, NotificationStatus
from notifier.queue.retry import backoff_seconds
from notifier.settings import Settings


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How often, and how far apart, a notification is tried."""

    max_attempts: int
    base_seconds: float
    max_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """``NOTIFIER_DELIVERY_MAX_ATTEMPTS``, ``NOTIFIER_RETRY_BASE_SECONDS`` and
        ``NOTIFIER_RETRY_MAX_SECONDS``."""
        return cls(
            max_attempts=settings.delivery_max_attempts,
            base_seconds=settings.retry_base_seconds,
            max_seconds=settings.retry_max_seconds,
        )


class QuietWindow(msgspec.Struct, frozen=True):
    """A recipient's quiet hours, read on the clock of its zone (None: UTC)."""

    quiet_hours: QuietHours | None
    timezone: str | None = None


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """What one delivery attempt came to, and what follows from it."""

    outcome: AttemptOutcome
    # The notification's new status: sent, failed or dead; None while it is retried.
    status: NotificationStatus | None
    error: str | None = None
    # The receiver's HTTP status, when it answered.
    status_code: int | None = None
    # When the outcome is a retry: in how many seconds.
    retry_in_seconds: float | None = None

    @property
    def counted_as(self) -> str:
        """The attempt's label in ``notifier_deliveries_total``: the outcome, except that a
        notification whose last attempt failed counts as ``dead``."""
        if self.status is NotificationStatus.DEAD:
            return NotificationStatus.DEAD.value
        return self.outcome.value


def too_late(
    target_date: datetime.datetime | None, lead_time: datetime.timedelta, now: datetime.datetime
) -> bool:
    """Whether a reminder ahead of its target date can no longer be sent in time (it
    expires instead).

    One due at the target date itself (lead time zero) runs at or after that date by
    design, so the date passing cannot make it late.
    """
    return target_date is not None and lead_time > datetime.timedelta(0) and target_date <= now


def retry_delay(policy: RetryPolicy, attempt: int, retry_after: float | None) -> float:
    """Backoff after ``attempt`` (with jitter), never sooner than the receiver's
    ``Retry-After``, never later than the policy's cap."""
    delay = backoff_seconds(attempt, base=policy.base_seconds, cap=policy.max_seconds)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, policy.max_seconds)


def outside_quiet_hours(delay_seconds: float, window: QuietWindow, now: datetime.datetime) -> float:
    """``delay_seconds`` from ``now``, stretched so that the send lands outside the
    recipient's quiet hours.

    Quiet hours apply to every send, not only the first: a retry due at 03:00 waits for the
    window's end like the planned send did.
    """
    if window.quiet_hours is None:
        return delay_seconds
    zone = zone_named(window.timezone or "UTC")
    due = now + datetime.timedelta(seconds=delay_seconds)
    return (leave_quiet_hours(due, zone, window.quiet_hours) - now).total_seconds()


def judge_attempt(
    result: DeliveryReceipt | DeliveryError | str,
    *,
    attempt: int,
    policy: RetryPolicy,
    window: QuietWindow,
    now: datetime.datetime,
) -> Verdict:
    """What attempt number ``attempt`` came to, given the channel's ``result``: its receipt,
    its error, or why the message could not be sent at all (a string).

    An unsendable message and a permanent error fail the notification; a retryable error
    is retried after a backoff that respects ``Retry-After`` and quiet hours, unless it was
    the last attempt the policy allows: then the notification is dead (replayable).
    """
    if isinstance(result, str):
        return Verdict(
            outcome=AttemptOutcome.FAILED, status=NotificationStatus.FAILED, error=result
        )
    if isinstance(result, DeliveryReceipt):
        return Verdict(
            outcome=AttemptOutcome.DELIVERED,
            status=NotificationStatus.SENT,
            status_code=result.status_code,
        )
    error, status_code = str(result), result.status_code
    if not result.retryable:
        status = NotificationStatus.FAILED
    elif attempt >= policy.max_attempts:
        status = NotificationStatus.DEAD
    else:
        delay = retry_delay(policy, attempt, result.retry_after_seconds)
        return Verdict(
            outcome=AttemptOutcome.RETRY,
            status=None,
            error=error,
            status_code=status_code,
            retry_in_seconds=outside_quiet_hours(delay, window, now),
        )
    return Verdict(
        outcome=AttemptOutcome.FAILED, status=status, error=error, status_code=status_code
    )


class JobSettlement(msgspec.Struct, frozen=True):
    """What becomes of the jobs a batch took along: those that end ``succeeded``, and those
    due again at a time (their notification is retried)."""

    finished: list[int]
    due_again: dict[int, datetime.datetime]


def settle_jobs_taken_along(
    taken_along: list[int],
    attempted: dict[int, Verdict | None],
    now: datetime.datetime,
) -> JobSettlement:
    """Settle the jobs of the notifications a batch took along (``taken_along``), given the
    verdict of each one attempted, by job (None: it waited for a host slot and its job was
    put off already).

    A job whose notification is retried becomes due again after its backoff, as a job of
    its own would have; every other job is done, those of notifications that were not
    attempted at all (expired, suppressed) included.
    """
    due_again = {
        job_id: now + datetime.timedelta(seconds=verdict.retry_in_seconds)
        for job_id, verdict in attempted.items()
        if verdict is not None and verdict.retry_in_seconds is not None
    }
    waited = {job_id for job_id, verdict in attempted.items() if verdict is None}
    finished = [
        job_id for job_id in taken_along if job_id not in due_again and job_id not in waited
    ]
    return JobSettlement(finished, due_again)
