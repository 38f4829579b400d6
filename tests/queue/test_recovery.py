"""A job is never stranded ``doing``: a live worker hands back the jobs the database says it
runs but it no longer holds, keeps the ones it holds, and outcome writes survive a
terminated connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from procrastinate.sql import queries as procrastinate_queries

from notifier.db import transaction
from notifier.queue import JobInfo, jobs
from notifier.queue.app import QueueApp, Task, create_app, heartbeat_interval, open_app, run_worker
from notifier.queue.jobs import JobToDefer
from notifier.services import Services
from notifier.settings import Settings
from tests.support import eventually

QUEUE = "test"
# Heartbeats (and looks for orphaned jobs) every 0.2 s.
STALLED_SECONDS = 1.0


async def job_state(db: psycopg.AsyncConnection[Any], job_id: int) -> tuple[str, int]:
    cursor = await db.execute(
        "SELECT status::text AS status, attempts FROM procrastinate_jobs WHERE id = %s", [job_id]
    )
    row = await cursor.fetchone()
    assert row is not None
    return row["status"], row["attempts"]


async def registered_worker(db: psycopg.AsyncConnection[Any]) -> int:
    async def one() -> int | None:
        cursor = await db.execute("SELECT id FROM procrastinate_workers")
        found = await cursor.fetchall()
        return found[0]["id"] if len(found) == 1 else None

    worker_id: int = await eventually(one, timeout=10)
    return worker_id


@contextlib.asynccontextmanager
async def worker_running(services: Services, app: QueueApp) -> AsyncIterator[None]:
    async with open_app(app, services.pool):
        task = asyncio.create_task(
            run_worker(
                app,
                deps=None,
                queues=[QUEUE],
                concurrency=2,
                poll_interval_seconds=0.1,
                stalled_worker_seconds=STALLED_SECONDS,
            )
        )
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=10)


async def test_a_job_left_doing_under_a_live_worker_that_lost_it_is_handed_back_and_run(
    services: Services, settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    """As after a finish write lost on a dead connection: the database says the worker runs
    the job, the worker has no such job. Dead-worker recovery never looks (it heartbeats)."""
    ran: list[JobInfo] = []

    async def record(deps: object, job: JobInfo) -> None:
        ran.append(job)

    app = create_app(settings.database_url, {}, [Task("test.record", record, queue=QUEUE)])
    async with worker_running(services, app):
        worker_id = await registered_worker(db)
        async with transaction(services.pool) as conn:
            (job_id,) = await jobs.defer_jobs(
                conn, [JobToDefer(task="test.record", queue=QUEUE, args={})]
            )
            # In the defer's own transaction: no worker can fetch it before it is "running".
            await conn.execute(
                "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE id = %s",
                [worker_id, job_id],
            )

        async def succeeded() -> bool:
            # The lost run and the run after the hand-back, each counted.
            return await job_state(db, job_id) == ("succeeded", 2)

        await eventually(succeeded, timeout=10)

    assert [(job.id, job.attempts) for job in ran] == [(job_id, 1)]


async def test_jobs_a_live_worker_holds_are_never_handed_back(
    services: Services, settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    """A job running for many heartbeat intervals stays the worker's: run once, in full."""
    started, release = asyncio.Event(), asyncio.Event()
    runs: list[int] = []

    async def slow(deps: object, job: JobInfo) -> None:
        runs.append(job.attempts)
        started.set()
        await release.wait()

    app = create_app(settings.database_url, {}, [Task("test.slow", slow, queue=QUEUE)])
    async with transaction(services.pool) as conn:
        (job_id,) = await jobs.defer_jobs(
            conn, [JobToDefer(task="test.slow", queue=QUEUE, args={})]
        )
    async with worker_running(services, app):
        await asyncio.wait_for(started.wait(), timeout=10)
        # Ten looks for orphaned jobs, and more than a stalled timeout.
        await asyncio.sleep(10 * heartbeat_interval(STALLED_SECONDS))
        assert await job_state(db, job_id) == ("doing", 0)
        release.set()

        async def succeeded() -> bool:
            return await job_state(db, job_id) == ("succeeded", 1)

        await eventually(succeeded, timeout=10)

    assert runs == [0]


async def test_a_finish_write_whose_connections_were_terminated_lands_on_a_new_one(
    services: Services, settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    """Every idle connection of the pool is terminated moments after use (so the pool does
    not check them before handing them out); finishing the job still lands."""
    app = create_app(settings.database_url, {}, [])
    async with transaction(services.pool) as conn:
        (job_id,) = await jobs.defer_jobs(conn, [JobToDefer(task="test.any", queue=QUEUE, args={})])
    await db.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", [job_id])
    async with open_app(app, services.pool):
        pids = set()
        for _ in range(services.pool.get_stats()["pool_size"]):
            async with services.pool.connection() as conn:
                cursor = await conn.execute("SELECT pg_backend_pid() AS pid")
                row = await cursor.fetchone()
                assert row is not None
                pids.add(row["pid"])
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [list(pids)]
        )

        await app.connector.execute_query_async(
            procrastinate_queries["finish_job"], job_id=job_id, status="succeeded", delete_job=False
        )

    assert await job_state(db, job_id) == ("succeeded", 1)
