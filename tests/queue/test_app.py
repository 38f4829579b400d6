"""Tasks as plain functions (notifier.queue.app): what a task receives, and its retry policy.

Each test registers tasks of its own on an app of its own, sharing the test's pool, and
runs a real procrastinate worker until its queue is empty.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from notifier.db import transaction
from notifier.queue import JobInfo, jobs
from notifier.queue.app import QueueApp, Task, create_app, open_app, run_worker
from notifier.queue.jobs import JobToDefer
from notifier.queue.retry import RetryLater
from notifier.services import Services
from notifier.settings import Settings

QUEUE = "test"


async def defer(services: Services, task: str, **args: Any) -> int:
    async with transaction(services.pool) as conn:
        (job_id,) = await jobs.defer_jobs(
            conn, [JobToDefer(task=task, queue=QUEUE, args=args, priority=2)]
        )
    return job_id


async def job_state(db: psycopg.AsyncConnection[Any], job_id: int) -> dict[str, Any]:
    cursor = await db.execute(
        "SELECT status::text AS status, attempts, scheduled_at FROM procrastinate_jobs"
        " WHERE id = %s",
        [job_id],
    )
    row: dict[str, Any] | None = await cursor.fetchone()
    assert row is not None
    return row


def app_with(settings: Settings, *tasks: Task) -> QueueApp:
    return create_app(settings.database_url, {}, list(tasks))


async def drain(services: Services, app: QueueApp, deps: object, **options: Any) -> None:
    """Run a worker on the test queue until nothing is due there."""
    async with open_app(app, services.pool):
        await run_worker(app, deps=deps, queues=[QUEUE], concurrency=1, wait=False, **options)


async def test_a_task_gets_the_workers_deps_its_job_and_its_arguments(
    services: Services, settings: Settings
) -> None:
    received: list[tuple[object, JobInfo, dict[str, Any]]] = []
    wrapped: list[JobInfo] = []

    async def record(deps: object, job: JobInfo, **args: Any) -> None:
        received.append((deps, job, args))

    async def around_job(job: JobInfo, run: Callable[[], Awaitable[Any]]) -> Any:
        wrapped.append(job)
        return await run()

    app = app_with(settings, Task("test.record", record, queue=QUEUE))
    job_id = await defer(services, "test.record", event_id="e-1", tenant_id="acme")
    deps = object()

    await drain(services, app, deps, around_job=around_job)

    job = JobInfo(
        id=job_id,
        task_name="test.record",
        queue=QUEUE,
        priority=2,
        attempts=0,
        args={"event_id": "e-1", "tenant_id": "acme"},
    )
    assert received == [(deps, job, {"event_id": "e-1", "tenant_id": "acme"})]
    assert wrapped == [job]


async def test_retry_later_brings_the_job_back_when_the_task_asks(
    services: Services, settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    async def later(deps: object, job: JobInfo) -> None:
        raise RetryLater("not yet", delay_seconds=3600)

    app = app_with(settings, Task("test.later", later, max_attempts=2, queue=QUEUE))
    job_id = await defer(services, "test.later")
    before = datetime.datetime.now(datetime.UTC)

    await drain(services, app, None)

    state = await job_state(db, job_id)
    assert (state["status"], state["attempts"]) == ("todo", 1)
    wait = state["scheduled_at"] - before
    assert datetime.timedelta(minutes=59) < wait < datetime.timedelta(minutes=61)


@pytest.mark.parametrize(
    ("max_attempts", "runs"), [(None, 1), (1, 1), (3, 3)], ids=["never", "one", "three"]
)
async def test_an_unexpected_error_is_retried_until_max_attempts_runs(
    services: Services,
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    max_attempts: int | None,
    runs: int,
) -> None:
    ran: list[int] = []

    async def broken(deps: object, job: JobInfo) -> None:
        ran.append(job.attempts)
        raise ValueError("a bug")

    app = app_with(settings, Task("test.broken", broken, max_attempts=max_attempts, queue=QUEUE))
    job_id = await defer(services, "test.broken")

    for _ in range(runs):
        await drain(services, app, None)
        # The next run is due after a backoff of at most a second: bring it forward.
        await db.execute(
            "UPDATE procrastinate_jobs SET scheduled_at = now() WHERE id = %s AND status = 'todo'",
            [job_id],
        )

    assert ran == list(range(runs))
    state = await job_state(db, job_id)
    assert (state["status"], state["attempts"]) == ("failed", runs)


async def test_a_task_run_by_a_worker_without_deps_fails_loudly(
    services: Services, settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    """The stock ``procrastinate worker`` knows nothing of notifier's services."""
    ran: list[JobInfo] = []

    async def needs_deps(deps: object, job: JobInfo) -> None:
        ran.append(job)

    app = app_with(settings, Task("test.needs_deps", needs_deps, queue=QUEUE))
    job_id = await defer(services, "test.needs_deps")

    async with open_app(app, services.pool):
        await app.run_worker_async(queues=[QUEUE], wait=False, install_signal_handlers=False)

    assert ran == []
    assert (await job_state(db, job_id))["status"] == "failed"
