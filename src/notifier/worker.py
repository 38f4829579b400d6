"""Running a procrastinate worker with notifier's settings and services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterable, Iterator

import psycopg

from notifier import maintenance
from notifier.queue import ALL_QUEUES, QueueError
from notifier.queue import app as queue_app
from notifier.services import Services
from notifier.telemetry.logs import describe_error
from notifier.telemetry.tracing import job_tracing_middleware

logger = logging.getLogger("notifier.worker")

# Longest pause between attempts to get the database back after losing it.
RECONNECT_MAX_SECONDS = 2.0
# Errors that mean "the database went away", after which the worker starts over.
DATABASE_LOST = (QueueError, psycopg.Error)


def stalled_check_interval(stalled_worker_seconds: float) -> float:
    """How often each worker looks for jobs of dead workers.

    A fifth of the stalled timeout (each look is two index probes: the workers gone silent
    and their jobs): a killed worker's jobs run again at most 1.2 timeouts after its last
    heartbeat (6 s at the default 5 s), instead of waiting for the once-a-minute
    maintenance task.
    """
    return min(max(stalled_worker_seconds / 5, 0.5), 30.0)


async def run_worker(
    services: Services,
    *,
    queues: Iterable[str] = ALL_QUEUES,
    concurrency: int | None = None,
    wait: bool = True,
    install_signal_handlers: bool = True,
    name: str = "worker",
) -> None:
    """Process jobs until stopped (or, with ``wait=False``, until the queues are empty).

    With ``wait=True`` the worker outlives the database: when PostgreSQL goes away (restart,
    failover) the procrastinate worker stops, and this starts a new one as soon as the
    database answers again. Jobs the old one could not finish are recovered as stalled.
    SIGINT/SIGTERM (or cancelling this coroutine) stop it gracefully.
    """
    settings = services.settings
    concurrency = concurrency or settings.worker_concurrency
    # Each delivery in flight holds a connection (its row lock), plus LISTEN and bookkeeping.
    if concurrency + 2 > settings.database_pool_max_size:
        logger.warning(
            "worker concurrency %d needs a pool of at least %d connections, have %d",
            concurrency,
            concurrency + 2,
            settings.database_pool_max_size,
        )
    queue_list = list(queues)

    async def run_once() -> None:
        # Signals are handled here, not by procrastinate, so that a stop asked for is told
        # apart from a worker that stopped because the database went away.
        await queue_app.run_worker(
            services.queue,
            deps=services,
            queues=queue_list,
            concurrency=concurrency,
            wait=wait,
            name=name,
            poll_interval_seconds=settings.worker_poll_interval_seconds,
            listen_notify=settings.worker_listen_notify,
            shutdown_timeout_seconds=settings.worker_shutdown_timeout_seconds,
            stalled_worker_seconds=settings.stalled_worker_seconds,
            delete_succeeded_jobs=not settings.keep_succeeded_jobs,
            # Each job runs in a span continuing the trace stored on its event or notification.
            around_job=job_tracing_middleware(services.pool),
        )

    if not wait:
        await run_once()
        return

    current = asyncio.current_task()
    stop_requested = asyncio.Event()

    def request_stop() -> None:
        if not stop_requested.is_set() and current is not None:
            logger.info("stop requested; finishing the jobs in progress")
            stop_requested.set()
            current.cancel()

    recovery = asyncio.create_task(_recover_stalled_jobs(services), name="stalled-jobs")
    try:
        with _stop_on_signals(request_stop, install=install_signal_handlers):
            while True:
                try:
                    await run_once()
                except DATABASE_LOST as exc:
                    logger.warning("worker lost the database: %s", describe_error(exc))
                    if current is not None and current.cancelling() and not stop_requested.is_set():
                        # Cancelled from outside while the database was away: procrastinate's
                        # graceful stop then fails (its last writes) and raises that failure
                        # in place of the cancellation, which must not be lost.
                        raise asyncio.CancelledError from exc
                if stop_requested.is_set():
                    return
                # procrastinate stops on its own when a side task (heartbeat, LISTEN)
                # fails: that too means the database went away.
                await _wait_for_database(services)
                logger.info("database is back; restarting the worker")
    except asyncio.CancelledError:
        if stop_requested.is_set() and current is not None:
            current.uncancel()
            return  # our own graceful stop: procrastinate has finished its shutdown
        raise
    finally:
        recovery.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recovery


@contextlib.contextmanager
def _stop_on_signals(callback: Callable[[], None], *, install: bool) -> Iterator[None]:
    if not install:
        yield
        return
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, callback)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _wait_for_database(services: Services) -> None:
    """Return once a connection from the pool answers, polling with a short, capped backoff."""
    delay = 0.5
    while True:
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_SECONDS)
        try:
            async with services.pool.connection() as conn:
                await conn.execute("SELECT 1")
        except psycopg.Error as exc:
            logger.info("database still unavailable: %s", exc)
        else:
            return


async def _recover_stalled_jobs(services: Services) -> None:
    """Requeue jobs of dead workers every few seconds, for as long as this worker runs."""
    interval = stalled_check_interval(services.settings.stalled_worker_seconds)
    while True:
        await asyncio.sleep(interval)
        try:
            requeued = await maintenance.requeue_stalled_jobs(services)
        except DATABASE_LOST as exc:
            logger.warning("could not look for stalled jobs: %s", describe_error(exc))
        else:
            if requeued:
                logger.warning("requeued %d jobs of dead workers", requeued)
