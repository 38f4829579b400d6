"""Choosing notifications by filter (:class:`~notifier.notifications.schemas.NotificationFilter`):
the API's and the dashboard's list, an event's notifications, and the bulk replay and cancel
(API and dashboard). Query functions take a connection and never commit.

Every query here is the tenant's only. The bulk ones lock what they change and skip rows
another transaction holds (a delivery in flight): waiting for them could deadlock with a
delivery batch that locks in another order, and a row being delivered is not in the state
the bulk action wants anyway. The count each returns is what was changed.
"""

from __future__ import annotations

import uuid
from typing import Any, LiteralString, NamedTuple

import msgspec
from psycopg import sql

from notifier.db import Connection
from notifier.notifications.schemas import (
    Notification,
    NotificationFilter,
    NotificationStatus,
    notification_from_row,
)
from notifier.pagination import Cursor

# One bulk action changes at most this many notifications: its statements and the jobs it
# defers stay bounded whatever the tenant stored. Run it again for the rest.
BULK_LIMIT = 1000

# The filter's fields matched by equality, and their columns.
_EQUAL_COLUMNS: dict[str, LiteralString] = {
    "status": "status",
    "notification_type": "notification_type",
    "entity_id": "entity_id",
    "recipient": "recipient",
    "channel": "channel",
    "key": "key",
    "event_id": "event_id",
}


class _Where(NamedTuple):
    """A WHERE clause and the values of its placeholders."""

    clause: sql.Composed
    parameters: dict[str, Any]


def _where(
    tenant_id: str,
    where: NotificationFilter,
    *,
    statuses: list[NotificationStatus] | None = None,
    after: Cursor | None = None,
) -> _Where:
    """The tenant's rows matching ``where`` (in one of ``statuses``, if given; after the
    cursor ``after``, if given, newest first).

    Each filter given adds its own predicate and none other does: a statement holding
    ``(%(x)s IS NULL OR col = %(x)s)`` for every filter gets one generic plan once psycopg
    prepares it, a plan that can use no index but the tenant's (3.3 s to find a recipient
    among 1,000,000 rows). Every value stays a parameter.
    """
    predicates: list[sql.Composable] = [sql.SQL("tenant_id = %(tenant_id)s")]
    parameters: dict[str, Any] = {"tenant_id": tenant_id}
    for field, column in _EQUAL_COLUMNS.items():
        value = getattr(where, field)
        if value is not None:
            predicates.append(
                sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(field))
            )
            parameters[field] = value
    if where.created_after is not None:
        predicates.append(sql.SQL("created_at >= %(created_after)s"))
        parameters["created_after"] = where.created_after
    if where.created_before is not None:
        predicates.append(sql.SQL("created_at < %(created_before)s"))
        parameters["created_before"] = where.created_before
    if statuses is not None:
        predicates.append(sql.SQL("status = ANY(%(statuses)s::text[])"))
        parameters["statuses"] = [str(status) for status in statuses]
    if after is not None:
        predicates.append(sql.SQL("(created_at, id) < (%(after_created_at)s, %(after_id)s)"))
        parameters["after_created_at"] = after.created_at
        parameters["after_id"] = after.id
    return _Where(sql.SQL(" AND ").join(predicates), parameters)


async def select_matching(
    conn: Connection,
    tenant_id: str,
    where: NotificationFilter,
    *,
    limit: int,
    after: Cursor | None = None,
) -> list[Notification]:
    """Up to ``limit`` of the tenant's notifications matching ``where``, newest first,
    after the cursor ``after``."""
    matching = _where(tenant_id, where, after=after)
    cursor = await conn.execute(
        sql.SQL(
            """
            SELECT * FROM notifier.notifications
            WHERE {}
            ORDER BY created_at DESC, id DESC
            LIMIT %(limit)s
            """
        ).format(matching.clause),
        {**matching.parameters, "limit": limit},
    )
    return [notification_from_row(row) for row in await cursor.fetchall()]


async def count_matching(
    conn: Connection,
    tenant_id: str,
    where: NotificationFilter,
    statuses: list[NotificationStatus],
    *,
    cap: int,
) -> int:
    """How many of the tenant's notifications match ``where`` and are in one of
    ``statuses``, counting no further than ``cap``."""
    matching = _where(tenant_id, where, statuses=statuses)
    cursor = await conn.execute(
        sql.SQL(
            """
            SELECT count(*) AS n FROM (
                SELECT 1 FROM notifier.notifications WHERE {} LIMIT %(cap)s
            ) AS matching
            """
        ).format(matching.clause),
        {**matching.parameters, "cap": cap},
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row["n"])


class LockedNotification(msgspec.Struct, frozen=True):
    """A notification a bulk action holds the lock of."""

    id: uuid.UUID
    job_id: int | None


async def lock_matching(
    conn: Connection,
    tenant_id: str,
    where: NotificationFilter,
    statuses: list[NotificationStatus],
    *,
    limit: int,
) -> list[LockedNotification]:
    """Lock up to ``limit`` of the tenant's notifications matching ``where`` in one of
    ``statuses``, oldest first, skipping rows another transaction holds."""
    matching = _where(tenant_id, where, statuses=statuses)
    cursor = await conn.execute(
        sql.SQL(
            """
            SELECT id, job_id FROM notifier.notifications
            WHERE {}
            ORDER BY created_at, id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
            """
        ).format(matching.clause),
        {**matching.parameters, "limit": limit},
    )
    return [LockedNotification(row["id"], row["job_id"]) for row in await cursor.fetchall()]


async def start_new_rounds(
    conn: Connection, job_ids: dict[uuid.UUID, int], traceparent: str | None
) -> int:
    """Make each (locked) notification pending again, delivered by its job in ``job_ids``,
    now (what ``queries.start_new_round`` does for one); how many."""
    cursor = await conn.execute(
        """
        UPDATE notifier.notifications AS n
        SET status = 'pending', attempts = 0, job_id = new.job_id, send_at = now(),
            traceparent = coalesce(%(traceparent)s, n.traceparent), updated_at = now()
        FROM unnest(%(ids)s::uuid[], %(job_ids)s::bigint[]) AS new (id, job_id)
        WHERE n.id = new.id
        """,
        {"ids": list(job_ids), "job_ids": list(job_ids.values()), "traceparent": traceparent},
    )
    return cursor.rowcount


async def mark_cancelled(conn: Connection, ids: list[uuid.UUID]) -> int:
    """Cancel each (locked) notification of ``ids``; how many."""
    cursor = await conn.execute(
        """
        UPDATE notifier.notifications
        SET status = 'cancelled', cancelled_at = now(), updated_at = now()
        WHERE id = ANY(%s::uuid[])
        """,
        [ids],
    )
    return cursor.rowcount


class BulkOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a bulk action did: ``count`` notifications changed (at most ``limit``; run
    it again if it reached that)."""

    count: int
    limit: int = BULK_LIMIT
