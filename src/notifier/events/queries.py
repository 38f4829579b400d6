"""SQL for events. Functions take a connection and never commit."""

from __future__ import annotations

import uuid
from typing import NamedTuple

import msgspec
from psycopg.types.json import Jsonb

from notifier.db import Connection
from notifier.events.cloudevents import NewEvent
from notifier.events.schemas import Event, event_from_row
from notifier.pagination import Cursor
from notifier.queue import EVENTS_QUEUE, PROCESS_EVENT_TASK


class PublishedEvent(NamedTuple):
    """An event as stored, and the id of its process_event job (None if already stored)."""

    event: Event
    job_id: int | None


async def publish_event(conn: Connection, tenant_id: str, event: NewEvent) -> PublishedEvent:
    """Store a tenant's published event and defer its processing, in one statement.

    The job is deferred with procrastinate's own SQL function, as the outbox trigger does
    (one round trip for both, inside the caller's transaction). An event whose ``source``
    + ``external_id`` (CloudEvents ``id``) the tenant already stored is not stored again
    and gets no job: the stored one is returned.
    """
    cursor = await conn.execute(
        """
        WITH published AS (
            INSERT INTO notifier.events
                (tenant_id, type, payload, occurred_at, source, external_id, traceparent)
            VALUES (%(tenant_id)s, %(type)s, %(payload)s, %(occurred_at)s, %(source)s,
                    %(external_id)s, %(traceparent)s)
            ON CONFLICT (tenant_id, (coalesce(source, '')), external_id)
                WHERE external_id IS NOT NULL DO NOTHING
            RETURNING *
        )
        SELECT published.*, job.ids[1] AS job_id
        FROM published
        CROSS JOIN LATERAL (
            SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(
                %(queue)s, %(task)s, 0, NULL, NULL,
                jsonb_build_object('event_id', published.id::text), NULL
            )::procrastinate_job_to_defer_v1]) AS ids
        ) AS job
        """,
        msgspec.structs.asdict(event)
        | {
            "payload": Jsonb(event.payload),
            "tenant_id": tenant_id,
            "queue": EVENTS_QUEUE,
            "task": PROCESS_EVENT_TASK,
        },
    )
    row = await cursor.fetchone()
    if row is not None:
        return PublishedEvent(event_from_row(row), row["job_id"])
    cursor = await conn.execute(
        """
        SELECT * FROM notifier.events
        WHERE tenant_id = %(tenant_id)s
          AND coalesce(source, '') = coalesce(%(source)s, '') AND external_id = %(external_id)s
        """,
        {"tenant_id": tenant_id, "source": event.source, "external_id": event.external_id},
    )
    existing = await cursor.fetchone()
    assert existing is not None, "the conflicting event is committed before ON CONFLICT returns"
    return PublishedEvent(event_from_row(existing), None)


async def get_event(conn: Connection, tenant_id: str, event_id: uuid.UUID) -> Event | None:
    """One of the tenant's events, or None (another tenant's is as unknown as a missing one)."""
    cursor = await conn.execute(
        "SELECT * FROM notifier.events WHERE tenant_id = %s AND id = %s", [tenant_id, event_id]
    )
    row = await cursor.fetchone()
    return event_from_row(row) if row else None


async def lock_unprocessed_event(conn: Connection, event_id: uuid.UUID) -> tuple[str, Event] | None:
    """``(tenant id, event)``, locked, if it still awaits processing; None if unknown or done.

    A job re-run after a worker crash finds the event processed and does nothing, so an
    event never produces its notifications twice.
    """
    cursor = await conn.execute(
        "SELECT * FROM notifier.events WHERE id = %s AND processed_at IS NULL FOR UPDATE",
        [event_id],
    )
    row = await cursor.fetchone()
    return (row["tenant_id"], event_from_row(row)) if row else None


async def mark_processed(
    conn: Connection, event_id: uuid.UUID, *, error: str | None = None
) -> None:
    """Record that the event's notifications exist, or why processing made none."""
    await conn.execute(
        "UPDATE notifier.events SET processed_at = now(), processing_error = %s WHERE id = %s",
        [error, event_id],
    )


async def list_events(
    conn: Connection,
    tenant_id: str,
    *,
    limit: int,
    after: Cursor | None = None,
    event_type: str | None = None,
) -> list[Event]:
    """A page of the tenant's events, newest first."""
    cursor = await conn.execute(
        """
        SELECT * FROM notifier.events
        WHERE tenant_id = %(tenant_id)s
          AND (%(type)s::text IS NULL OR type = %(type)s)
          AND (%(after_created_at)s::timestamptz IS NULL
               OR (created_at, id) < (%(after_created_at)s, %(after_id)s::uuid))
        ORDER BY created_at DESC, id DESC
        LIMIT %(limit)s
        """,
        {
            "tenant_id": tenant_id,
            "type": event_type,
            "after_created_at": after.created_at if after else None,
            "after_id": after.id if after else None,
            "limit": limit,
        },
    )
    return [event_from_row(row) for row in await cursor.fetchall()]
