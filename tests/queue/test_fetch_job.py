"""Workers fetch jobs with ``notifier.fetch_job`` (migration 0009).

Its point is that a fetch reads the job it returns and hardly anything else, however many
jobs wait for later dates; the order it hands jobs out in is procrastinate's, except that
due scheduled jobs go earliest due first.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from notifier.services import Services

FUTURE_JOBS = 50_000


async def defer(
    db: psycopg.AsyncConnection[Any],
    name: str,
    *,
    due: str | None = None,
    priority: int = 0,
    queue: str = "deliveries",
    lock: str | None = None,
) -> int:
    """Insert a waiting job; ``due`` is an SQL expression for its scheduled_at."""
    cursor = await db.execute(
        f"""
        INSERT INTO procrastinate_jobs (queue_name, task_name, priority, lock, args, scheduled_at)
        VALUES (%s, %s, %s, %s, '{{}}', {due or "NULL"})
        RETURNING id
        """.encode(),
        [queue, name, priority, lock],
    )
    row = await cursor.fetchone()
    assert row is not None
    job_id: int = row["id"]
    return job_id


async def fetch(
    db: psycopg.AsyncConnection[Any],
    queues: list[str] | None = None,
    function: str = "notifier.fetch_job",
) -> str | None:
    """The task name of the job the fetch function hands out (marking it doing), or None."""
    cursor = await db.execute(
        f"SELECT task_name FROM {function}(%s::varchar[], NULL)".encode(), [queues]
    )
    row = await cursor.fetchone()
    assert row is not None
    name: str | None = row["task_name"]
    return name


async def add_future_jobs(db: psycopg.AsyncConnection[Any], count: int) -> None:
    await db.execute(
        """
        INSERT INTO procrastinate_jobs (queue_name, task_name, priority, args, scheduled_at)
        SELECT 'deliveries', 'reminder', 0, '{}', now() + interval '30 days' + n * interval '1 s'
        FROM generate_series(1, %s) AS n
        """,
        [count],
    )
    await db.execute("ANALYZE procrastinate_jobs")


async def rows_read_by(db: psycopg.AsyncConnection[Any], function: str) -> int:
    """How many procrastinate_jobs rows one fetch by ``function`` reads (then rolled back)."""

    async def rows_read_so_far() -> int:
        # Counters not yet flushed to the shared statistics: since PostgreSQL 15 they can
        # still hold earlier transactions' reads (flushed at most once a second), so only
        # the difference across the fetch is the fetch's own.
        cursor = await db.execute(
            """
            SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0) AS read
            FROM pg_stat_xact_user_tables WHERE relname = 'procrastinate_jobs'
            """
        )
        row = await cursor.fetchone()
        assert row is not None
        read: int = row["read"]
        return read

    async with db.transaction(force_rollback=True):
        before = await rows_read_so_far()
        assert await fetch(db, ["deliveries"], function) == "due"
        return await rows_read_so_far() - before


async def test_a_fetch_reads_a_handful_of_rows_however_many_jobs_wait_for_later(
    db: psycopg.AsyncConnection[Any],
) -> None:
    await add_future_jobs(db, FUTURE_JOBS)
    await defer(db, "due", due="now() - interval '1 minute'")

    assert await rows_read_by(db, "notifier.fetch_job") < 10
    # procrastinate's own function walks past every future job to find the due one.
    assert await rows_read_by(db, "procrastinate_fetch_job_v2") >= FUTURE_JOBS


async def test_only_due_jobs_are_fetched(db: psycopg.AsyncConnection[Any]) -> None:
    await add_future_jobs(db, 10)
    assert await fetch(db) is None
    await defer(db, "due", due="now() - interval '1 second'")
    assert await fetch(db) == "due"
    assert await fetch(db) is None


async def test_jobs_to_run_now_go_by_priority_then_age(db: psycopg.AsyncConnection[Any]) -> None:
    await defer(db, "first")
    await defer(db, "second")
    await defer(db, "urgent", priority=5)
    assert [await fetch(db) for _ in range(4)] == ["urgent", "first", "second", None]


async def test_due_scheduled_jobs_go_earliest_due_first(db: psycopg.AsyncConnection[Any]) -> None:
    await defer(db, "due a minute ago", due="now() - interval '1 minute'")
    await defer(db, "due an hour ago", due="now() - interval '1 hour'")
    assert await fetch(db) == "due an hour ago"
    assert await fetch(db) == "due a minute ago"


async def test_between_a_due_job_and_one_to_run_now_priority_then_age_decide(
    db: psycopg.AsyncConnection[Any],
) -> None:
    await defer(db, "retry due now", due="now() - interval '1 second'")
    await defer(db, "new")
    await defer(db, "urgent", priority=1)
    assert [await fetch(db) for _ in range(3)] == ["urgent", "retry due now", "new"]


async def test_the_queue_filter_holds(db: psycopg.AsyncConnection[Any]) -> None:
    await defer(db, "event", queue="events")
    await defer(db, "delivery", queue="deliveries", due="now() - interval '1 second'")
    assert await fetch(db, ["events"]) == "event"
    assert await fetch(db, ["events"]) is None
    assert await fetch(db, ["deliveries"]) == "delivery"


async def test_a_job_waits_while_another_with_its_lock_runs_or_waits_ahead(
    db: psycopg.AsyncConnection[Any],
) -> None:
    await defer(db, "first with lock", lock="tenant-1")
    await defer(db, "second with lock", lock="tenant-1", due="now() - interval '1 hour'")
    await defer(db, "other")
    assert await fetch(db) == "first with lock"
    # The second is due and older by due time, but its lock is taken.
    assert await fetch(db) == "other"
    assert await fetch(db) is None
    await db.execute(
        "UPDATE procrastinate_jobs SET status = 'succeeded' WHERE lock = 'tenant-1' AND status = 'doing'"
    )
    assert await fetch(db) == "second with lock"


async def test_workers_fetch_through_notifiers_function(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    # Told apart by order: procrastinate's function would hand out the lower id first.
    await defer(db, "due a minute ago", due="now() - interval '1 minute'")
    await defer(db, "due an hour ago", due="now() - interval '1 hour'")
    job = await services.queue.job_manager.fetch_job(queues=["deliveries"], worker_id=None)  # type: ignore[arg-type]
    assert job is not None
    assert job.task_name == "due an hour ago"


async def index_scans_of_a_vacuum(db: psycopg.AsyncConnection[Any]) -> int:
    """How many passes over procrastinate_jobs' indexes a VACUUM made (from its report)."""
    reports: list[str] = []
    db.add_notice_handler(lambda notice: reports.append(notice.message_primary or ""))
    await db.execute("VACUUM (VERBOSE) procrastinate_jobs")
    (report,) = [
        r
        for r in reports
        if r.startswith("finished vacuuming") and 'public.procrastinate_jobs"' in r
    ]
    match = re.search(r"index scans: (\d+)", report)
    assert match, report
    return int(match.group(1))


async def test_a_vacuum_cleans_the_fetchs_index_when_a_few_jobs_just_ran(
    db: psycopg.AsyncConnection[Any],
) -> None:
    """Dead rows on so few pages that PostgreSQL would skip the indexes (migration 0010)."""
    await add_future_jobs(db, FUTURE_JOBS)
    await db.execute("VACUUM procrastinate_jobs")

    async def run_a_few_jobs() -> None:
        for _ in range(100):
            await defer(db, "ran")
        await db.execute(
            "UPDATE procrastinate_jobs SET status = 'succeeded' WHERE task_name = 'ran'"
        )

    await run_a_few_jobs()
    assert await index_scans_of_a_vacuum(db) == 1

    await db.execute("ALTER TABLE procrastinate_jobs RESET (vacuum_index_cleanup)")
    await run_a_few_jobs()
    assert await index_scans_of_a_vacuum(db) == 0, "PostgreSQL's default would skip them"
