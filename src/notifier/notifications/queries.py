"""SQL for notifications and their delivery attempts. Functions never commit."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from typing import Any, LiteralString, NamedTuple

import msgspec
import psycopg
from psycopg import sql

from notifier.channels.base import WebhookTarget
from notifier.db import Connection
from notifier.notifications.localtime import QuietHours
from notifier.notifications.schemas import (
    AttemptOutcome,
    DeliveryAttempt,
    Notification,
    NotificationDetail,
    NotificationStatus,
    notification_from_row,
)
from notifier.queue import DELIVERIES_QUEUE, jobs
from notifier.rate_limits.gcra import Limit


async def _the_notification(cursor: psycopg.AsyncCursor[dict[str, Any]]) -> Notification:
    """The one notification row a statement returned (``RETURNING *``)."""
    row = await cursor.fetchone()
    assert row is not None
    return notification_from_row(row)


async def insert_notification(conn: Connection, values: dict[str, Any]) -> Notification:
    """Insert one notification row (``values`` holds every column but the timestamps)."""
    cursor = await conn.execute(
        """
        INSERT INTO notifier.notifications (
            id, tenant_id, event_id, rule_id, notification_type, entity_id, channel, recipient,
            email, phone, template, context, target_date, lead_time, send_at, status,
            last_error, job_id, timezone, quiet_hours, traceparent, key, cancelled_by_event_id,
            digest_count, digest_open, expires_at, endpoint_id
        ) VALUES (
            %(id)s, %(tenant_id)s, %(event_id)s, %(rule_id)s, %(notification_type)s,
            %(entity_id)s, %(channel)s, %(recipient)s, %(email)s, %(phone)s, %(template)s,
            %(context)s, %(target_date)s, %(lead_time)s, %(send_at)s, %(status)s,
            %(last_error)s, %(job_id)s, %(timezone)s, %(quiet_hours)s, %(traceparent)s,
            %(key)s, %(cancelled_by_event_id)s, %(digest_count)s, %(digest_open)s,
            %(expires_at)s, %(endpoint_id)s
        )
        RETURNING *
        """,
        values,
    )
    return await _the_notification(cursor)


# Rows of parallel arrays, one array per column (what :func:`insert_notifications` passes).
_INSERT_NOTIFICATIONS: LiteralString = """
INSERT INTO notifier.notifications (
    id, tenant_id, event_id, rule_id, notification_type, entity_id, channel, recipient,
    email, phone, template, context, target_date, lead_time, send_at, status,
    last_error, job_id, timezone, quiet_hours, traceparent, key, cancelled_by_event_id,
    digest_count, digest_open, expires_at, endpoint_id
)
SELECT * FROM unnest(
    %(id)s::uuid[], %(tenant_id)s::text[], %(event_id)s::uuid[], %(rule_id)s::uuid[],
    %(notification_type)s::text[], %(entity_id)s::text[], %(channel)s::text[],
    %(recipient)s::text[], %(email)s::text[], %(phone)s::text[], %(template)s::text[],
    %(context)s::jsonb[], %(target_date)s::timestamptz[], %(lead_time)s::interval[],
    %(send_at)s::timestamptz[], %(status)s::text[], %(last_error)s::text[],
    %(job_id)s::bigint[], %(timezone)s::text[], %(quiet_hours)s::jsonb[],
    %(traceparent)s::text[], %(key)s::text[], %(cancelled_by_event_id)s::uuid[],
    %(digest_count)s::int[], %(digest_open)s::boolean[], %(expires_at)s::timestamptz[],
    %(endpoint_id)s::uuid[]
)
"""
_INSERTED_COLUMNS = (
    "id", "tenant_id", "event_id", "rule_id", "notification_type", "entity_id", "channel",
    "recipient", "email", "phone", "template", "context", "target_date", "lead_time",
    "send_at", "status", "last_error", "job_id", "timezone", "quiet_hours", "traceparent",
    "key", "cancelled_by_event_id", "digest_count", "digest_open", "expires_at", "endpoint_id",
)  # fmt: skip


async def insert_notifications(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert notification rows in one statement (each ``rows`` item holds the columns of
    :func:`insert_notification`); nothing is read back, so that a batch of events pays for
    its rows once, not for decoding them too."""
    if not rows:
        return
    await conn.execute(
        _INSERT_NOTIFICATIONS,
        {name: [row[name] for row in rows] for name in _INSERTED_COLUMNS},
    )


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
    return await _the_notification(cursor)


class DeliveryRow(msgspec.Struct, frozen=True, kw_only=True):
    """A pending notification as the delivery reads it, locked (see :func:`lock_notification`)."""

    id: uuid.UUID
    tenant_id: str
    notification_type: str
    channel: str
    recipient: str
    status: NotificationStatus
    attempts: int
    send_at: datetime.datetime
    target_date: datetime.datetime | None
    lead_time: datetime.timedelta
    # When the notification was made (the row always has it; None only in hand-made rows).
    created_at: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None
    event_id: uuid.UUID | None = None
    entity_id: str | None = None
    template: str | None = None
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    timezone: str | None = None
    quiet_hours: QuietHours | None = None
    # The W3C trace context its delivery continues.
    traceparent: str | None = None
    # The tenant's own limit on the channel, if it set one, or its endpoint's.
    rate_limit: Limit | None = None
    # The bucket that limit counts against: the channel, or "endpoint:<id>" for an
    # endpoint's own limit (None: the channel).
    rate_bucket: str | None = None
    # A webhook to one of the tenant's endpoints (notifier.endpoints), and, once
    # notifier.endpoints.delivery.route_webhooks resolved it, where and how it is sent
    # (its recipient then is the URL it goes to).
    endpoint_id: uuid.UUID | None = None
    webhook: WebhookTarget | None = None


# The columns of a notification DeliveryRow holds (the others it gets from joins, or later):
# read instead of n.*, whose other 14 columns PostgreSQL sent and psycopg loaded for nothing.
_DELIVERY_COLUMNS: LiteralString = ", ".join(
    f"n.{field.name}"
    for field in msgspec.structs.fields(DeliveryRow)
    if field.name not in {"rate_limit", "rate_bucket", "webhook"}
)


def _delivery_row(row: dict[str, Any]) -> DeliveryRow:
    per_second, burst = row.pop("rate_per_second", None), row.pop("rate_burst", None)
    row["quiet_hours"] = QuietHours.from_column(row["quiet_hours"])
    delivery = msgspec.convert(row, DeliveryRow, from_attributes=False, strict=False)
    if per_second is None:
        return delivery
    return msgspec.structs.replace(delivery, rate_limit=Limit(per_second, burst))


class LockedDelivery(msgspec.Struct, frozen=True):
    """A notification locked for delivery, and the deliver job acting on it (None: a job
    deferred without an id, as the outbox trigger's were before migration 0004)."""

    notification: DeliveryRow
    job_id: int | None


_LOCK_FOR_DELIVERY = (
    "SELECT "  # noqa: S608 - the columns are DeliveryRow's field names
    + _DELIVERY_COLUMNS
    + """,
           coalesce(e.rate_per_second, limits.per_second) AS rate_per_second,
           coalesce(e.rate_burst, limits.burst) AS rate_burst,
           CASE WHEN e.rate_per_second IS NOT NULL THEN 'endpoint:' || e.id END
               AS rate_bucket
    FROM notifier.notifications AS n
    LEFT JOIN notifier.rate_limits AS limits
        ON limits.tenant_id = n.tenant_id AND limits.channel = n.channel
    LEFT JOIN notifier.endpoints AS e ON e.id = n.endpoint_id
    WHERE n.id = %s
    FOR UPDATE OF n
    """
)


async def lock_for_delivery(conn: Connection, notification_id: uuid.UUID) -> DeliveryRow | None:
    """The notification locked as by :func:`lock_notification`, for the worker, with the
    tenant's rate-limit override for its channel, read in the same round trip. A webhook
    endpoint's own rate limit takes the place of the tenant's, with a bucket of its own."""
    cursor = await conn.execute(_LOCK_FOR_DELIVERY, [notification_id])
    row = await cursor.fetchone()
    return None if row is None else _delivery_row(row)


# Due, waiting deliver jobs of one group, locked (the adapter's walk over the group's jobs),
# then their pending notifications, looked at again once locked: one statement.
_DUE_DELIVERY_JOBS = jobs.lock_due_jobs(
    join="JOIN notifier.notifications AS n ON n.job_id = jobs.id AND n.status = 'pending'",
    where="""n.channel = %(channel)s
      AND NOT EXISTS (
          SELECT 1 FROM notifier.rate_limits AS limits
          WHERE limits.tenant_id = n.tenant_id AND limits.channel = n.channel
      )
      AND NOT EXISTS (
          SELECT 1 FROM notifier.endpoints AS e
          WHERE e.id = n.endpoint_id AND e.rate_per_second IS NOT NULL
      )""",
    row_id="n.id",
)
_LOCK_DUE_DELIVERIES = (
    "WITH due AS MATERIALIZED ("
    + _DUE_DELIVERY_JOBS
    + """)
SELECT """
    + _DELIVERY_COLUMNS
    + """, due.job_id AS batch_job_id
FROM due JOIN notifier.notifications AS n ON n.id = due.row_id
WHERE n.job_id = due.job_id AND n.status = 'pending' AND n.channel = %(channel)s
ORDER BY due.position
FOR UPDATE OF n SKIP LOCKED
"""
)


async def lock_due_deliveries(
    conn: Connection,
    *,
    task_name: str,
    channel: str,
    tenant_id: str | None,
    priority: int,
    limit: int,
    after: jobs.JobPosition | None = None,
) -> list[LockedDelivery]:
    """Up to ``limit`` pending notifications of ``channel`` whose deliver jobs are due and
    waiting in the group of ``tenant_id`` (None: jobs that name no tenant) and ``priority``
    (behind the job at ``after``, see :func:`notifier.queue.jobs.due_jobs_parameters`),
    each locked with its job (rows other workers hold are skipped).

    A batch takes only its own group's jobs: the fetch shares out turns by group
    (migration 0011), and a batch is one turn. Notifications whose tenant has a rate limit
    on the channel, or whose endpoint has one, are left to their own jobs. A job whose
    notification another transaction holds (a cancel) stays locked but is not taken: it
    waits, and runs on its own once this transaction ends.
    """
    group = jobs.due_jobs_parameters(
        queue=DELIVERIES_QUEUE,
        task_name=task_name,
        tenant_id=tenant_id,
        priority=priority,
        limit=limit,
        after=after,
    )
    # Prepared at its first run rather than its fifth: planning it costs about as much as
    # running it, and a worker spreads its batches over all its pool's connections.
    cursor = await conn.execute(_LOCK_DUE_DELIVERIES, {**group, "channel": channel}, prepare=True)
    locked = []
    for row in await cursor.fetchall():
        job_id = row.pop("batch_job_id")
        locked.append(LockedDelivery(_delivery_row(row), job_id))
    return locked


async def hand_over_job(
    conn: Connection, notification_id: uuid.UUID, old_job_id: int | None, new_job_id: int
) -> None:
    """Make ``new_job_id`` the pending notification's job, if ``old_job_id`` still was.

    A cancel that came first leaves the row as it is; the new job then finds the
    notification cancelled and sends nothing.
    """
    await conn.execute(
        """
        UPDATE notifier.notifications SET job_id = %(new)s, updated_at = now()
        WHERE id = %(id)s AND status = 'pending' AND job_id IS NOT DISTINCT FROM %(old)s
        """,
        {"id": notification_id, "old": old_job_id, "new": new_job_id},
    )


class AttemptRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery attempt, as :func:`record_attempts` writes it."""

    notification_id: uuid.UUID
    attempt: int
    job_id: int | None
    channel: str
    outcome: AttemptOutcome
    started_at: datetime.datetime
    status_code: int | None
    error: str | None
    # The (locked) notification's new status, or None to leave it.
    status: NotificationStatus | None
    # For the endpoint's attempt log: its id, the request's duration, the answer's start.
    endpoint_id: uuid.UUID | None = None
    duration_ms: int | None = None
    answer: str | None = None


_RECORD_ATTEMPTS = """
WITH attempt AS (
    SELECT * FROM unnest(
        %(notification_ids)b::uuid[], %(attempts)b::integer[], %(job_ids)b::bigint[],
        %(channels)b::text[], %(outcomes)b::text[], %(status_codes)b::integer[],
        %(errors)b::text[], %(statuses)b::text[], %(started_ats)b::timestamptz[],
        %(endpoint_ids)b::uuid[], %(durations_ms)b::integer[], %(answers)b::text[]
    ) WITH ORDINALITY AS a (
        notification_id, attempt, job_id, channel, outcome, status_code, error, status,
        started_at, endpoint_id, duration_ms, answer, n
    )
), counted AS (
    UPDATE notifier.notifications AS n
    SET attempts = a.attempt,
        last_error = a.error,
        status = coalesce(a.status, n.status),
        sent_at = CASE WHEN a.status = 'sent' THEN now() ELSE n.sent_at END,
        updated_at = now()
    FROM attempt AS a
    WHERE n.id = a.notification_id
    RETURNING n.id, n.tenant_id, n.send_at
)
-- The attempt names its tenant, for the dashboard's per-tenant charts, and a delivered one
-- when its notification was due, for their lag (migration 0021). Only attempts of the
-- notifications just updated are written: delivery_attempts has no foreign key to check.
INSERT INTO notifier.delivery_attempts
    (notification_id, tenant_id, attempt, job_id, channel, outcome, status_code, error,
     started_at, finished_at, endpoint_id, duration_ms, answer, due_at)
SELECT a.notification_id, counted.tenant_id, a.attempt, a.job_id, a.channel, a.outcome,
       a.status_code, a.error, a.started_at,
       -- now() is when the transaction began, before the sends: use the clock.
       clock_timestamp(), a.endpoint_id, a.duration_ms, a.answer,
       CASE WHEN a.outcome = 'delivered' THEN counted.send_at END
FROM attempt AS a JOIN counted ON counted.id = a.notification_id
ORDER BY a.n
"""


async def record_attempts(conn: Connection, records: list[AttemptRecord]) -> None:
    """Record delivery attempts, each counted on its notification with its new status.

    One statement for them all (a batch's attempts): a statement per attempt cost a
    round of parsing, planning and executing each, more than the rows themselves.
    Attempts are numbered (``delivery_attempts.id``) in the order given.
    """
    if not records:
        return
    await conn.execute(
        _RECORD_ATTEMPTS,
        {
            "notification_ids": [r.notification_id for r in records],
            "attempts": [r.attempt for r in records],
            "job_ids": [r.job_id for r in records],
            "channels": [r.channel for r in records],
            "outcomes": [r.outcome.value for r in records],
            "status_codes": [r.status_code for r in records],
            "errors": [r.error for r in records],
            "statuses": [r.status.value if r.status is not None else None for r in records],
            "started_ats": [r.started_at for r in records],
            "endpoint_ids": [r.endpoint_id for r in records],
            "durations_ms": [r.duration_ms for r in records],
            "answers": [r.answer for r in records],
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
    return await _the_notification(cursor)


async def note_error(conn: Connection, notification_id: uuid.UUID, error: str) -> None:
    """Record ``error`` on a pending notification without changing its status."""
    await conn.execute(
        """
        UPDATE notifier.notifications SET last_error = %s, updated_at = now()
        WHERE id = %s AND status = 'pending'
        """,
        [error, notification_id],
    )


async def take_host_slots(
    conn: Connection,
    wanted: dict[str, int],
    *,
    cap: int,
    held: Sequence[tuple[str, int]] = (),
) -> list[tuple[str, int]]:
    """Take up to ``wanted[origin]`` of the ``cap`` request slots of each origin; the slots
    taken, as ``(origin, slot)``.

    A slot is a session-level advisory lock on ``(hashtext(origin), slot)`` (the two-key
    form, a space of its own), tried without waiting. LIMIT ends the tries of an origin once
    it has its share, so no slot is taken only to be given back. The caller gives every
    slot back with :func:`give_back_host_slots` before its transaction ends, and names in
    ``held`` the slots this session holds already: a session's advisory locks stack, so
    trying one of those would get it again. The CASE makes sure they are never tried (the
    planner may order the conditions of a WHERE as it likes).
    """
    cursor = await conn.execute(
        """
        SELECT w.origin, s.slot
        FROM unnest(%(origins)b::text[], %(wanted)b::int[]) AS w (origin, wanted)
        CROSS JOIN LATERAL (
            SELECT g.slot FROM generate_series(0, %(cap)s - 1) AS g (slot)
            WHERE CASE
                WHEN EXISTS (
                    SELECT FROM unnest(%(held_origins)b::text[], %(held_slots)b::int[])
                        AS h (origin, slot)
                    WHERE h.origin = w.origin AND h.slot = g.slot
                ) THEN false
                ELSE pg_try_advisory_lock(hashtext(w.origin), g.slot)
            END
            LIMIT w.wanted
        ) AS s
        """,
        {
            "origins": list(wanted),
            "wanted": list(wanted.values()),
            "cap": cap,
            "held_origins": [origin for origin, _ in held],
            "held_slots": [slot for _, slot in held],
        },
        # Run several times per batch on every connection of the pool: prepared at once.
        prepare=True,
    )
    return [(row["origin"], row["slot"]) for row in await cursor.fetchall()]


async def wait_for_host_slot(conn: Connection, origin: str, slot: int, *, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``slot`` of ``origin`` (taken as by
    :func:`take_host_slots`); whether it came.

    PostgreSQL wakes the waiter the moment the slot is given back, whichever process held
    it. The wait runs in a savepoint that is always rolled back: that undoes the
    ``lock_timeout`` it sets, and after a timeout leaves the transaction usable, while a
    session-level lock taken stays taken.
    """
    try:
        async with conn.transaction(force_rollback=True):
            await conn.execute(
                """
                SELECT set_config('lock_timeout', %(wait)s, true),
                       pg_advisory_lock(hashtext(%(origin)s), %(slot)s)
                """,
                {"wait": f"{max(1, round(seconds * 1000))}ms", "origin": origin, "slot": slot},
            )
    except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
        return False
    return True


async def give_back_host_slots(conn: Connection, slots: list[tuple[str, int]]) -> None:
    """Release request slots taken by :func:`take_host_slots` on this connection."""
    if slots:
        await conn.execute(
            """
            SELECT pg_advisory_unlock(hashtext(origin), slot)
            FROM unnest(%b::text[], %b::int[]) AS given (origin, slot)
            """,
            [[origin for origin, _ in slots], [slot for _, slot in slots]],
            prepare=True,
        )


async def message_inputs(
    conn: Connection, tenant_id: str, notification_id: uuid.UUID
) -> dict[str, Any] | None:
    """What one of the tenant's notifications renders its message from, or None."""
    cursor = await conn.execute(
        """
        SELECT id, tenant_id, notification_type, recipient, entity_id, target_date,
               lead_time, channel, template, context
        FROM notifier.notifications WHERE tenant_id = %s AND id = %s
        """,
        [tenant_id, notification_id],
    )
    return await cursor.fetchone()


# --- keys ---------------------------------------------------------------------------------


class EndedNotification(NamedTuple):
    """A pending notification a key ended (superseded or cancelled), and its job."""

    id: uuid.UUID
    job_id: int | None


async def lock_keys(conn: Connection, lock_ids: list[int]) -> None:
    """Take transaction-level advisory locks on ``lock_ids``, in the order given.

    Callers give them sorted, so that two transactions wanting the same keys cannot each
    hold one the other waits for. (The single-``bigint`` form: a space apart from the
    two-``int`` locks of host slots.)
    """
    if lock_ids:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(lock_id) FROM unnest(%s::bigint[]) AS lock_id",
            [lock_ids],
        )


async def end_pending_of_rule_keys(
    conn: Connection,
    tenant_id: str,
    rule_keys: list[tuple[uuid.UUID, str]],
    *,
    status: NotificationStatus,
    event_id: uuid.UUID,
) -> list[EndedNotification]:
    """Move the tenant's pending notifications of each ``(rule id, key)`` to ``status``
    (superseded or cancelled) on behalf of ``event_id``; the ones moved.

    A notification a worker is sending stays locked until the send is recorded; this waits
    for it, then finds it no longer pending and leaves it. Rows are locked in id order, as
    every other many-row cancel does, so that two of them cannot deadlock.
    """
    if not rule_keys:
        return []
    cursor = await conn.execute(
        """
        WITH locked AS (
            SELECT id FROM notifier.notifications
            WHERE tenant_id = %(tenant_id)s AND status = 'pending' AND key IS NOT NULL
              AND (rule_id, key) IN (
                  SELECT * FROM unnest(%(rule_ids)s::uuid[], %(keys)s::text[])
              )
            ORDER BY id
            FOR UPDATE
        )
        UPDATE notifier.notifications AS n
        SET status = %(status)s, cancelled_by_event_id = %(event_id)s, cancelled_at = now(),
            updated_at = now()
        FROM locked WHERE n.id = locked.id
        RETURNING n.id, n.job_id
        """,
        {
            "status": status,
            "event_id": event_id,
            "tenant_id": tenant_id,
            "rule_ids": [rule_id for rule_id, _ in rule_keys],
            "keys": [key for _, key in rule_keys],
        },
    )
    return [EndedNotification(row["id"], row["job_id"]) for row in await cursor.fetchall()]


async def replace_pending_of_key(
    conn: Connection, tenant_id: str, key: str, replacement: uuid.UUID
) -> list[EndedNotification]:
    """Mark the tenant's other pending notifications of ``key`` made through the API (not by
    rules) superseded by ``replacement``; the ones marked."""
    cursor = await conn.execute(
        """
        WITH locked AS (
            SELECT id FROM notifier.notifications
            WHERE tenant_id = %(tenant_id)s AND status = 'pending' AND key = %(key)s
              AND rule_id IS NULL AND id <> %(replacement)s
            ORDER BY id
            FOR UPDATE
        )
        UPDATE notifier.notifications AS n
        SET status = 'superseded', replaced_by_id = %(replacement)s, cancelled_at = now(),
            updated_at = now()
        FROM locked WHERE n.id = locked.id
        RETURNING n.id, n.job_id
        """,
        {"tenant_id": tenant_id, "key": key, "replacement": replacement},
    )
    return [EndedNotification(row["id"], row["job_id"]) for row in await cursor.fetchall()]


async def lock_pending_matching(
    conn: Connection, tenant_id: str, *, key: str | None, entity_id: str | None, limit: int
) -> list[EndedNotification]:
    """Up to ``limit`` of the tenant's pending notifications with ``key`` and ``entity_id``
    (each None: any), locked; in id order, so that concurrent callers lock alike.

    Only the conditions given are in the statement, so that each can use its own index
    (a prepared ``(x IS NULL OR key = x)`` gets a generic plan that can use neither).
    """
    conditions = [sql.SQL("tenant_id = %(tenant_id)s AND status = 'pending'")]
    if key is not None:
        conditions.append(sql.SQL("key = %(key)s"))
    if entity_id is not None:
        conditions.append(sql.SQL("entity_id = %(entity_id)s"))
    query = sql.SQL(
        """
        SELECT id, job_id FROM notifier.notifications
        WHERE {conditions}
        ORDER BY id
        LIMIT %(limit)s
        FOR UPDATE
        """
    ).format(conditions=sql.SQL(" AND ").join(conditions))
    cursor = await conn.execute(
        query, {"tenant_id": tenant_id, "key": key, "entity_id": entity_id, "limit": limit}
    )
    return [EndedNotification(row["id"], row["job_id"]) for row in await cursor.fetchall()]


async def cancel_many(conn: Connection, notification_ids: list[uuid.UUID]) -> None:
    """Cancel (locked, pending) notifications, stamping ``cancelled_at``."""
    await conn.execute(
        """
        UPDATE notifier.notifications
        SET status = 'cancelled', cancelled_at = now(), updated_at = now()
        WHERE id = ANY(%s)
        """,
        [notification_ids],
    )
