"""SQL for rate limits: per-tenant overrides and the shared GCRA buckets. Never commits."""

from __future__ import annotations

import datetime
from typing import Any

from notifier.db import Connection
from notifier.rate_limits.gcra import Bucket


async def lock_bucket(
    conn: Connection, tenant_id: str, channel: str
) -> tuple[datetime.datetime, Bucket]:
    """The database's clock and the (tenant, channel) bucket, created if new and locked.

    Every worker reads the time from PostgreSQL, so their clocks need not agree.
    """
    cursor = await conn.execute(
        """
        INSERT INTO notifier.rate_limit_buckets AS b (tenant_id, channel, tat, queue_tat)
        VALUES (%(tenant_id)s, %(channel)s, statement_timestamp(), statement_timestamp())
        ON CONFLICT (tenant_id, channel) DO UPDATE SET tat = b.tat
        RETURNING tat, queue_tat, statement_timestamp() AS now
        """,
        {"tenant_id": tenant_id, "channel": channel},
    )
    row = await cursor.fetchone()
    assert row is not None
    return row["now"], Bucket(tat=row["tat"], queue_tat=row["queue_tat"])


async def save_bucket(conn: Connection, tenant_id: str, channel: str, bucket: Bucket) -> None:
    """Store the (locked) bucket's new state."""
    await conn.execute(
        """
        UPDATE notifier.rate_limit_buckets SET tat = %(tat)s, queue_tat = %(queue_tat)s
        WHERE tenant_id = %(tenant_id)s AND channel = %(channel)s
        """,
        {
            "tenant_id": tenant_id,
            "channel": channel,
            "tat": bucket.tat,
            "queue_tat": bucket.queue_tat,
        },
    )


async def tenant_limits(conn: Connection, tenant_id: str) -> list[dict[str, Any]]:
    """The tenant's overrides, by channel."""
    cursor = await conn.execute(
        "SELECT * FROM notifier.rate_limits WHERE tenant_id = %s ORDER BY channel", [tenant_id]
    )
    return await cursor.fetchall()


async def upsert_limit(
    conn: Connection, tenant_id: str, channel: str, per_second: float, burst: int
) -> dict[str, Any]:
    """Set the tenant's override for ``channel``; it applies to the next send."""
    cursor = await conn.execute(
        """
        INSERT INTO notifier.rate_limits (tenant_id, channel, per_second, burst)
        VALUES (%(tenant_id)s, %(channel)s, %(per_second)s, %(burst)s)
        ON CONFLICT (tenant_id, channel) DO UPDATE
        SET per_second = excluded.per_second, burst = excluded.burst, updated_at = now()
        RETURNING *
        """,
        {"tenant_id": tenant_id, "channel": channel, "per_second": per_second, "burst": burst},
    )
    row = await cursor.fetchone()
    assert row is not None
    return row


async def delete_limit(conn: Connection, tenant_id: str, channel: str) -> bool:
    """Drop the tenant's override (the default applies again). True if there was one."""
    cursor = await conn.execute(
        "DELETE FROM notifier.rate_limits WHERE tenant_id = %s AND channel = %s",
        [tenant_id, channel],
    )
    return cursor.rowcount == 1
