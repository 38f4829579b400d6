"""procrastinate's connector, fetching with notifier's function on the asynchronous-commit pool."""

from __future__ import annotations

from typing import Any

import psycopg
from procrastinate import PsycopgConnector

from notifier.db import Pool
from notifier.queue import QueueError
from notifier.queue.jobs import FETCH_JOB_SQL, PROCRASTINATE_FETCH_JOB_SQL


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
        if query == PROCRASTINATE_FETCH_JOB_SQL:
            query = FETCH_JOB_SQL
        if self.fetch_pool is None or query != FETCH_JOB_SQL:
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
            except QueueError as exc:
                if attempt == 2 or not isinstance(exc.__cause__, psycopg.OperationalError):
                    raise
        raise AssertionError("unreachable")
