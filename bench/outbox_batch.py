"""Benchmark: one 10,000-row INSERT ... SELECT into notifier.outbox, committed and processed.

Prints the commit time against a baseline (the same rows into a plain table with the same
columns, no trigger), the wake-ups sent, and the time until a real `notifier worker` process
has processed every event. Starts nothing but that worker; uses the PostgreSQL at
NOTIFIER_BENCH_SERVER (default postgresql://postgres@127.0.0.1:5432) and a scratch database.

    uv run python bench/outbox_batch.py [--rows 10000] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import psycopg
from psycopg.conninfo import make_conninfo

from notifier import migrate

INSERT_SELECT = (
    "INSERT INTO {table} (type, payload) "
    "SELECT 'bulk.created', jsonb_build_object('n', n, 'email', 'user' || n || '@example.com') "
    "FROM generate_series(1, %s) AS n"
)


def timed_insert(url: str, table: str, rows: int) -> float:
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        conn.execute(INSERT_SELECT.format(table=table).encode(), [rows])
        conn.commit()
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    server = os.environ.get("NOTIFIER_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432")
    url = make_conninfo(server, dbname="notifier_bench_outbox")
    with psycopg.connect(make_conninfo(server, dbname="postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS notifier_bench_outbox WITH (FORCE)")
    migrate.create_database_if_missing(url)
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE baseline (LIKE notifier.outbox INCLUDING ALL)")
        # The outbox's tenant comes from a trigger; the plain copy takes it as a default.
        conn.execute("ALTER TABLE baseline ALTER COLUMN tenant_id SET DEFAULT 'default'")
        conn.execute(
            "INSERT INTO notifier.routing_rules (event_type, channel, recipient_field) "
            "VALUES ('bulk.*', 'log', 'email')"
        )

    baseline = timed_insert(url, "baseline", args.rows)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN procrastinate_any_queue_v1")
        outbox = timed_insert(url, "notifier.outbox", args.rows)
        wake_ups = sum(1 for _ in listener.notifies(timeout=1.0))

    env = {
        **os.environ,
        "NOTIFIER_DATABASE_URL": url,
        "NOTIFIER_DATABASE_POOL_MAX_SIZE": str(args.concurrency + 5),
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "notifier",
            "--log-level",
            "WARNING",
            "worker",
            "--concurrency",
            str(args.concurrency),
        ],
        env=env,
    )
    started = time.perf_counter()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE processed_at IS NULL), "
                    "(SELECT count(*) FROM notifier.notifications WHERE status = 'sent') FROM notifier.events"
                ).fetchone()
                assert row is not None
                pending, sent = row
                if pending == 0 and sent == args.rows:
                    break
                if time.perf_counter() - started > args.timeout:
                    print(f"timed out: {pending} events unprocessed, {sent} sent")
                    return 1
                time.sleep(0.2)
        processed = time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(timeout=60)

    print(f"rows per transaction            {args.rows:>10,}")
    print(f"commit, plain table (baseline)  {baseline * 1000:>10.0f} ms")
    print(
        f"commit, notifier.outbox         {outbox * 1000:>10.0f} ms   ({outbox / baseline:.1f}x baseline)"
    )
    print(f"wake-up notifications sent      {wake_ups:>10}")
    print(
        f"all events processed and sent   {processed:>10.1f} s    "
        f"({args.rows / processed:,.0f} events/s, 1 worker, concurrency {args.concurrency})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
