"""procrastinate's connector, fetching with notifier's function on the asynchronous-commit pool."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from procrastinate import PsycopgConnector
from procrastinate.sql import queries as procrastinate_queries

from notifier.db import Pool
from notifier.queue import QueueError
from notifier.queue.jobs import FETCH_JOB_SQL, NEXT_DUE_SQL, PROCRASTINATE_FETCH_JOB_SQL

logger = logging.getLogger("notifier.queue")

# The writes that end a run of a job: finished (succeeded, failed, aborted) or handed back
# for a retry. Lost to a dead connection, they would leave the job `doing` under a worker
# that lives on, which no dead-worker recovery ever picks up.
JOB_OUTCOME_WRITES = frozenset(
    {procrastinate_queries["finish_job"], procrastinate_queries["retry_job"]}
)
HEARTBEAT_SQL = procrastinate_queries["update_heartbeat"]
# How long an outcome write is tried again on fresh connections. Shorter than any sensible
# stalled-worker timeout would not matter: while it is retried the worker still holds the
# job (and heartbeats), so nothing else re-runs it; a worker that loses the database for
# longer stops, and its jobs are recovered as a dead worker's.
OUTCOME_WRITE_RETRY_SECONDS = 60.0
# Pause between two tries of an outcome write, doubling up to the cap.
OUTCOME_WRITE_FIRST_PAUSE_SECONDS = 0.1
OUTCOME_WRITE_MAX_PAUSE_SECONDS = 2.0


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
        # Per worker (by id) whose last fetch found nothing: when (time.monotonic()) the
        # next of its waiting jobs falls due, if one is known to.
        self._next_due: dict[int | None, float] = {}
        # Per worker: when (time.monotonic()) its last fetch began.
        self._fetch_started: dict[int | None, float] = {}

    def seconds_until_next_due(self, worker_id: int | None) -> float | None:
        """How long until the next job of ``worker_id``'s queues falls due, as its last
        fetch (which found nothing) saw; None when no waiting job is known to (or its last
        fetch found a job)."""
        due = self._next_due.get(worker_id)
        return None if due is None else max(0.0, due - time.monotonic())

    def began_fetching_before(self, worker_id: int | None, instant: float) -> bool:
        """Whether the last fetch of ``worker_id`` began before ``instant``
        (time.monotonic()), so that it may not have seen what was committed then."""
        started = self._fetch_started.get(worker_id)
        return started is not None and started <= instant

    async def execute_query_async(self, query: Any, **arguments: Any) -> None:
        """Run ``query``; a job's outcome write (finish, retry) lost to a broken connection
        is tried again on fresh ones until it lands (or for OUTCOME_WRITE_RETRY_SECONDS).

        The pool discards a connection that failed, so each try gets a new one. A try
        after one whose answer was lost may find the job no longer running (the first
        committed after all): procrastinate's function raises, and the write is done.
        """
        if query == HEARTBEAT_SQL and self.fetch_pool is not None:
            # On the fetch connection: a heartbeat must not wait for a connection behind
            # deliveries holding the shared pool's (a live worker would look dead), and
            # it needs no durable commit.
            await self._on_fetch_connection(self.fetch_pool, self._heartbeat, arguments)
            return
        if query not in JOB_OUTCOME_WRITES:
            await super().execute_query_async(query, **arguments)
            return
        give_up_at = time.monotonic() + OUTCOME_WRITE_RETRY_SECONDS
        pause = OUTCOME_WRITE_FIRST_PAUSE_SECONDS
        lost_once = False
        while True:
            try:
                await super().execute_query_async(query, **arguments)
            except QueueError as exc:
                cause = exc.__cause__
                if lost_once and isinstance(cause, psycopg.errors.RaiseException):
                    logger.info(
                        "job %s: its outcome was written before the connection broke",
                        arguments.get("job_id"),
                    )
                    return
                if not _connection_lost(cause) or time.monotonic() + pause > give_up_at:
                    raise
                logger.warning(
                    "job %s: writing its outcome failed (%s); trying again on a new connection",
                    arguments.get("job_id"),
                    cause,
                )
                lost_once = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, OUTCOME_WRITE_MAX_PAUSE_SECONDS)
            else:
                if lost_once:
                    logger.info(
                        "job %s: outcome written on a new connection", arguments.get("job_id")
                    )
                return

    async def execute_query_one_async(self, query: Any, **arguments: Any) -> dict[str, Any]:
        """Run ``query``; a job fetch runs notifier's fetch function, on ``fetch_pool``."""
        if query == PROCRASTINATE_FETCH_JOB_SQL:
            query = FETCH_JOB_SQL
        if query != FETCH_JOB_SQL:
            result: dict[str, Any] = await super().execute_query_one_async(query, **arguments)
            return result
        if self.fetch_pool is None:
            async with self.pool.connection() as conn:
                return await self._fetch(conn, arguments)
        return await self._on_fetch_connection(self.fetch_pool, self._fetch, arguments)

    async def _fetch(self, conn: Any, arguments: dict[str, Any]) -> dict[str, Any]:
        """Fetch a job; when there is none, note when the next one falls due, which the
        worker waits for if it comes before its next poll (``notifier.queue.app``): a
        scheduled job wakes no listening worker, and a burst due at one instant would
        otherwise wait for up to a poll interval to start."""
        worker_id = arguments.get("worker_id")
        _remember(self._fetch_started, worker_id, time.monotonic())
        fetched: dict[str, Any] = await self.execute_query_one_async_with_connection(
            conn, FETCH_JOB_SQL, **arguments
        )
        due_arrivals = fetched.pop("due_arrivals")
        if fetched["id"] is not None:
            self._next_due.pop(worker_id, None)
            return fetched
        if due_arrivals:
            # Another fetch was moving new jobs into their group and may not have
            # committed when this one looked (FETCH_JOB_SQL): look again at once.
            _remember(self._next_due, worker_id, time.monotonic())
            return fetched
        earliest = await self.execute_query_one_async_with_connection(
            conn, NEXT_DUE_SQL, queues=arguments.get("queues")
        )
        seconds = earliest["seconds"]
        if seconds is None:
            self._next_due.pop(worker_id, None)
        else:
            _remember(self._next_due, worker_id, time.monotonic() + seconds)
        return fetched

    async def _heartbeat(self, conn: Any, arguments: dict[str, Any]) -> dict[str, Any]:
        beat: dict[str, Any] = await self.execute_query_one_async_with_connection(
            conn, HEARTBEAT_SQL, **arguments
        )
        return beat

    async def _on_fetch_connection(
        self,
        fetch_pool: Pool,
        run: Callable[[Any, dict[str, Any]], Awaitable[dict[str, Any]]],
        arguments: dict[str, Any],
    ) -> dict[str, Any]:
        """``run`` on the fetch connection, tried once more on a new one if broken.

        The fetch connection is not checked before each use (one more round trip per job,
        on the path that bounds a worker); one found broken, after a database restart for
        example, is discarded by the pool and the query tried once more on a new one.
        """
        for attempt in (1, 2):
            try:
                async with fetch_pool.connection() as conn:
                    return await run(conn, arguments)
            except QueueError as exc:
                if attempt == 2 or not _connection_lost(exc.__cause__):
                    raise
        raise AssertionError("unreachable")


def _connection_lost(error: BaseException | None) -> bool:
    """Whether ``error`` means the connection (or the database) went away, rather than the
    statement being refused: a terminated backend, a restart, a pool that found no
    connection in time (psycopg_pool's ``PoolTimeout`` is one)."""
    return isinstance(error, psycopg.OperationalError)


# Workers whose fetches a connector remembers. A process runs one worker (tests, a few);
# one started again after an outage registers under a new id, so without a bound every
# restart would leave its entries behind for the life of the process.
WORKERS_REMEMBERED = 16


def _remember(table: dict[int | None, float], worker_id: int | None, value: float) -> None:
    """Set ``table[worker_id]``, forgetting the workers least recently set beyond
    :data:`WORKERS_REMEMBERED`."""
    table.pop(worker_id, None)
    table[worker_id] = value
    while len(table) > WORKERS_REMEMBERED:
        del table[next(iter(table))]
