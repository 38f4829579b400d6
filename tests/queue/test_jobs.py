"""The queue adapter's SQL (notifier.queue.jobs) against the real PostgreSQL and procrastinate schema.

Each function runs in the caller's transaction and commits or rolls back with it; what it
writes is what procrastinate's own API would have written.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import psycopg
import pytest

from notifier.db import transaction
from notifier.queue import (
    DELIVER_TASK,
    DELIVERIES_QUEUE,
    EVENTS_QUEUE,
    MAINTENANCE_TASK,
    PROCESS_EVENT_TASK,
    jobs,
)
from notifier.queue.jobs import JobToDefer
from notifier.services import Services

UTC = datetime.UTC
# Every column of a job but its id, as the defer leaves it.
JOB_COLUMNS = (
    "queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at,"
    " status::text AS status, attempts, worker_id, abort_requested"
)


class Abort(Exception):
    """Raised inside a transaction to roll it back."""


async def rows(db: psycopg.AsyncConnection[Any], sql: str, *params: Any) -> list[dict[str, Any]]:
    cursor = await db.execute(sql.encode(), list(params))
    return list(await cursor.fetchall())


async def job_row(db: psycopg.AsyncConnection[Any], job_id: int) -> dict[str, Any]:
    (row,) = await rows(db, f"SELECT {JOB_COLUMNS} FROM procrastinate_jobs WHERE id = %s", job_id)
    return row


async def event_types(db: psycopg.AsyncConnection[Any], job_id: int) -> list[str]:
    found = await rows(
        db,
        "SELECT type::text AS type FROM procrastinate_events WHERE job_id = %s ORDER BY id",
        job_id,
    )
    return [row["type"] for row in found]


async def insert_job(
    db: psycopg.AsyncConnection[Any],
    *,
    task: str = DELIVER_TASK,
    queue: str = DELIVERIES_QUEUE,
    status: str = "todo",
    args: str = '{"tenant_id": "default"}',
    due: str = "NULL",
    priority: int = 0,
    lock: str | None = None,
) -> int:
    """A job in any state, written directly (``due``: SQL for scheduled_at)."""
    (row,) = await rows(
        db,
        f"""
        INSERT INTO procrastinate_jobs
            (queue_name, task_name, priority, lock, args, scheduled_at, status)
        VALUES (%s, %s, %s, %s, %s::jsonb, {due}, %s)
        RETURNING id
        """,
        queue,
        task,
        priority,
        lock,
        args,
        status,
    )
    job_id: int = row["id"]
    return job_id


# --- deferring -------------------------------------------------------------------------


async def test_defer_jobs_writes_what_procrastinates_own_defer_writes(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    at = datetime.datetime.now(UTC) + datetime.timedelta(hours=2)
    args: dict[str, Any] = {"notification_id": str(uuid.uuid4()), "tenant_id": "default"}
    async with transaction(services.pool) as conn:
        theirs = [
            await services.queue.configure_task(
                DELIVER_TASK, connection=conn, schedule_at=at
            ).defer_async(**args),
            await services.queue.configure_task(DELIVER_TASK, connection=conn).defer_async(**args),
        ]
        ours = await jobs.defer_jobs(
            conn,
            [
                JobToDefer(task=DELIVER_TASK, args=args, scheduled_at=at),
                JobToDefer(task=DELIVER_TASK, args=args),
            ],
        )

    for their_id, our_id in zip(theirs, ours, strict=True):
        assert await job_row(db, our_id) == await job_row(db, their_id)
        assert await event_types(db, our_id) == await event_types(db, their_id)
    assert (await job_row(db, ours[0]))["scheduled_at"] == at
    assert await event_types(db, ours[0]) == ["scheduled", "deferred"]


async def test_defer_jobs_returns_the_ids_in_order_and_commits_with_the_caller(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    to_defer = [
        JobToDefer(task=PROCESS_EVENT_TASK, args={"event_id": "e1", "tenant_id": "a"}),
        JobToDefer(task=DELIVER_TASK, args={"notification_id": "n1", "tenant_id": "b"}),
        JobToDefer(task=MAINTENANCE_TASK, args={"timestamp": 60}, priority=3),
        JobToDefer(task="other.task", args={}, queue="elsewhere"),
    ]

    async def defer_then_abort() -> None:
        async with transaction(services.pool) as conn:
            await jobs.defer_jobs(conn, to_defer)
            raise Abort

    with pytest.raises(Abort):
        await defer_then_abort()
    assert await rows(db, "SELECT id FROM procrastinate_jobs") == []

    async with transaction(services.pool) as conn:
        ids = await jobs.defer_jobs(conn, to_defer)
        assert await jobs.defer_jobs(conn, []) == []

    assert ids == sorted(ids)
    stored = [await job_row(db, job_id) for job_id in ids]
    assert [(r["queue_name"], r["task_name"], r["priority"], r["args"]) for r in stored] == [
        (EVENTS_QUEUE, PROCESS_EVENT_TASK, 0, {"event_id": "e1", "tenant_id": "a"}),
        (DELIVERIES_QUEUE, DELIVER_TASK, 0, {"notification_id": "n1", "tenant_id": "b"}),
        ("maintenance", MAINTENANCE_TASK, 3, {"timestamp": 60}),
        ("elsewhere", "other.task", 0, {}),
    ]


async def test_the_defer_select_embeds_in_a_statement_of_the_caller(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    """One job per row of the caller's rows, in the order asked for, in one statement."""
    statement = (
        "WITH deferred AS ("
        + jobs.defer_jobs_select(
            rows="unnest(ARRAY[3, 1, 2]) AS n",
            queue="'" + EVENTS_QUEUE + "'",
            task="'" + PROCESS_EVENT_TASK + "'",
            args="jsonb_build_object('n', n)",
            scheduled_at="now() + n * interval '1 hour'",
            order_by="n",
        )
        + ") SELECT job_ids FROM deferred"
    )
    async with transaction(services.pool) as conn:
        cursor = await conn.execute(statement)
        row = await cursor.fetchone()
    assert row is not None
    ids = row["job_ids"]
    assert [(await job_row(db, job_id))["args"] for job_id in ids] == [{"n": 1}, {"n": 2}, {"n": 3}]


# --- the jobs of a delivery batch ------------------------------------------------------


async def pending_notification(db: psycopg.AsyncConnection[Any], job_id: int) -> uuid.UUID:
    (row,) = await rows(
        db,
        """
        INSERT INTO notifier.notifications
            (notification_type, channel, recipient, send_at, status, job_id)
        VALUES ('invoice.due', 'log', 'ada@example.com', now(), 'pending', %s)
        RETURNING id
        """,
        job_id,
    )
    notification_id: uuid.UUID = row["id"]
    return notification_id


LOCK_WITH_NOTIFICATIONS = (
    "WITH due AS MATERIALIZED ("
    + jobs.lock_due_jobs(
        join="JOIN notifier.notifications AS n ON n.job_id = jobs.id",
        where="n.status = 'pending'",
        row_id="n.id",
    )
    + """)
    SELECT n.id AS notification_id, due.job_id
    FROM due JOIN notifier.notifications AS n ON n.id = due.row_id
    WHERE n.status = 'pending'
    ORDER BY due.position
    FOR UPDATE OF n SKIP LOCKED
    """
)


async def test_due_jobs_of_a_group_are_locked_with_their_rows_in_the_fetchs_order(
    services: Services, db: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    late = await insert_job(db, due="now() - interval '1 minute'")
    early = await insert_job(db, due="now() - interval '1 hour'")
    run_now = await insert_job(db)
    run_now_later_id = await insert_job(db)
    held_elsewhere = await insert_job(db)
    not_in_group = [
        await insert_job(db, due="now() + interval '1 hour'"),  # not due yet
        await insert_job(db, args='{"tenant_id": "other"}'),
        await insert_job(db, priority=1),
        await insert_job(db, lock="a-lock"),
        await insert_job(db, status="doing"),
        await insert_job(db, task=PROCESS_EVENT_TASK),
    ]
    notifications = {
        job_id: await pending_notification(db, job_id)
        for job_id in [late, early, run_now, run_now_later_id, held_elsewhere, *not_in_group]
    }
    group = jobs.due_jobs_parameters(
        queue=DELIVERIES_QUEUE, task_name=DELIVER_TASK, tenant_id="default", priority=0, limit=10
    )

    async with await psycopg.AsyncConnection.connect(database_url) as other:
        # Another transaction holds one of the rows: that job is skipped, not waited for.
        await other.execute(
            "SELECT 1 FROM notifier.notifications WHERE id = %s FOR UPDATE",
            [notifications[held_elsewhere]],
        )
        async with transaction(services.pool) as conn:
            cursor = await conn.execute(LOCK_WITH_NOTIFICATIONS, group)
            locked = await cursor.fetchall()
            assert [(row["job_id"], row["notification_id"]) for row in locked] == [
                (job_id, notifications[job_id])
                for job_id in (run_now, run_now_later_id, early, late)
            ]
            # Both the jobs and their rows are held until the transaction ends.
            with pytest.raises(psycopg.errors.LockNotAvailable):
                await other.execute(
                    "SELECT 1 FROM procrastinate_jobs WHERE id = %s FOR UPDATE NOWAIT", [early]
                )
        await other.rollback()

    async with transaction(services.pool) as conn:
        cursor = await conn.execute(LOCK_WITH_NOTIFICATIONS, {**group, "limit": 2})
        assert [row["job_id"] for row in await cursor.fetchall()] == [run_now, run_now_later_id]


async def test_a_batch_walks_its_group_from_behind_its_own_job(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    """The jobs before the batch's own in the fetch's order were held when it was fetched:
    a batch for a job to run now reads the jobs to run now behind it and every due
    scheduled one; a batch for a scheduled job reads each index behind it."""
    run_now = [await insert_job(db) for _ in range(3)]
    scheduled = [
        await insert_job(db, due=f"now() - interval '{minutes} minutes'")
        for minutes in (30, 20, 10)
    ]
    for job_id in run_now + scheduled:
        await pending_notification(db, job_id)

    async def batch(after: jobs.JobPosition) -> list[int]:
        group = jobs.due_jobs_parameters(
            queue=DELIVERIES_QUEUE,
            task_name=DELIVER_TASK,
            tenant_id="default",
            priority=0,
            limit=10,
            after=after,
        )
        async with transaction(services.pool) as conn:
            cursor = await conn.execute(LOCK_WITH_NOTIFICATIONS, group)
            return [row["job_id"] for row in await cursor.fetchall()]

    assert await batch(jobs.JobPosition(run_now[0])) == [*run_now[1:], *scheduled]
    (second_scheduled,) = await rows(
        db, "SELECT scheduled_at FROM procrastinate_jobs WHERE id = %s", scheduled[1]
    )
    behind_scheduled = jobs.JobPosition(scheduled[1], second_scheduled["scheduled_at"])
    assert await batch(behind_scheduled) == [scheduled[2]]
    assert await batch(jobs.JobPosition(0)) == run_now + scheduled


async def job_exists(db: psycopg.AsyncConnection[Any], job_id: int) -> bool:
    return bool(await rows(db, "SELECT 1 FROM procrastinate_jobs WHERE id = %s", job_id))


async def test_finish_jobs_deletes_waiting_jobs_as_if_they_had_run_and_succeeded(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    first, second, untouched = [await insert_job(db) for _ in range(3)]

    async with transaction(services.pool) as conn:
        await jobs.finish_jobs(conn, [first, second], delete=True)
        await jobs.finish_jobs(conn, [], delete=True)

    for job_id in (first, second):
        assert not await job_exists(db, job_id)
        assert await event_types(db, job_id) == []
    assert (await job_row(db, untouched))["status"] == "todo"
    assert await event_types(db, untouched) == ["deferred"]


async def test_finish_jobs_kept_ends_waiting_jobs_succeeded_as_if_they_had_run(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    first, second, untouched = [await insert_job(db) for _ in range(3)]

    async with transaction(services.pool) as conn:
        await jobs.finish_jobs(conn, [first, second], delete=False)
        await jobs.finish_jobs(conn, [], delete=False)

    for job_id in (first, second):
        finished = await job_row(db, job_id)
        assert (finished["status"], finished["attempts"]) == ("succeeded", 0)
        # procrastinate's trigger records the end of a job that never ran as 'cancelled'.
        assert await event_types(db, job_id) == ["deferred", "cancelled"]
    assert (await job_row(db, untouched))["status"] == "todo"


@pytest.mark.parametrize("delete", [True, False])
async def test_finish_jobs_writes_what_procrastinates_finish_function_writes(
    services: Services, db: psycopg.AsyncConnection[Any], delete: bool
) -> None:
    """One statement for every job, each left as ``procrastinate_finish_job_v1`` leaves one
    (told to delete it, or not)."""
    theirs = [await insert_job(db), await insert_job(db, status="doing")]
    ours = [await insert_job(db), await insert_job(db, status="doing")]
    await rows(
        db,
        "SELECT procrastinate_finish_job_v1(id, 'succeeded', %s) FROM unnest(%s::bigint[]) AS id",
        delete,
        theirs,
    )

    async with transaction(services.pool) as conn:
        await jobs.finish_jobs(conn, ours, delete=delete)

    for their_id, our_id in zip(theirs, ours, strict=True):
        assert await job_exists(db, our_id) == await job_exists(db, their_id) == (not delete)
        assert await event_types(db, our_id) == await event_types(db, their_id)
        if not delete:
            assert await job_row(db, our_id) == await job_row(db, their_id)
    if not delete:
        assert (await job_row(db, ours[1]))["attempts"] == 1  # the run counted
        assert await event_types(db, ours[1]) == ["succeeded"]


@pytest.mark.parametrize("delete", [True, False])
async def test_finish_jobs_refuses_a_job_no_longer_waiting_and_finishes_none(
    services: Services, db: psycopg.AsyncConnection[Any], delete: bool
) -> None:
    waiting, done = await insert_job(db), await insert_job(db, status="succeeded")

    with pytest.raises(jobs.QueueStateError):
        async with transaction(services.pool) as conn:
            await jobs.finish_jobs(conn, [waiting, done], delete=delete)

    assert (await job_row(db, waiting))["status"] == "todo"


async def test_reschedule_jobs_moves_waiting_jobs_and_adds_to_their_arguments(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    plain = await insert_job(db, args='{"notification_id": "a", "tenant_id": "t"}')
    counted = await insert_job(
        db, args='{"notification_id": "b", "tenant_id": "t", "slot_waits": 1}'
    )
    running = await insert_job(db, status="doing")
    later = datetime.datetime.now(UTC) + datetime.timedelta(minutes=5)

    async with transaction(services.pool) as conn:
        await jobs.reschedule_jobs(
            conn,
            {plain: later, counted: later + datetime.timedelta(seconds=1), running: later},
            merge_args={counted: {"slot_waits": 2}, running: {"slot_waits": 9}},
        )
        await jobs.reschedule_jobs(conn, {})
        assert await jobs.job_args(conn, [plain, counted, 0]) == {
            plain: {"notification_id": "a", "tenant_id": "t"},
            counted: {"notification_id": "b", "tenant_id": "t", "slot_waits": 2},
        }
        assert await jobs.job_args(conn, []) == {}

    assert (await job_row(db, plain))["scheduled_at"] == later
    assert (await job_row(db, counted))["scheduled_at"] == later + datetime.timedelta(seconds=1)
    assert (await job_row(db, running))["scheduled_at"] is None
    assert (await job_row(db, running))["args"] == {"tenant_id": "default"}


async def test_cancel_waiting_job_cancels_only_a_job_still_waiting(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    waiting = await insert_job(db)
    running = await insert_job(db, status="doing")

    async with transaction(services.pool) as conn:
        assert await jobs.cancel_waiting_job(conn, waiting) is True
        assert await jobs.cancel_waiting_job(conn, running) is False
        assert await jobs.cancel_waiting_job(conn, waiting) is False  # already cancelled
        assert await jobs.cancel_waiting_job(conn, 10**12) is False

    assert (await job_row(db, waiting))["status"] == "cancelled"
    assert (await job_row(db, running))["status"] == "doing"


# --- maintenance -----------------------------------------------------------------------


async def worker_row(db: psycopg.AsyncConnection[Any], heartbeat_age: str) -> int:
    (row,) = await rows(
        db,
        f"INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '{heartbeat_age}') RETURNING id",
    )
    worker_id: int = row["id"]
    return worker_id


async def test_stalled_jobs_are_the_running_jobs_of_dead_or_gone_workers(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    dead, alive = await worker_row(db, "1 hour"), await worker_row(db, "1 second")
    of_dead, of_alive, of_gone, waiting = [await insert_job(db) for _ in range(4)]
    for job_id, worker_id in ((of_dead, dead), (of_alive, alive), (of_gone, None)):
        await db.execute(
            "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE id = %s",
            [worker_id, job_id],
        )

    async with transaction(services.pool) as conn:
        stalled = await jobs.stalled_jobs(conn, seconds_since_heartbeat=30)

    assert stalled == [
        jobs.StalledJob(of_dead, DELIVER_TASK),
        jobs.StalledJob(of_gone, DELIVER_TASK),
    ]
    assert waiting not in {job.id for job in stalled}


async def test_requeue_running_job_counts_the_run_and_refuses_a_finished_job(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    running = await insert_job(db, status="doing")
    finished = await insert_job(db, status="succeeded")

    async with transaction(services.pool) as conn:
        assert await jobs.requeue_running_job(conn, finished) is False
        # procrastinate's function raised for that one; the transaction goes on.
        assert await jobs.requeue_running_job(conn, running) is True

    requeued = await job_row(db, running)
    assert (requeued["status"], requeued["attempts"]) == ("todo", 1)
    assert requeued["scheduled_at"] <= datetime.datetime.now(UTC)
    assert (await job_row(db, finished))["status"] == "succeeded"


async def test_prune_finished_jobs_deletes_old_ones_of_the_statuses_given(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    """A job's age is that of its last event (procrastinate's triggers write one per change)."""
    statuses = ("succeeded", "failed", "todo")
    old = {status: await insert_job(db) for status in statuses}
    recent = await insert_job(db)
    for status, job_id in [*old.items(), ("succeeded", recent)]:
        await db.execute(
            "UPDATE procrastinate_jobs SET status = %s WHERE id = %s", [status, job_id]
        )
    await db.execute(
        "UPDATE procrastinate_events SET at = now() - interval '3 hours' WHERE job_id = ANY(%s)",
        [list(old.values())],
    )

    async with transaction(services.pool) as conn:
        await jobs.prune_finished_jobs(conn, older_than_hours=2, statuses=["succeeded"])

    left = await rows(db, "SELECT id FROM procrastinate_jobs ORDER BY id")
    assert [row["id"] for row in left] == [old["failed"], old["todo"], recent]


# --- statistics ------------------------------------------------------------------------


async def test_queue_states_count_due_waiting_jobs_and_the_oldest_wait(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    await insert_job(db, due="now() - interval '90 seconds'")
    await insert_job(db, due="now() + interval '1 hour'")  # not due
    await insert_job(db, queue=EVENTS_QUEUE, task=PROCESS_EVENT_TASK)
    await insert_job(db, status="doing")
    await worker_row(db, "1 second")
    await worker_row(db, "1 hour")

    async with transaction(services.pool) as conn:
        states = await jobs.queue_states(conn)
        alive = await jobs.live_workers(conn, heartbeat_within_seconds=30)

    assert set(states) == {DELIVERIES_QUEUE, EVENTS_QUEUE}
    assert states[DELIVERIES_QUEUE].due_jobs == 1
    assert 90 <= states[DELIVERIES_QUEUE].oldest_due_seconds < 150
    assert states[EVENTS_QUEUE].due_jobs == 1
    assert alive == 1
