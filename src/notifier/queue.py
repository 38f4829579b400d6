"""Names and policies of the procrastinate queue that every feature shares."""

from __future__ import annotations

import datetime
import random
from typing import Any

import psycopg
from procrastinate import BaseRetryStrategy, PsycopgConnector, RetryDecision
from procrastinate.exceptions import ConnectorException
from procrastinate.jobs import Job
from procrastinate.sql import queries as procrastinate_queries

from notifier.db import Pool

EVENTS_QUEUE = "events"
DELIVERIES_QUEUE = "deliveries"
MAINTENANCE_QUEUE = "maintenance"
ALL_QUEUES = (EVENTS_QUEUE, DELIVERIES_QUEUE, MAINTENANCE_QUEUE)

# Explicit task names: the SQL outbox trigger and admins' `procrastinate shell` refer to them.
PROCESS_EVENT_TASK = "notifier.process_event"
DELIVER_TASK = "notifier.deliver"
MAINTENANCE_TASK = "notifier.maintenance"


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


FETCH_JOB_QUERY = procrastinate_queries["fetch_job"]
# The same columns from notifier's own fetch function (migration 0009), whose cost does not
# grow with the number of jobs scheduled for later.
NOTIFIER_FETCH_JOB_QUERY = """
SELECT id, status, task_name, priority, lock, queueing_lock, args, scheduled_at, queue_name,
       attempts, worker_id
FROM notifier.fetch_job(%(queues)s::varchar[], %(worker_id)s)
"""


class QueueConnector(PsycopgConnector):
    """procrastinate's connector, fetching jobs with ``notifier.fetch_job``, on
    ``fetch_pool`` when one is set.

    A worker fetches one job after the other, each fetch its own commit; on a durable
    connection every fetch waits for a WAL flush, which bounds a worker to about one job
    per flush. Fetching on a connection with asynchronous commit removes that wait. Every
    other query (finishing a job, retries, heartbeats, defers outside a transaction) stays
    on the shared, durable pool; defers inside a business transaction use its connection.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fetch_pool: Pool | None = None

    async def execute_query_one_async(self, query: Any, **arguments: Any) -> dict[str, Any]:
        """Run ``query``; a job fetch runs notifier's fetch function, on ``fetch_pool``."""
        if query == FETCH_JOB_QUERY:
            query = NOTIFIER_FETCH_JOB_QUERY
        if self.fetch_pool is None or query != NOTIFIER_FETCH_JOB_QUERY:
            result: dict[str, Any] = await super().execute_query_one_async(query, **arguments)
            return result
        # The fetch connection is not checked before each use (one more round trip per job,
        # on the path that bounds a worker); one found broken, after a database restart for
        # example, is discarded by the pool and the fetch tried once more on a new one.
        for attempt in (1, 2):
            try:
                async with self.fetch_pool.connection() as conn:
                    fetched: dict[str, Any] = await self.execute_query_one_async_with_connection(
                        conn, query, **arguments
                    )
                    return fetched
            except ConnectorException as exc:
                if attempt == 2 or not isinstance(exc.__cause__, psycopg.OperationalError):
                    raise
        raise AssertionError("unreachable")
