"""SQL for events. Functions take a connection and never commit."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from typing import Any, LiteralString, NamedTuple

import msgspec
from psycopg.types.json import Jsonb

from notifier.db import Connection
from notifier.events.cloudevents import NewEvent
from notifier.events.schemas import Event, event_from_row
from notifier.pagination import Cursor
from notifier.queue import EVENTS_QUEUE, PROCESS_EVENT_TASK, jobs


class TenantEvent(NamedTuple):
    """An event to store, and the tenant it belongs to."""

    tenant_id: str
    event: NewEvent


class PublishedEvent(NamedTuple):
    """An event as stored, and whether this publish stored it (else it was stored before)."""

    event: Event
    is_new: bool


# Store events, and defer each new one's processing job, in one statement. The defer is the
# queue adapter's (procrastinate's own SQL function, as the outbox trigger uses), inside the
# caller's transaction, each job naming its event's tenant (workers share out due jobs by
# tenant, migration 0011). Conflicting events (same tenant, source and external id) are
# not stored and get no job. The arrays go in binary (%b): psycopg writes a text array by
# quoting and escaping each string with regular expressions, the JSON payloads' quotes
# most of all (docs/performance.md, "The publish route answers directly").
_PUBLISH_EVENTS: LiteralString = """
WITH published AS (
    INSERT INTO notifier.events
        (id, tenant_id, type, payload, occurred_at, source, external_id, traceparent)
    SELECT * FROM unnest(
        %(ids)b::uuid[], %(tenant_ids)b::text[], %(types)b::text[], %(payloads)b::jsonb[],
        %(occurred_ats)b::timestamptz[], %(sources)b::text[], %(external_ids)b::text[],
        %(traceparents)b::text[]
    )
    ON CONFLICT (tenant_id, (coalesce(source, '')), external_id)
        WHERE external_id IS NOT NULL DO NOTHING
    RETURNING *
), deferred AS (
    {defer}
)
-- Joined so that the defer runs: a CTE nobody reads is not evaluated.
SELECT published.* FROM published CROSS JOIN deferred
"""
PUBLISH_EVENTS_SQL: LiteralString = _PUBLISH_EVENTS.format(
    defer=jobs.defer_jobs_select(
        rows="published",
        queue="%(queue)s",
        task="%(task)s",
        args="jsonb_build_object('event_id', published.id::text, 'tenant_id', published.tenant_id)",
    )
)


def publish_parameters(ids: Sequence[uuid.UUID], items: Sequence[TenantEvent]) -> dict[str, Any]:
    """The parameters of :data:`PUBLISH_EVENTS_SQL` storing ``items`` under ``ids``."""
    events = [item.event for item in items]
    return {
        "ids": list(ids),
        "tenant_ids": [item.tenant_id for item in items],
        "types": [event.type for event in events],
        # msgspec encodes the payload (already decoded by msgspec) several times faster
        # than psycopg's default, json.dumps.
        "payloads": [Jsonb(event.payload, dumps=msgspec.json.encode) for event in events],
        "occurred_ats": [event.occurred_at for event in events],
        "sources": [event.source for event in events],
        "external_ids": [event.external_id for event in events],
        "traceparents": [event.traceparent for event in events],
        "queue": EVENTS_QUEUE,
        "task": PROCESS_EVENT_TASK,
    }


async def publish_events(conn: Connection, items: Sequence[TenantEvent]) -> list[PublishedEvent]:
    """Store events and defer each new one's processing job, in one statement; in ``items`` order.

    An event whose ``source`` + ``external_id`` (CloudEvents ``id``) its tenant already
    stored (or that comes twice in ``items``) is not stored again and gets no job: the
    stored one is returned.
    """
    # The ids are chosen here (random, like the column's default) to match rows to items.
    ids = [uuid.uuid4() for _ in items]
    cursor = await conn.execute(PUBLISH_EVENTS_SQL, publish_parameters(ids, items))
    stored = {row["id"]: event_from_row(row) for row in await cursor.fetchall()}
    published = []
    for event_id, item in zip(ids, items, strict=True):
        new = stored.get(event_id)
        if new is not None:
            published.append(PublishedEvent(new, is_new=True))
        else:
            published.append(PublishedEvent(await _stored_before(conn, item), is_new=False))
    return published


async def _stored_before(conn: Connection, item: TenantEvent) -> Event:
    """The stored event that ``item`` (which has an ``external_id``) conflicted with."""
    cursor = await conn.execute(
        """
        SELECT * FROM notifier.events
        WHERE tenant_id = %(tenant_id)s
          AND coalesce(source, '') = coalesce(%(source)s, '') AND external_id = %(external_id)s
        """,
        {
            "tenant_id": item.tenant_id,
            "source": item.event.source,
            "external_id": item.event.external_id,
        },
    )
    existing = await cursor.fetchone()
    assert existing is not None, "the conflicting event is committed before ON CONFLICT returns"
    return event_from_row(existing)


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


class LockedEvent(NamedTuple):
    """An event awaiting processing, locked, and the job of it that a batch takes along."""

    tenant_id: str
    event: Event
    job_id: int
    # The trace the event continues (the producer's), for the span the batch starts for it.
    traceparent: str | None


# Due, waiting process_event jobs of one group whose events still await processing, each
# locked with its job, in one statement: the adapter's walk locks the jobs, the outer
# SELECT the events (checked again once locked; one another transaction holds is skipped,
# its job left waiting to run on its own).
_DUE_EVENT_JOBS = jobs.lock_due_jobs(
    join="JOIN notifier.events AS e ON e.id = (jobs.args->>'event_id')::uuid",
    where="e.processed_at IS NULL AND e.id <> %(own_event_id)s",
    row_id="e.id",
)
_LOCK_DUE_EVENTS = (
    "WITH due AS MATERIALIZED ("
    + _DUE_EVENT_JOBS
    + """)
SELECT e.*, due.job_id AS batch_job_id
FROM due JOIN notifier.events AS e ON e.id = due.row_id
WHERE e.processed_at IS NULL
ORDER BY due.position
FOR UPDATE OF e SKIP LOCKED
"""
)


async def lock_due_events(
    conn: Connection,
    *,
    own_event_id: uuid.UUID,
    tenant_id: str | None,
    priority: int,
    limit: int,
    after: jobs.JobPosition | None = None,
) -> list[LockedEvent]:
    """Up to ``limit`` unprocessed events, other than ``own_event_id``, whose process_event
    jobs are due and waiting in the group of ``tenant_id`` (None: jobs that name no
    tenant) and ``priority`` (behind the job at ``after``, see
    :func:`notifier.queue.jobs.due_jobs_parameters`), each locked with its job (rows other
    workers hold are skipped), in the order the fetch would take their jobs.

    A batch takes only its own group's jobs: the fetch shares out turns by group
    (migration 0011), and a batch is one turn.
    """
    group = jobs.due_jobs_parameters(
        queue=EVENTS_QUEUE,
        task_name=PROCESS_EVENT_TASK,
        tenant_id=tenant_id,
        priority=priority,
        limit=limit,
        after=after,
    )
    cursor = await conn.execute(_LOCK_DUE_EVENTS, {**group, "own_event_id": own_event_id})
    locked: list[LockedEvent] = []
    seen = {own_event_id}
    for row in await cursor.fetchall():
        job_id = row.pop("batch_job_id")
        if row["id"] in seen:
            continue  # a second job of one event: it runs on its own and finds it done
        seen.add(row["id"])
        locked.append(
            LockedEvent(row["tenant_id"], event_from_row(row), job_id, row["traceparent"])
        )
    return locked


async def mark_many_processed(conn: Connection, errors: dict[uuid.UUID, str | None]) -> None:
    """Record, in one statement, that each event's notifications exist, or why processing
    made none (``errors``: by event id, None for none)."""
    if not errors:
        return
    await conn.execute(
        """
        UPDATE notifier.events AS e
        SET processed_at = now(), processing_error = done.error
        FROM unnest(%s::uuid[], %s::text[]) AS done (id, error)
        WHERE e.id = done.id
        """,
        [list(errors), list(errors.values())],
    )


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


class KeyHolder(NamedTuple):
    """The latest event of a (tenant, rule, key): the one whose reminders stand."""

    event_id: uuid.UUID
    event_time: datetime.datetime


async def key_holders(
    conn: Connection, tenant_id: str, rule_keys: list[tuple[uuid.UUID, str]]
) -> dict[tuple[uuid.UUID, str], KeyHolder]:
    """The latest event recorded for each ``(rule id, key)`` of the tenant that has one."""
    cursor = await conn.execute(
        """
        SELECT rule_id, key, event_id, event_time FROM notifier.reminder_keys
        WHERE tenant_id = %s
          AND (rule_id, key) IN (SELECT * FROM unnest(%s::uuid[], %s::text[]))
        """,
        [tenant_id, [rule_id for rule_id, _ in rule_keys], [key for _, key in rule_keys]],
    )
    return {
        (row["rule_id"], row["key"]): KeyHolder(row["event_id"], row["event_time"])
        for row in await cursor.fetchall()
    }


async def hold_keys(
    conn: Connection,
    tenant_id: str,
    rule_keys: list[tuple[uuid.UUID, str]],
    holder: KeyHolder,
) -> None:
    """Record ``holder`` as the latest event of each ``(rule id, key)`` (keys locked)."""
    if not rule_keys:
        return
    await conn.execute(
        """
        INSERT INTO notifier.reminder_keys (tenant_id, rule_id, key, event_id, event_time)
        SELECT %(tenant_id)s, rule_id, key, %(event_id)s, %(event_time)s
        FROM unnest(%(rule_ids)s::uuid[], %(keys)s::text[]) AS claimed (rule_id, key)
        ON CONFLICT (tenant_id, rule_id, key)
            DO UPDATE SET event_id = excluded.event_id, event_time = excluded.event_time,
                          held_at = now()
        """,
        {
            "tenant_id": tenant_id,
            "event_id": holder.event_id,
            "event_time": holder.event_time,
            "rule_ids": [rule_id for rule_id, _ in rule_keys],
            "keys": [key for _, key in rule_keys],
        },
    )


async def prune_reminder_keys(
    conn: Connection, *, older_than: datetime.timedelta, limit: int
) -> int:
    """Delete at most ``limit`` key rows last written before ``older_than`` ago whose key
    has no pending notification of its rule; how many went.

    A row orders the events of its key: without it, an older event arriving late would
    count as the newest. Past the retention no such event is expected, and with nothing
    pending there is nothing it could wrongly supersede. A key written meanwhile (by an
    event holding its lock) is re-checked by the DELETE and kept; rows another run is
    deleting are skipped.
    """
    cursor = await conn.execute(
        """
        DELETE FROM notifier.reminder_keys AS held
        WHERE (held.tenant_id, held.rule_id, held.key) IN (
            SELECT old.tenant_id, old.rule_id, old.key FROM notifier.reminder_keys AS old
            WHERE old.held_at < now() - %(older_than)s
              AND NOT EXISTS (
                  SELECT FROM notifier.notifications AS n
                  WHERE n.tenant_id = old.tenant_id AND n.key = old.key
                    AND n.rule_id = old.rule_id AND n.status = 'pending'
              )
            ORDER BY old.held_at
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        )
          AND held.held_at < now() - %(older_than)s
        """,
        {"older_than": older_than, "limit": limit},
    )
    return cursor.rowcount
