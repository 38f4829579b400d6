"""A worker that found nothing to do wakes when the next waiting job falls due, if that
comes before its next poll (notifier.queue.app): a burst due at one instant starts then,
not up to a poll interval later. Jobs are still never run before they are due, and a job
not yet due can still be cancelled.

Real procrastinate workers, polling every POLL_SECONDS: far longer than the lateness the
tests allow, so that a job found only by the next poll fails them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import psycopg
import pytest
from psycopg.rows import dict_row

from notifier.db import transaction
from notifier.queue import JobInfo, jobs
from notifier.queue.app import QueueApp, Task, _Worker, create_app, open_app, run_worker
from notifier.queue.connector import WORKERS_REMEMBERED, QueueConnector
from notifier.queue.jobs import JobToDefer
from notifier.services import Services
from notifier.settings import Settings
from tests.support import eventually

pytestmark = pytest.mark.serial

QUEUE = "test"
POLL_SECONDS = 5.0
# How late a job may start after it falls due, on a loaded machine; a poll is later still.
LATENESS_SECONDS = 1.0


class Runs:
    """When each job (by its ``name`` argument) ran, by the clock the database shares."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    async def record(self, deps: object, job: JobInfo, name: str) -> None:
        self.at[name] = time.time()


async def defer(services: Services, name: str, due_in_seconds: float | None = None) -> float:
    """Defer a job of the test queue; when it falls due (now if ``due_in_seconds`` is None)."""
    due = time.time() + (due_in_seconds or 0.0)
    scheduled_at = (
        datetime.datetime.fromtimestamp(due, datetime.UTC) if due_in_seconds is not None else None
    )
    async with transaction(services.pool) as conn:
        await jobs.defer_jobs(
            conn,
            [
                JobToDefer(
                    task="record", queue=QUEUE, args={"name": name}, scheduled_at=scheduled_at
                )
            ],
        )
    return due


@contextlib.asynccontextmanager
async def polling_worker(services: Services, settings: Settings, runs: Runs) -> AsyncIterator[int]:
    """A worker on the test queue, listening, polling every POLL_SECONDS, fetching on the
    asynchronous-commit connection as ``notifier worker`` does; yields its id."""
    app: QueueApp = create_app(
        settings.database_url, {}, [Task(name="record", run=runs.record, queue=QUEUE)]
    )
    connector = cast(QueueConnector, services.queue.connector)
    async with open_app(app, services.pool, fetch_pool=connector.fetch_pool):
        task = asyncio.create_task(
            run_worker(
                app,
                deps=object(),
                queues=[QUEUE],
                concurrency=1,
                poll_interval_seconds=POLL_SECONDS,
                listen_notify=True,
            )
        )
        try:

            async def registered() -> Any:
                async with services.pool.connection() as conn:
                    cursor = await conn.execute("SELECT max(id) AS id FROM procrastinate_workers")
                    row = await cursor.fetchone()
                return row and row["id"]

            yield await eventually(registered)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=30)


async def test_a_job_falling_due_before_the_next_poll_runs_when_due(
    services: Services, settings: Settings
) -> None:
    runs = Runs()
    async with polling_worker(services, settings, runs):
        # Due in 2 s: too far ahead to wake anyone when deferred (migration 0002).
        due = await defer(services, "later", due_in_seconds=2.0)
        # A job due now wakes the worker; having run it, it finds nothing due.
        await defer(services, "now")

        async def ran_later() -> bool:
            return "later" in runs.at

        await eventually(ran_later, timeout=POLL_SECONDS + 5)

    assert "now" in runs.at
    assert due <= runs.at["later"] < due + LATENESS_SECONDS


async def test_a_burst_due_at_one_instant_starts_then_and_never_before(
    services: Services, settings: Settings
) -> None:
    runs = Runs()
    async with polling_worker(services, settings, runs):
        due = time.time() + 1.5
        async with transaction(services.pool) as conn:
            await jobs.defer_jobs(
                conn,
                [
                    JobToDefer(
                        task="record",
                        queue=QUEUE,
                        args={"name": f"burst-{n}"},
                        scheduled_at=datetime.datetime.fromtimestamp(due, datetime.UTC),
                    )
                    for n in range(20)
                ],
            )
        await defer(services, "now")

        async def all_ran() -> bool:
            return len(runs.at) == 21

        await eventually(all_ran, timeout=POLL_SECONDS + 10)

    burst = [at for name, at in runs.at.items() if name.startswith("burst-")]
    assert min(burst) >= due
    assert min(burst) < due + LATENESS_SECONDS


async def test_a_job_the_worker_waits_for_can_still_be_cancelled_before_it_is_due(
    services: Services, settings: Settings
) -> None:
    runs = Runs()
    async with polling_worker(services, settings, runs):
        due = await defer(services, "cancelled", due_in_seconds=1.5)
        await defer(services, "now")

        async def ran_now() -> bool:
            return "now" in runs.at

        await eventually(ran_now)
        async with services.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT id FROM procrastinate_jobs WHERE args->>'name' = 'cancelled'"
            )
            row = await cursor.fetchone()
            assert row is not None
        # The worker knows the job falls due in a moment; it still waits, not yet fetched.
        async with transaction(services.pool) as conn:
            assert await jobs.cancel_waiting_job(conn, row["id"])
        await asyncio.sleep(max(0.0, due - time.time()) + LATENESS_SECONDS)

    assert "cancelled" not in runs.at


async def test_a_fetch_that_finds_nothing_notes_when_the_next_job_of_its_queues_falls_due(
    services: Services,
) -> None:
    connector = cast(QueueConnector, services.queue.connector)

    async def fetch(queues: list[str]) -> int | None:
        job = await services.queue.job_manager.fetch_job(queues=queues, worker_id=None)  # type: ignore[arg-type]
        return None if job is None else job.id

    assert await fetch([QUEUE]) is None
    assert connector.seconds_until_next_due(None) is None  # nothing waits

    await defer(services, "in a minute", due_in_seconds=60)
    await defer(services, "in ten seconds", due_in_seconds=10)
    assert await fetch(["other"]) is None
    assert connector.seconds_until_next_due(None) is None  # not of its queues

    assert await fetch([QUEUE]) is None
    due_in = connector.seconds_until_next_due(None)
    assert due_in is not None
    assert 8 < due_in <= 10

    await defer(services, "now")
    assert await fetch([QUEUE]) is not None
    assert connector.seconds_until_next_due(None) is None  # it found work: no wait to shorten


async def test_a_connector_forgets_the_workers_that_stopped_fetching(services: Services) -> None:
    # A worker started again after an outage fetches under a new id: the entries of the
    # ones before it must not stay for the life of the process.
    connector = cast(QueueConnector, services.queue.connector)
    await defer(services, "in a minute", due_in_seconds=60)
    worker_ids = range(WORKERS_REMEMBERED + 5)
    for worker_id in worker_ids:
        job = await services.queue.job_manager.fetch_job(queues=[QUEUE], worker_id=worker_id)
        assert job is None

    now = time.monotonic()
    remembered = [w for w in worker_ids if connector.began_fetching_before(w, now)]
    waiting = [w for w in worker_ids if connector.seconds_until_next_due(w) is not None]
    assert remembered == list(worker_ids)[-WORKERS_REMEMBERED:]
    assert waiting == remembered


async def test_a_fetch_that_lost_the_new_jobs_to_another_fetch_still_under_way_looks_again(
    services: Services, settings: Settings
) -> None:
    """Two workers woken by one NOTIFY: the first fetch moves the publish's arrivals into
    their group and has not committed; the second skips them (locked) and sees no due group
    yet. It must look again at once, not a poll interval later: else one worker takes the
    whole publish while the other sleeps."""
    connector = cast(QueueConnector, services.queue.connector)
    await defer(services, "first")
    await defer(services, "second")
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, row_factory=dict_row
    ) as other_worker:
        async with other_worker.transaction():
            cursor = await other_worker.execute(
                "SELECT task_name FROM notifier.fetch_job(%s::varchar[], NULL)", [[QUEUE]]
            )
            assert await cursor.fetchone() == {"task_name": "record"}

            job = await services.queue.job_manager.fetch_job(queues=[QUEUE], worker_id=None)  # type: ignore[arg-type]
            assert job is None
            assert connector.seconds_until_next_due(None) == 0.0
        job = await services.queue.job_manager.fetch_job(queues=[QUEUE], worker_id=None)  # type: ignore[arg-type]
        assert job is not None


async def test_a_wake_up_that_came_during_a_fetch_that_found_nothing_is_not_lost(
    services: Services, settings: Settings
) -> None:
    """procrastinate clears its wake-up after each fetch: a job committed while a fetch
    that found nothing was under way would otherwise wait for the next poll."""
    app: QueueApp = create_app(
        settings.database_url, {}, [Task(name="record", run=Runs().record, queue=QUEUE)]
    )
    async with open_app(app, services.pool):
        worker = _Worker(app=app, queues=[QUEUE], fetch_job_polling_interval=POLL_SECONDS)
        worker.worker_id = await app.job_manager.register_worker()
        assert await app.job_manager.fetch_job(queues=[QUEUE], worker_id=worker.worker_id) is None
        assert worker.fetch_job_polling_interval == POLL_SECONDS

        await worker._handle_notification(
            channel="procrastinate_queue_v1#test",
            notification={"type": "job_inserted", "job_id": 1},
        )
        # Its last fetch began before the NOTIFY and may not have seen the job: at once.
        assert worker.fetch_job_polling_interval == 0.0

        assert await app.job_manager.fetch_job(queues=[QUEUE], worker_id=worker.worker_id) is None
        assert worker.fetch_job_polling_interval == POLL_SECONDS
