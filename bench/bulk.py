"""Millions of pending notifications, loaded fast, as the service would have stored them.

What scheduling one notification leaves in the database: the notification row (pending,
``job_id`` set), its deliver job in ``procrastinate_jobs`` (scheduled at ``send_at``), and
the two rows procrastinate's insert triggers add to ``procrastinate_events`` ("scheduled"
at the due time, "deferred" now), and its tenant's group learning of it (the fair-share
trigger of migration 0011). All of the default tenant. Loading ten million through those row triggers takes
tens of minutes; here each chunk is three set-based statements with the session's row
triggers off (``session_replication_role = replica``), writing the triggers' rows itself,
and chunks load on several connections at once. The indexes are maintained row by row, as
in service, so that their size (and the disk per notification) is what a service that
scheduled them one by one would have; `tests/test_bench_tools.py` checks that the rows
equal what the triggers write.
"""

from __future__ import annotations

import concurrent.futures

import psycopg

from notifier.queue.tables import JOB_EVENT_TYPE, JOB_EVENTS, JOBS

# One chunk: notification ids chosen up front, jobs taking their ids from the sequence.
LOAD_CHUNK = f"""
WITH planned AS (
    SELECT gen_random_uuid() AS notification_id,
           nextval(pg_get_serial_sequence('{JOBS}', 'id')) AS job_id,
           now() + interval '30 days' + n * interval '1 second' AS send_at,
           n
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n
), jobs AS (
    INSERT INTO {JOBS} (id, queue_name, task_name, priority, args, scheduled_at)
    SELECT job_id, 'deliveries', 'notifier.deliver', 0,
           jsonb_build_object('notification_id', notification_id::text, 'tenant_id', 'default'),
           send_at
    FROM planned
    RETURNING id, scheduled_at
), grouped AS (
    -- What the fair-share trigger (migration 0011) notes for the jobs' group.
    INSERT INTO notifier.job_groups AS groups (queue_name, tenant_id, priority, due_at)
    SELECT 'deliveries', 'default', 0, min(scheduled_at) FROM jobs
    ON CONFLICT (queue_name, tenant_id, priority) DO UPDATE
        SET due_at = least(groups.due_at, excluded.due_at)
), events AS (
    -- What procrastinate's insert triggers write for a scheduled job.
    INSERT INTO {JOB_EVENTS} (job_id, type, at)
    SELECT id, kind.type, CASE WHEN kind.type = 'scheduled' THEN scheduled_at ELSE now() END
    FROM jobs CROSS JOIN (VALUES ('scheduled'::{JOB_EVENT_TYPE}),
                                 ('deferred'::{JOB_EVENT_TYPE})) AS kind (type)
)
INSERT INTO notifier.notifications
    (id, tenant_id, notification_type, channel, recipient, context, send_at, status, job_id)
SELECT notification_id, 'default', %(type)s, 'webhook', 'http://127.0.0.1:9/never',
       jsonb_build_object('n', n), send_at, 'pending', job_id
FROM planned
"""


def load_chunk(url: str, first: int, last: int, notification_type: str) -> None:
    with psycopg.connect(url) as conn:
        # Only this transaction's row triggers are off (the FK checks with them): the
        # rows they would write are written by the statement itself.
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(LOAD_CHUNK.encode(), {"first": first, "last": last, "type": notification_type})


def load_pending(
    url: str,
    rows: int,
    *,
    notification_type: str = "bench.future",
    chunk: int = 250_000,
    connections: int = 2,
) -> None:
    """``rows`` pending webhook notifications due in 30 days and later, with their jobs."""
    ranges = [(first, min(rows, first + chunk - 1)) for first in range(1, rows + 1, chunk)]
    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        for done in [
            pool.submit(load_chunk, url, first, last, notification_type) for first, last in ranges
        ]:
            done.result()
