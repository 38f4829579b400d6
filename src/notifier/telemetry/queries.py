"""SQL behind metrics and readiness: cheap aggregates over the notifications and the schema.

The queue's (due jobs, live workers) are the queue adapter's (:mod:`notifier.queue.jobs`).

Functions take a connection and never commit.
"""

from __future__ import annotations

from notifier.db import Connection


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
