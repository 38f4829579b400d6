"""The retry policy of every notifier task, and the backoff it and the delivery share."""

from __future__ import annotations

import datetime
import random

from procrastinate import BaseRetryStrategy, RetryDecision
from procrastinate.jobs import Job


class RetryLater(Exception):
    """Raised by a task to have its job run again after ``delay_seconds``."""

    def __init__(self, reason: str, *, delay_seconds: float) -> None:
        super().__init__(reason)
        self.delay_seconds = delay_seconds


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random.

    ``attempt`` counts from 1. The fixed half keeps retries from coming back too soon;
    the random half spreads a burst of failures so they do not retry in lockstep.
    """
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto


class NotifierRetryStrategy(BaseRetryStrategy):
    """Retry policy for all notifier tasks.

    A task that knows when to come back raises :class:`RetryLater` and is retried exactly
    then, however often (the task itself counts and stops). Anything else is unexpected
    (database restart, a bug): retried with backoff until the job has run ``max_attempts``
    times, after which it is ``failed`` for admins to inspect and ``procrastinate shell retry``.
    """

    def __init__(self, *, max_attempts: int, base: float = 1.0, cap: float = 300.0) -> None:
        # procrastinate counts every run of a job, RetryLater ones included: ``max_attempts``
        # must leave room for a task's own retries plus a few unexpected failures.
        self.max_attempts = max_attempts
        self.base = base
        self.cap = cap

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        now = datetime.datetime.now(datetime.UTC)
        if isinstance(exception, RetryLater):
            return RetryDecision(retry_at=now + datetime.timedelta(seconds=exception.delay_seconds))
        if job.attempts + 1 >= self.max_attempts:
            return None
        delay = backoff_seconds(job.attempts + 1, base=self.base, cap=self.cap)
        return RetryDecision(retry_at=now + datetime.timedelta(seconds=delay))
