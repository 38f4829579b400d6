"""SQL for recipient opt-outs. Functions never commit."""

from __future__ import annotations

import uuid

from notifier.db import Connection
from notifier.pagination import Cursor
from notifier.preferences.schemas import OptOut, OptOutCreate, OptOutSource, opt_out_from_row


async def upsert_opt_out(
    conn: Connection, tenant_id: str, opt_out: OptOutCreate, source: OptOutSource
) -> tuple[OptOut, bool]:
    """Record the opt-out (once per scope); the stored row and whether it is new.

    Opting out twice of the same scope keeps the first row, with the newer reason if one
    is given.
    """
    cursor = await conn.execute(
        """
        INSERT INTO notifier.recipient_preferences AS p
            (tenant_id, recipient, channel, notification_type, reason, source)
        VALUES (%(tenant_id)s, %(recipient)s, %(channel)s, %(notification_type)s, %(reason)s,
                %(source)s)
        ON CONFLICT (tenant_id, lower(recipient), coalesce(channel, ''),
                     coalesce(notification_type, ''))
        DO UPDATE SET reason = CASE WHEN excluded.reason <> '' THEN excluded.reason
                                    ELSE p.reason END
        RETURNING *, (xmax = 0) AS inserted
        """,
        {
            "tenant_id": tenant_id,
            "recipient": opt_out.recipient,
            "channel": opt_out.channel,
            "notification_type": opt_out.notification_type,
            "reason": opt_out.reason,
            "source": source,
        },
    )
    row = await cursor.fetchone()
    assert row is not None
    return opt_out_from_row(row), bool(row["inserted"])


async def list_opt_outs(
    conn: Connection,
    tenant_id: str,
    *,
    limit: int,
    recipient: str | None = None,
    after: Cursor | None = None,
) -> list[OptOut]:
    """A page of the tenant's opt-outs, newest first, optionally for one recipient."""
    cursor = await conn.execute(
        """
        SELECT * FROM notifier.recipient_preferences
        WHERE tenant_id = %(tenant_id)s
          AND (%(recipient)s::text IS NULL OR lower(recipient) = lower(%(recipient)s))
          AND (%(after_created_at)s::timestamptz IS NULL
               OR (created_at, id) < (%(after_created_at)s, %(after_id)s::uuid))
        ORDER BY created_at DESC, id DESC
        LIMIT %(limit)s
        """,
        {
            "tenant_id": tenant_id,
            "recipient": recipient,
            "after_created_at": after.created_at if after else None,
            "after_id": after.id if after else None,
            "limit": limit,
        },
    )
    return [opt_out_from_row(row) for row in await cursor.fetchall()]


async def delete_opt_out(conn: Connection, tenant_id: str, opt_out_id: uuid.UUID) -> bool:
    """Opt back in: remove one opt-out. True if it existed."""
    cursor = await conn.execute(
        "DELETE FROM notifier.recipient_preferences WHERE tenant_id = %s AND id = %s",
        [tenant_id, opt_out_id],
    )
    return cursor.rowcount == 1


async def covering_opt_out(
    conn: Connection, *, tenant_id: str, recipient: str, channel: str, notification_type: str
) -> OptOut | None:
    """The oldest opt-out that covers this recipient, channel and type, if any."""
    cursor = await conn.execute(
        """
        SELECT * FROM notifier.recipient_preferences
        WHERE tenant_id = %(tenant_id)s
          AND lower(recipient) = lower(%(recipient)s)
          AND (channel IS NULL OR channel = %(channel)s)
          AND (notification_type IS NULL
               OR notification_type = %(type)s
               OR notification_type = '*'
               OR (notification_type LIKE '%%.*'
                   AND starts_with(%(type)s, rtrim(notification_type, '*'))))
        ORDER BY created_at, id
        LIMIT 1
        """,
        {
            "tenant_id": tenant_id,
            "recipient": recipient,
            "channel": channel,
            "type": notification_type,
        },
    )
    row = await cursor.fetchone()
    return opt_out_from_row(row) if row else None
