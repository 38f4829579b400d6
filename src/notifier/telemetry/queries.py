"""SQL behind metrics and readiness: cheap aggregates over the queue and the notifications.

Functions take a connection and never commit.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from notifier.db import Connection


@dataclass(frozen=True, slots=True)
class QueueState:
    """Jobs of one queue that are due now and still waiting."""

    due_jobs: int
    # How long the longest-waiting due job has waited since it became due.
    oldest_due_seconds: float


async def queue_states(conn: Connection) -> dict[str, QueueState]:
    """Due, waiting jobs per queue (queues with none are absent).

    A job is due from its ``scheduled_at``, or, if it has none, from when it was deferred
    (its first procrastinate event). Among unscheduled jobs the lowest id was deferred
    first, so one event lookup per queue finds the oldest.
    """
    cursor = await conn.execute(
        """
        WITH due AS (
            SELECT queue_name,
                   count(*) AS due_jobs,
                   min(scheduled_at) AS earliest_scheduled,
                   min(id) FILTER (WHERE scheduled_at IS NULL) AS first_unscheduled
            FROM procrastinate_jobs
            WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())
            GROUP BY queue_name
        )
        SELECT queue_name, due_jobs,
               extract(epoch FROM now() - least(
                   earliest_scheduled,
                   (SELECT min(at) FROM procrastinate_events WHERE job_id = first_unscheduled)
               ))::float8 AS oldest_due_seconds
        FROM due
        """
    )
    return {
        row["queue_name"]: QueueState(
            due_jobs=row["due_jobs"], oldest_due_seconds=max(0.0, row["oldest_due_seconds"] or 0.0)
        )
        for row in await cursor.fetchall()
    }


async def live_workers(conn: Connection, *, heartbeat_within_seconds: float) -> int:
    """Workers whose last heartbeat is recent enough for procrastinate to think them alive."""
    cursor = await conn.execute(
        """
        SELECT count(*) AS alive FROM procrastinate_workers
        WHERE last_heartbeat > now() - make_interval(secs => %s)
        """,
        [heartbeat_within_seconds],
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row["alive"])


async def notification_counts(conn: Connection) -> dict[str, int]:
    """Notifications per status (statuses with none are absent)."""
    cursor = await conn.execute(
        "SELECT status, count(*) AS n FROM notifier.notifications GROUP BY status"
    )
    return {row["status"]: int(row["n"]) for row in await cursor.fetchall()}


async def schema_revisions(conn: Connection) -> set[str]:
    """The Alembic revisions the database says it is at (none if it was never migrated)."""
    cursor = await conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL AS migrated")
    row = await cursor.fetchone()
    if row is None or not row["migrated"]:
        return set()
    cursor = await conn.execute("SELECT version_num FROM alembic_version")
    return {row["version_num"] for row in await cursor.fetchall()}


async def limit_statement_time(conn: Connection, seconds: float) -> None:
    """Cancel any statement of the current transaction that runs longer than ``seconds``."""
    await conn.execute(
        "SELECT set_config('statement_timeout', %s, true)", [f"{int(seconds * 1000)}ms"]
    )


# Past this many due jobs of one queue and tenant the overview says "at least": counting
# a backlog costs a read per job, and a page must not cost more as the backlog grows.
DUE_JOBS_COUNT_CAP = 10_000


@dataclass(frozen=True, slots=True)
class TenantQueueState:
    """One tenant's jobs of one queue: due and waiting, overdue among them, and running."""

    due_jobs: int
    overdue_jobs: int
    running_jobs: int
    # How long the longest-waiting due job has waited since it became due (0 when none).
    oldest_due_seconds: float
    # The counts stopped at DUE_JOBS_COUNT_CAP: there are at least that many.
    capped: bool


async def tenant_queue_states(
    conn: Connection, tenant_id: str, *, overdue_seconds: float
) -> dict[str, TenantQueueState]:
    """The tenant's due, overdue and running jobs per queue (queues with none are absent).

    Jobs name their tenant in their arguments (migration 0011). The tenant's groups (queue
    and priority, from ``notifier.job_groups`` and the arrivals not yet moved there) give
    the exact prefixes of the two group indexes, so each count reads only due entries, at
    most DUE_JOBS_COUNT_CAP of them per group and kind. A job to run now is due since it
    was deferred (its first event); "overdue" is due for longer than ``overdue_seconds``.
    Among jobs to run now the oldest come first by id, so the overdue ones are counted
    among the first DUE_JOBS_COUNT_CAP.
    """
    cursor = await conn.execute(
        """
        WITH groups AS (
            SELECT queue_name, priority FROM notifier.job_groups WHERE tenant_id = %(tenant)s
            UNION
            SELECT queue_name, priority FROM notifier.job_group_arrivals
            WHERE tenant_id = %(tenant)s
        ), due AS (
            SELECT g.queue_name, run_now.n + scheduled.n AS due_jobs,
                   run_now.overdue + scheduled.overdue AS overdue_jobs,
                   least(run_now.since, scheduled.since) AS oldest_due_since,
                   run_now.n >= %(cap)s OR scheduled.n >= %(cap)s AS capped
            FROM groups AS g
            CROSS JOIN LATERAL (
                SELECT count(*) AS n,
                       count(*) FILTER (WHERE deferred_at <= now() - %(overdue)s) AS overdue,
                       min(deferred_at) AS since
                FROM (
                    SELECT (SELECT min(e.at) FROM procrastinate_events AS e
                            WHERE e.job_id = j.id) AS deferred_at
                    FROM procrastinate_jobs AS j
                    WHERE j.queue_name = g.queue_name
                      AND coalesce(j.args->>'tenant_id', '') = %(tenant)s
                      AND j.priority = g.priority
                      AND j.status = 'todo' AND j.scheduled_at IS NULL
                    ORDER BY j.id
                    LIMIT %(cap)s
                ) AS oldest
            ) AS run_now
            CROSS JOIN LATERAL (
                SELECT count(*) AS n,
                       count(*) FILTER (WHERE scheduled_at <= now() - %(overdue)s) AS overdue,
                       min(scheduled_at) AS since
                FROM (
                    SELECT j.scheduled_at
                    FROM procrastinate_jobs AS j
                    WHERE j.queue_name = g.queue_name
                      AND coalesce(j.args->>'tenant_id', '') = %(tenant)s
                      AND j.priority = g.priority
                      AND j.status = 'todo' AND j.scheduled_at IS NOT NULL
                      AND j.scheduled_at <= now()
                    ORDER BY j.scheduled_at
                    LIMIT %(cap)s
                ) AS earliest
            ) AS scheduled
        ), running AS (
            SELECT queue_name, count(*) AS running_jobs
            FROM procrastinate_jobs
            WHERE status = 'doing' AND worker_id IS NOT NULL
              AND coalesce(args->>'tenant_id', '') = %(tenant)s
            GROUP BY queue_name
        )
        SELECT coalesce(due.queue_name, running.queue_name) AS queue_name,
               coalesce(sum(due.due_jobs), 0)::bigint AS due_jobs,
               coalesce(sum(due.overdue_jobs), 0)::bigint AS overdue_jobs,
               coalesce(max(running.running_jobs), 0)::bigint AS running_jobs,
               extract(epoch FROM now() - min(due.oldest_due_since))::float8
                   AS oldest_due_seconds,
               coalesce(bool_or(due.capped), false) AS capped
        FROM due FULL JOIN running ON running.queue_name = due.queue_name
        GROUP BY 1
        """,
        {
            "tenant": tenant_id,
            "cap": DUE_JOBS_COUNT_CAP,
            "overdue": datetime.timedelta(seconds=overdue_seconds),
        },
    )
    return {
        row["queue_name"]: TenantQueueState(
            due_jobs=row["due_jobs"],
            overdue_jobs=row["overdue_jobs"],
            running_jobs=row["running_jobs"],
            oldest_due_seconds=max(0.0, row["oldest_due_seconds"] or 0.0),
            capped=row["capped"],
        )
        for row in await cursor.fetchall()
        if row["due_jobs"] or row["running_jobs"]
    }
