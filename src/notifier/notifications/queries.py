"""SQL for notifications and their delivery attempts. Functions never commit."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from notifier.db import Connection
from notifier.notifications.schemas import (
    DeliveryAttempt,
    Notification,
    NotificationDetail,
    NotificationStatus,
    notification_from_row,
)
from notifier.pagination import Cursor


async def insert_notification(conn: Connection, values: dict[str, Any]) -> Notification:
    """Insert one notification row (``values`` holds every column but the timestamps)."""
    cursor = await conn.execute(
        """
        INSERT INTO notifier.notifications (
            id, tenant_id, event_id, rule_id, notification_type, entity_id, channel, recipient,
            email, phone, template, context, target_date, lead_time, send_at, status,
            last_error, job_id, timezone, quiet_hours, traceparent
        ) VALUES (
            %(id)s, %(tenant_id)s, %(event_id)s, %(rule_id)s, %(notification_type)s,
            %(entity_id)s, %(channel)s, %(recipient)s, %(email)s, %(phone)s, %(template)s,
            %(context)s, %(target_date)s, %(lead_time)s, %(send_at)s, %(status)s,
            %(last_error)s, %(job_id)s, %(timezone)s, %(quiet_hours)s, %(traceparent)s
        )
        RETURNING *
        """,
        values,
    )
    row = await cursor.fetchone()
    assert row is not None
    return notification_from_row(row)


async def get_notification(
    conn: Connection, tenant_id: str, notification_id: uuid.UUID
) -> NotificationDetail | None:
    """One of the tenant's notifications with its delivery attempts, or None."""
    cursor = await conn.execute(
        "SELECT * FROM notifier.notifications WHERE tenant_id = %s AND id = %s",
        [tenant_id, notification_id],
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    cursor = await conn.execute(
        """
        SELECT attempt, channel, outcome, status_code, error, started_at, finished_at
        FROM notifier.delivery_attempts
        WHERE notification_id = %s
        ORDER BY id
        """,
        [notification_id],
    )
    attempts = [DeliveryAttempt(**attempt) for attempt in await cursor.fetchall()]
    notification = notification_from_row(row)
    return NotificationDetail(
        **{name: getattr(notification, name) for name in Notification.__struct_fields__},
        delivery_attempts=attempts,
    )


async def lock_notification(
    conn: Connection, notification_id: uuid.UUID, *, tenant_id: str | None
) -> dict[str, Any] | None:
    """The notification row, locked until the transaction ends.

    Delivery, cancel and replay all take this lock first, so their decisions about the
    status can never interleave: a cancel waits for an in-flight send and sees its outcome.
    The API passes the caller's ``tenant_id`` (another tenant's row is None, like a missing
    one); the worker, which acts on ids it enqueued itself, passes None.
    """
    cursor = await conn.execute(
        """
        SELECT * FROM notifier.notifications
        WHERE id = %(id)s AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s)
        FOR UPDATE
        """,
        {"id": notification_id, "tenant_id": tenant_id},
    )
    return await cursor.fetchone()


async def list_notifications(
    conn: Connection,
    tenant_id: str,
    *,
    limit: int,
    after: Cursor | None = None,
    status: NotificationStatus | None = None,
    notification_type: str | None = None,
    entity_id: str | None = None,
    event_id: uuid.UUID | None = None,
    created_after: datetime.datetime | None = None,
    created_before: datetime.datetime | None = None,
) -> list[Notification]:
    """A page of the tenant's notifications, newest first, matching every filter given."""
    cursor = await conn.execute(
        """
        SELECT * FROM notifier.notifications
        WHERE tenant_id = %(tenant_id)s
          AND (%(status)s::text IS NULL OR status = %(status)s)
          AND (%(type)s::text IS NULL OR notification_type = %(type)s)
          AND (%(entity_id)s::text IS NULL OR entity_id = %(entity_id)s)
          AND (%(event_id)s::uuid IS NULL OR event_id = %(event_id)s)
          AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s)
          AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s)
          AND (%(after_created_at)s::timestamptz IS NULL
               OR (created_at, id) < (%(after_created_at)s, %(after_id)s::uuid))
        ORDER BY created_at DESC, id DESC
        LIMIT %(limit)s
        """,
        {
            "tenant_id": tenant_id,
            "status": status,
            "type": notification_type,
            "entity_id": entity_id,
            "event_id": event_id,
            "created_after": created_after,
            "created_before": created_before,
            "after_created_at": after.created_at if after else None,
            "after_id": after.id if after else None,
            "limit": limit,
        },
    )
    return [notification_from_row(row) for row in await cursor.fetchall()]


async def set_status(
    conn: Connection,
    notification_id: uuid.UUID,
    status: NotificationStatus,
    *,
    last_error: str | None = None,
) -> Notification:
    """Move a (locked) notification to ``status``, stamping sent_at or cancelled_at."""
    cursor = await conn.execute(
        """
        UPDATE notifier.notifications
        SET status = %(status)s,
            last_error = coalesce(%(last_error)s, last_error),
            sent_at = CASE WHEN %(status)s = 'sent' THEN now() ELSE sent_at END,
            cancelled_at = CASE WHEN %(status)s = 'cancelled' THEN now() ELSE cancelled_at END,
            updated_at = now()
        WHERE id = %(id)s
        RETURNING *
        """,
        {"id": notification_id, "status": status, "last_error": last_error},
    )
    row = await cursor.fetchone()
    assert row is not None
    return notification_from_row(row)


async def record_attempt(
    conn: Connection,
    *,
    notification_id: uuid.UUID,
    attempt: int,
    job_id: int | None,
    channel: str,
    outcome: str,
    started_at: datetime.datetime,
    status_code: int | None = None,
    error: str | None = None,
) -> None:
    """Record one delivery attempt and count it on the notification."""
    await conn.execute(
        """
        WITH attempt AS (
            INSERT INTO notifier.delivery_attempts
                (notification_id, attempt, job_id, channel, outcome, status_code, error,
                 started_at, finished_at)
            VALUES (%(notification_id)s, %(attempt)s, %(job_id)s, %(channel)s, %(outcome)s,
                    %(status_code)s, %(error)s, %(started_at)s,
                    -- now() is when the transaction began, before the send: use the clock.
                    clock_timestamp())
        )
        UPDATE notifier.notifications
        SET attempts = %(attempt)s, last_error = %(error)s, updated_at = now()
        WHERE id = %(notification_id)s
        """,
        {
            "notification_id": notification_id,
            "attempt": attempt,
            "job_id": job_id,
            "channel": channel,
            "outcome": outcome,
            "status_code": status_code,
            "error": error,
            "started_at": started_at,
        },
    )


async def start_new_round(
    conn: Connection, notification_id: uuid.UUID, job_id: int, traceparent: str | None = None
) -> Notification:
    """Make a failed or dead notification pending again, delivered by ``job_id``, now.

    With a ``traceparent``, the new round is traced as part of that (the replay's) trace.
    """
    cursor = await conn.execute(
        """
        UPDATE notifier.notifications
        SET status = 'pending', attempts = 0, job_id = %(job_id)s, send_at = now(),
            traceparent = coalesce(%(traceparent)s, traceparent), updated_at = now()
        WHERE id = %(id)s
        RETURNING *
        """,
        {"id": notification_id, "job_id": job_id, "traceparent": traceparent},
    )
    row = await cursor.fetchone()
    assert row is not None
    return notification_from_row(row)


async def note_error(conn: Connection, notification_id: uuid.UUID, error: str) -> None:
    """Record ``error`` on a pending notification without changing its status."""
    await conn.execute(
        """
        UPDATE notifier.notifications SET last_error = %s, updated_at = now()
        WHERE id = %s AND status = 'pending'
        """,
        [error, notification_id],
    )
