"""Choosing notifications by filter: the dashboard's list, and the bulk replay and cancel
(API and dashboard). Query functions take a connection and never commit.

Every query here is the tenant's only. The bulk ones lock what they change and skip rows
another transaction holds (a delivery in flight): waiting for them could deadlock with a
delivery batch that locks in another order, and a row being delivered is not in the state
the bulk action wants anyway. The count each returns is what was changed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Annotated, Any

import msgspec

from notifier.api_types import MAX_FILTER_LENGTH, AwareDatetime
from notifier.db import Connection
from notifier.notifications.schemas import Notification, NotificationStatus, notification_from_row
from notifier.pagination import Cursor

# One bulk action changes at most this many notifications: its statements and the jobs it
# defers stay bounded whatever the tenant stored. Run it again for the rest.
BULK_LIMIT = 1000

FilterText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_FILTER_LENGTH)]


class NotificationFilter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which of a tenant's notifications: every field given must match (exactly; times:
    ``created_after`` inclusive, ``created_before`` exclusive)."""

    status: NotificationStatus | None = None
    notification_type: FilterText | None = None
    entity_id: FilterText | None = None
    recipient: FilterText | None = None
    channel: FilterText | None = None
    created_after: AwareDatetime | None = None
    created_before: AwareDatetime | None = None

    def statuses_within(self, wanted: Iterable[NotificationStatus]) -> list[NotificationStatus]:
        """The statuses of ``wanted`` this filter lets through."""
        return [s for s in wanted if self.status is None or s is self.status]


_MATCHES = """
    tenant_id = %(tenant_id)s
    AND (%(status)s::text IS NULL OR status = %(status)s)
    AND (%(type)s::text IS NULL OR notification_type = %(type)s)
    AND (%(entity_id)s::text IS NULL OR entity_id = %(entity_id)s)
    AND (%(recipient)s::text IS NULL OR recipient = %(recipient)s)
    AND (%(channel)s::text IS NULL OR channel = %(channel)s)
    AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s)
    AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s)
"""


def _parameters(tenant_id: str, where: NotificationFilter) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "status": where.status,
        "type": where.notification_type,
        "entity_id": where.entity_id,
        "recipient": where.recipient,
        "channel": where.channel,
        "created_after": where.created_after,
        "created_before": where.created_before,
    }


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
    cursor = await conn.execute(
        f"""
        SELECT * FROM notifier.notifications
        WHERE {_MATCHES}
          AND (%(after_created_at)s::timestamptz IS NULL
               OR (created_at, id) < (%(after_created_at)s, %(after_id)s::uuid))
        ORDER BY created_at DESC, id DESC
        LIMIT %(limit)s
        """,  # noqa: S608 - _MATCHES is a constant; every value is a parameter
        {
            **_parameters(tenant_id, where),
            "after_created_at": after.created_at if after else None,
            "after_id": after.id if after else None,
            "limit": limit,
        },
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
    cursor = await conn.execute(
        f"""
        SELECT count(*) AS n FROM (
            SELECT 1 FROM notifier.notifications
            WHERE {_MATCHES} AND status = ANY(%(statuses)s::text[])
            LIMIT %(cap)s
        ) AS matching
        """,  # noqa: S608 - _MATCHES is a constant; every value is a parameter
        {**_parameters(tenant_id, where), "statuses": list(statuses), "cap": cap},
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
    cursor = await conn.execute(
        f"""
        SELECT id, job_id FROM notifier.notifications
        WHERE {_MATCHES} AND status = ANY(%(statuses)s::text[])
        ORDER BY created_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
        """,  # noqa: S608 - _MATCHES is a constant; every value is a parameter
        {**_parameters(tenant_id, where), "statuses": list(statuses), "limit": limit},
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
