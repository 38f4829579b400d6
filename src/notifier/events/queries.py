"""SQL for events. Functions take a connection and never commit."""

from __future__ import annotations

import uuid

import msgspec
from psycopg.types.json import Jsonb

from notifier.db import Connection
from notifier.events.cloudevents import NewEvent
from notifier.events.schemas import Event, event_from_row
from notifier.pagination import Cursor


async def insert_event(conn: Connection, event: NewEvent) -> tuple[Event, bool]:
    """Store a published event; ``(event, True)``.

    An event whose ``source`` + ``external_id`` (CloudEvents ``id``) is already stored is
    not stored again: ``(the stored one, False)``.
    """
    cursor = await conn.execute(
        """
        INSERT INTO notifier.events (type, payload, occurred_at, source, external_id, traceparent)
        VALUES (%(type)s, %(payload)s, %(occurred_at)s, %(source)s, %(external_id)s, %(traceparent)s)
        ON CONFLICT (tenant_id, (coalesce(source, '')), external_id)
            WHERE external_id IS NOT NULL DO NOTHING
        RETURNING *
        """,
        msgspec.structs.asdict(event) | {"payload": Jsonb(event.payload)},
    )
    row = await cursor.fetchone()
    if row is not None:
        return event_from_row(row), True
    cursor = await conn.execute(
        """
        SELECT * FROM notifier.events
        WHERE coalesce(source, '') = coalesce(%(source)s, '') AND external_id = %(external_id)s
        """,
        {"source": event.source, "external_id": event.external_id},
    )
    existing = await cursor.fetchone()
    assert existing is not None, "the conflicting event is committed before ON CONFLICT returns"
    return event_from_row(existing), False


async def get_event(conn: Connection, event_id: uuid.UUID) -> Event | None:
    """One event, or None."""
    cursor = await conn.execute("SELECT * FROM notifier.events WHERE id = %s", [event_id])
    row = await cursor.fetchone()
    return event_from_row(row) if row else None


async def lock_unprocessed_event(conn: Connection, event_id: uuid.UUID) -> Event | None:
    """The event, locked, if it still awaits processing; None if unknown or already done.

    A job re-run after a worker crash finds the event processed and does nothing, so an
    event never produces its notifications twice.
    """
    cursor = await conn.execute(
        "SELECT * FROM notifier.events WHERE id = %s AND processed_at IS NULL FOR UPDATE",
        [event_id],
    )
    row = await cursor.fetchone()
    return event_from_row(row) if row else None


async def mark_processed(conn: Connection, event_id: uuid.UUID) -> None:
    """Record that the event's notifications exist."""
    await conn.execute("UPDATE notifier.events SET processed_at = now() WHERE id = %s", [event_id])


async def list_events(
    conn: Connection, *, limit: int, after: Cursor | None = None, event_type: str | None = None
) -> list[Event]:
    """A page of events, newest first."""
    cursor = await conn.execute(
        """
        SELECT * FROM notifier.events
        WHERE (%(type)s::text IS NULL OR type = %(type)s)
          AND (%(after_created_at)s::timestamptz IS NULL
               OR (created_at, id) < (%(after_created_at)s, %(after_id)s::uuid))
        ORDER BY created_at DESC, id DESC
        LIMIT %(limit)s
        """,
        {
            "type": event_type,
            "after_created_at": after.created_at if after else None,
            "after_id": after.id if after else None,
            "limit": limit,
        },
    )
    return [event_from_row(row) for row in await cursor.fetchall()]
