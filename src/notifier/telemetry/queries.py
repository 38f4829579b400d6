"""SQL behind metrics and readiness: cheap aggregates over the queue and the notifications.

Functions take a connection and never commit.
"""

from __future__ import annotations

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
