"""SQL for recipient opt-outs. Functions never commit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

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


class Addressed(Protocol):
    """What an opt-out is matched against: a notification's tenant, recipient, channel and
    type."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def recipient(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def notification_type(self) -> str: ...


async def covering_opt_outs(
    conn: Connection, notifications: Sequence[Addressed]
) -> dict[uuid.UUID, OptOut]:
    """For each notification an opt-out covers, the oldest such opt-out, by the
    notification's id; one query for all of them."""
    cursor = await conn.execute(
        """
        SELECT wanted.notification_id, opt_out.*
        FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::text[], %b::text[])
            AS wanted (notification_id, tenant_id, recipient, channel, notification_type)
        CROSS JOIN LATERAL (
            SELECT * FROM notifier.recipient_preferences AS p
            WHERE p.tenant_id = wanted.tenant_id
              AND lower(p.recipient) = lower(wanted.recipient)
              AND (p.channel IS NULL OR p.channel = wanted.channel)
              AND (p.notification_type IS NULL
                   OR p.notification_type = wanted.notification_type
                   OR p.notification_type = '*'
                   OR (p.notification_type LIKE '%%.*'
                       AND starts_with(wanted.notification_type,
                                       rtrim(p.notification_type, '*'))))
            ORDER BY p.created_at, p.id
            LIMIT 1
        ) AS opt_out
        """,
        [
            [n.id for n in notifications],
            [n.tenant_id for n in notifications],
            [n.recipient for n in notifications],
            [n.channel for n in notifications],
            [n.notification_type for n in notifications],
        ],
    )
    return {row["notification_id"]: opt_out_from_row(row) for row in await cursor.fetchall()}
