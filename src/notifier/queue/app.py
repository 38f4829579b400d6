"""The procrastinate app: tasks registered from plain functions, and running a worker.

A notifier task is a plain ``async def task(deps, job: JobInfo, **args) -> None``: ``deps``
is what the worker was started with (the process's services), ``job`` what the task may
know of its job, and ``args`` the job's arguments. Tasks never see procrastinate's
``JobContext``, so that features import nothing of procrastinate and a task can be called
directly (by a test, or a command that runs it inline) with a :class:`JobInfo` made up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import procrastinate
import procrastinate.worker
import psycopg
from procrastinate.app import WorkerOptions

from notifier.db import Pool, transaction
from notifier.queue import TASK_QUEUES, JobInfo, jobs
from notifier.queue.connector import QueueConnector
from notifier.queue.retry import NotifierRetryStrategy

QueueApp: TypeAlias = procrastinate.App

logger = logging.getLogger("notifier.queue")

# What a task function is: ``async def task(deps, job: JobInfo, **args) -> None``.
TaskFunction: TypeAlias = Callable[..., Awaitable[None]]
# Wraps every job a worker runs: ``await around_job(job, run)`` must await ``run()`` and
# return what it returns (tracing starts each job's span here).
AroundJob: TypeAlias = Callable[[JobInfo, Callable[[], Awaitable[Any]]], Awaitable[Any]]

# Where a worker keeps the ``deps`` its tasks receive, in procrastinate's job context.
_DEPS_KEY = "notifier.deps"
# A worker waiting for the next job to fall due wakes this much after it: a timer may fire
# a hair early (asyncio rounds to its clock's resolution), and a fetch a moment too soon
# finds nothing and waits again.
DUE_WAKE_MARGIN_SECONDS = 0.002


@dataclass(frozen=True, slots=True)
class Task:
    """A task to register: its name, function and retry policy.

    ``max_attempts``: runs of a job after which an unexpected error leaves it ``failed``
    (:class:`~notifier.queue.retry.NotifierRetryStrategy`); None: such a job is never
    retried. ``cron``: deferred periodically, once per period across all workers
    (procrastinate's periodic defer lock, named by ``periodic_id``: keep it across
    releases); the job gets a ``timestamp`` argument. ``queue`` None: the task's own
    (``TASK_QUEUES``).
    """

    name: str
    run: TaskFunction
    max_attempts: int | None = None
    cron: str | None = None
    periodic_id: str = ""
    queue: str | None = None


def create_app(conninfo: str, connect_kwargs: dict[str, Any], tasks: Sequence[Task]) -> QueueApp:
    """notifier's procrastinate app with ``tasks`` registered. Connects nothing yet.

    Its connector's own pool (``conninfo``, ``connect_kwargs``) is used only where
    procrastinate opens one, its CLI; everywhere else :func:`open_app` hands it the
    process's pool.
    """
    app = procrastinate.App(connector=QueueConnector(conninfo=conninfo, kwargs=connect_kwargs))
    _register(app, tasks)
    return app


def create_stock_app(conninfo: str, tasks: Sequence[Task]) -> QueueApp:
    """procrastinate as it ships (its connector, its fetch, durable commits), with ``tasks``:
    the bench measures the queue's own ceiling with it."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))
    _register(app, tasks)
    return app


def _register(app: QueueApp, tasks: Sequence[Task]) -> None:
    for task in tasks:
        retry = (
            NotifierRetryStrategy(max_attempts=task.max_attempts)
            if task.max_attempts is not None
            else False
        )
        registered = app.task(
            name=task.name,
            queue=task.queue or TASK_QUEUES[task.name],
            pass_context=True,
            retry=retry,
        )(_run_with_deps(task.run))
        if task.cron is not None:
            app.periodic(cron=task.cron, periodic_id=task.periodic_id)(registered)


def _run_with_deps(run: TaskFunction) -> Callable[..., Awaitable[None]]:
    """procrastinate's view of ``run``: given the job context, it hands ``run`` the
    worker's deps and the job."""

    async def run_job(context: procrastinate.JobContext, **args: Any) -> None:
        if _DEPS_KEY not in context.additional_context:
            raise RuntimeError(
                "notifier tasks must run in a worker started by `notifier worker` or `notifier dev`"
            )
        await run(context.additional_context[_DEPS_KEY], job_info(context.job), **args)

    run_job.__name__ = run.__name__
    run_job.__qualname__ = run.__qualname__
    run_job.__doc__ = run.__doc__
    return run_job


def job_info(job: procrastinate.jobs.Job) -> JobInfo:
    """What a task is told of procrastinate's ``job`` (fetched, so it has an id)."""
    assert job.id is not None, "a job a worker runs was fetched from the database"
    return JobInfo(
        id=job.id,
        task_name=job.task_name,
        queue=job.queue,
        priority=job.priority,
        attempts=job.attempts,
        args=job.task_kwargs,
        scheduled_at=job.scheduled_at,
    )


@asynccontextmanager
async def open_app(
    app: QueueApp, pool: Pool | None = None, *, fetch_pool: Pool | None = None
) -> AsyncIterator[QueueApp]:
    """``app`` open on the process's ``pool`` (None: a pool of its own), fetching jobs on
    ``fetch_pool`` (the asynchronous-commit one) when given."""
    if fetch_pool is not None:
        assert isinstance(app.connector, QueueConnector), "only notifier's connector fetches there"
        app.connector.fetch_pool = fetch_pool
    async with app.open_async(pool):
        yield app


async def run_worker(
    app: QueueApp,
    *,
    deps: object,
    queues: Iterable[str],
    concurrency: int,
    wait: bool = True,
    name: str | None = None,
    poll_interval_seconds: float | None = None,
    listen_notify: bool | None = None,
    shutdown_timeout_seconds: float | None = None,
    stalled_worker_seconds: float | None = None,
    around_job: AroundJob | None = None,
    delete_succeeded_jobs: bool = False,
) -> None:
    """Run a procrastinate worker on ``queues`` until it stops (with ``wait=False``: until
    they are empty), its tasks given ``deps``; options left None keep procrastinate's
    defaults. ``delete_succeeded_jobs``: a job that succeeds is deleted, with its events,
    instead of marked (NOTIFIER_KEEP_SUCCEEDED_JOBS off; see :func:`jobs.finish_jobs`).

    Signals are left to the caller (``notifier.worker`` tells a stop asked for from a
    worker that stopped because the database went away). It returns, or raises
    :data:`~notifier.queue.QueueError`, when a side task (heartbeat, LISTEN) fails.
    """
    options: WorkerOptions = {
        "queues": list(queues),
        "concurrency": concurrency,
        "wait": wait,
        "install_signal_handlers": False,
        "additional_context": {_DEPS_KEY: deps},
        "delete_jobs": "successful" if delete_succeeded_jobs else "never",
    }
    if name is not None:
        options["name"] = name
    if poll_interval_seconds is not None:
        # Scheduled jobs are found by polling; LISTEN/NOTIFY wakes workers for jobs due now.
        options["fetch_job_polling_interval"] = poll_interval_seconds
        options["abort_job_polling_interval"] = max(poll_interval_seconds, 1.0)
    if listen_notify is not None:
        options["listen_notify"] = listen_notify
    if shutdown_timeout_seconds is not None:
        options["shutdown_graceful_timeout"] = shutdown_timeout_seconds
    if stalled_worker_seconds is not None:
        options["stalled_worker_timeout"] = stalled_worker_seconds
        options["update_heartbeat_interval"] = heartbeat_interval(stalled_worker_seconds)
    if around_job is not None:
        options["worker_middleware"] = [_worker_middleware(around_job)]
    # What run_worker_async runs (app._worker), kept to look into, waking for due jobs.
    final_options: WorkerOptions = {**app.worker_defaults, **options}
    worker = _Worker(app=app, **final_options)
    interval = options.get("update_heartbeat_interval", 10.0)
    orphans = asyncio.create_task(
        _hand_back_orphaned_jobs(app, worker, interval), name="orphaned-jobs"
    )
    try:
        await worker.run()  # type: ignore[no-untyped-call]
    finally:
        orphans.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await orphans


class _Worker(procrastinate.worker.Worker):
    """procrastinate's worker, but its wait after a fetch that found nothing ends when the
    next waiting job falls due, if that comes before the poll interval is up.

    Scheduled jobs wake no listening worker (migration 0002), so a worker finds them by
    polling: a burst of notifications due at one instant would wait for up to a whole
    interval. The fetch notes when the next job falls due
    (:meth:`QueueConnector.seconds_until_next_due`); procrastinate's loop reads
    ``fetch_job_polling_interval`` for each wait (procrastinate is pinned: check this on an
    upgrade; ``tests/queue/test_due_wakeups.py`` fails if the loop stops reading it).

    Jobs are not fetched ahead of their time and held until it: a job a worker holds
    (``doing``) can no longer be cancelled, and a cancel before the due time must stop
    the notification's job; fetching at the instant costs one round trip.

    Nor is a NOTIFY lost to a fetch under way: procrastinate clears its wake-up after every
    fetch, so a job inserted while a fetch that then found nothing was running (committed
    after that fetch looked) would wait for the next poll. Such a worker fetches again at
    once.
    """

    # When (time.monotonic()) the last NOTIFY of a new job arrived.
    _notified_at = -math.inf

    async def _handle_notification(
        self, *, channel: str, notification: procrastinate.jobs.Notification
    ) -> None:
        if notification["type"] == "job_inserted":
            self._notified_at = time.monotonic()
        await super()._handle_notification(channel=channel, notification=notification)

    # procrastinate's __init__ sets this; reading it gives the wait before the next fetch.
    @property
    def fetch_job_polling_interval(self) -> float:
        interval = self._poll_interval
        connector = self.app.connector
        if self.worker_id is None or not isinstance(connector, QueueConnector):
            return interval
        if connector.began_fetching_before(self.worker_id, self._notified_at):
            return 0.0
        due_in = connector.seconds_until_next_due(self.worker_id)
        if due_in is None:
            return interval
        return min(interval, due_in + DUE_WAKE_MARGIN_SECONDS)

    @fetch_job_polling_interval.setter
    def fetch_job_polling_interval(self, interval: float) -> None:
        self._poll_interval = interval


def heartbeat_interval(stalled_worker_seconds: float) -> float:
    """How often a worker heartbeats: five times per stalled timeout (at most every 10 s).

    A live worker is declared dead only after missing four heartbeats in a row, so an
    event loop stalled by a GC pause or CPU load for less than four intervals does not
    get its jobs re-run under it.
    """
    return min(10.0, stalled_worker_seconds / 5)


async def _hand_back_orphaned_jobs(
    app: QueueApp, worker: procrastinate.worker.Worker, interval: float
) -> None:
    """Hand back jobs the database says ``worker`` runs but the worker no longer holds.

    That happens when the write that ends a job's run (finish, retry) failed for good
    (:class:`~notifier.queue.connector.QueueConnector` tries it again for a while): the
    worker lives and heartbeats, so dead-worker recovery never looks at the job. A job
    missing from the worker's running jobs at two looks in a row (``interval`` apart, so a
    job just fetched and not yet registered is never mistaken) is put back in its queue,
    its run counted. Tasks are safe to run again: a sent notification is not resent, a
    processed event not processed twice.
    """
    assert isinstance(app.connector, QueueConnector), "notifier's app runs notifier's connector"
    # open_app hands the connector the process's pool, whose connections give dict rows.
    pool = cast(Pool, app.connector.pool)
    suspects: set[int] = set()
    while True:
        await asyncio.sleep(interval)
        worker_id = worker.worker_id
        if worker_id is None:
            continue
        try:
            async with transaction(pool) as conn:
                listed = await jobs.running_jobs_of_worker(conn, worker_id)
            # procrastinate's own record of the jobs this worker runs, a private attribute
            # (procrastinate is pinned: check it on an upgrade, like the SQL in jobs.py). A
            # job stays in it until its outcome write is done, retries included.
            held = {context.job.id for context in worker._running_jobs.values()}
            orphaned = listed - held
            for job_id in orphaned & suspects:
                async with transaction(pool) as conn:
                    if await jobs.requeue_running_job(conn, job_id):
                        logger.warning(
                            "job %s was left running without its worker: handed back", job_id
                        )
            suspects = orphaned - suspects
        except psycopg.Error as exc:  # PoolTimeout included; the next look tries again
            logger.warning("could not look for orphaned jobs: %s", exc)


def _worker_middleware(
    around_job: AroundJob,
) -> Callable[[Callable[[], Awaitable[Any]], procrastinate.JobContext, Any], Awaitable[Any]]:
    async def middleware(
        call_next: Callable[[], Awaitable[Any]], context: procrastinate.JobContext, worker: Any
    ) -> Any:
        return await around_job(job_info(context.job), call_next)

    return middleware
