"""Benchmark: what one scrape of the PostgreSQL-backed gauges costs on a large database.

Fills a scratch database with notifications and waiting jobs, then times the two reads
behind ``/metrics`` and ``/health/ready`` (the queue snapshot and the notification counts),
uncached. Uses the PostgreSQL at NOTIFIER_BENCH_SERVER (default
postgresql://postgres@127.0.0.1:5432).

    uv run python bench/metrics_queries.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from notifier import migrate
from notifier.db import create_pool
from notifier.queue import DELIVER_TASK, DELIVERIES_QUEUE, EVENTS_QUEUE, PROCESS_EVENT_TASK, jobs
from notifier.settings import Settings
from notifier.telemetry.stats import DatabaseStats

FILL = [
    # Notifications in a realistic mix of statuses.
    """
    INSERT INTO notifier.notifications (notification_type, channel, recipient, send_at, status)
    SELECT 'user.signup', 'log', 'x', now(),
           (ARRAY['pending', 'sent', 'sent', 'sent', 'failed'])[1 + n %% 5]
    FROM generate_series(1, %(rows)s) AS n
    """,
    # Mostly reminders scheduled for later, plus a backlog due now.
    jobs.defer_jobs_select(
        rows="generate_series(1, %(rows)s * 95 / 100)",
        queue="'" + DELIVERIES_QUEUE + "'",
        task="'" + DELIVER_TASK + "'",
        args="'{}'",
        scheduled_at="now() + interval '1 day'",
    ),
    jobs.defer_jobs_select(
        rows="generate_series(1, %(rows)s * 5 / 100)",
        queue="'" + EVENTS_QUEUE + "'",
        task="'" + PROCESS_EVENT_TASK + "'",
        args="'{}'",
    ),
]


async def timed(label: str, read: Callable[[], Awaitable[Any]], runs: int = 10) -> None:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await read()
        times.append((time.perf_counter() - started) * 1000)
    print(f"{label}: median {statistics.median(times):.1f} ms, max {max(times):.1f} ms")


async def measure(database_url: str) -> None:
    settings = Settings(database_url=database_url, metrics_cache_seconds=0.0)
    pool = create_pool(settings)
    await pool.open()
    try:
        stats = DatabaseStats(settings, pool)
        await timed("queue snapshot (live workers, due jobs per queue)", stats.queue_snapshot)
        await timed("full refresh (snapshot + notifications by status)", stats.refresh)
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    server = os.environ.get("NOTIFIER_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432")
    name = f"notifier_bench_metrics_{os.getpid()}"
    admin = make_conninfo(server, dbname="postgres")
    database_url = make_conninfo(server, dbname=name)
    migrate.migrate(Settings(database_url=database_url))
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for statement in FILL:
                conn.execute(statement, {"rows": args.rows})
            conn.execute("VACUUM ANALYZE")
        print(f"{args.rows} notifications, {args.rows} jobs ({args.rows // 20} due now)")
        asyncio.run(measure(database_url))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
