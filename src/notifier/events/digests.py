"""Digests: a rule with ``"digest": {"window": "PT10M"}`` or ``{"until": "09:00"}`` collects
the events of one key into one notification per window, whose template sees them as
``events``.

The first event of a key opens a digest: a pending notification due when the window ends,
``digest_open``: ``window`` after that event, or at the next ``until`` on the recipient's
clock (the draft's ``timezone``, UTC without one; see
:func:`notifier.notifications.localtime.next_wall_time` for DST). Each later event of the key joins it (``events`` grows by one, in the
transaction that marks the event processed) until the window has ended; an event after
that opens the next digest. So:

- never an event in none or in two: joining is part of processing the event, which commits
  once (a worker killed mid-way rolls back, the job runs again and joins then);
- never two open digests for one key: events of one key take an advisory lock on (tenant,
  rule, key) first, and a unique index allows one open pending digest per key anyway;
- a digest being sent holds its row lock; an event joining waits for it and, finding it
  sent, opens the next one;
- windows of a key never overlap: a window opens no earlier than the database's clock
  (under the key's lock), by which the previous one was judged ended, so an ``until``
  window always ends at a later time of day than the one before it, even when the
  worker's clock lags the database's.

A digest holds at most :data:`MAX_DIGEST_EVENTS` events: the one that fills it closes it
early (it goes out at once) and the next event opens another.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import uuid
from typing import Any

import msgspec
from psycopg.types.json import Jsonb

from notifier.db import Connection
from notifier.events.schemas import Event
from notifier.notifications import queries as notification_queries
from notifier.notifications.localtime import next_wall_time, zone_named
from notifier.notifications.scheduling import NotificationDraft, PlannedSend
from notifier.notifications.schemas import NotificationStatus
from notifier.queue import jobs

logger = logging.getLogger("notifier.events")

MAX_DIGEST_EVENTS = 100


def digest_lock_id(tenant_id: str, rule_id: uuid.UUID, key: str) -> int:
    """A signed 64-bit advisory lock id for a digest's (tenant, rule, key).

    A space apart from superseding's locks: every event takes those first and these after,
    each set sorted, so no two events wait for each other in a circle.
    """
    text = f"digest\0{tenant_id}\0{rule_id}\0{key}"
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def digest_item(event: Event) -> dict[str, Any]:
    """What a digest's template sees of one event, as an item of ``events``."""
    return {
        "id": str(event.id),
        "type": event.type,
        "occurred_at": (event.occurred_at or event.created_at).isoformat(),
        "payload": event.payload,
    }


def is_digest(draft: NotificationDraft) -> bool:
    """Whether routing made ``draft`` for a digest rule (and could: a failed one is stored)."""
    return (
        (draft.digest_window is not None or draft.digest_until is not None)
        and draft.error is None
        and draft.rule_id is not None
        and draft.key is not None
    )


def _by_key(drafts: list[NotificationDraft]) -> dict[tuple[uuid.UUID, str], NotificationDraft]:
    """The digest drafts by their (rule, key); the last of a pair stands."""
    by_key: dict[tuple[uuid.UUID, str], NotificationDraft] = {}
    for draft in drafts:
        if is_digest(draft) and draft.rule_id is not None and draft.key is not None:
            by_key[(draft.rule_id, draft.key)] = draft
    return by_key


def digest_lock_ids(tenant_id: str, drafts: list[NotificationDraft]) -> list[int]:
    """The advisory locks :func:`collect` takes for ``drafts``, sorted."""
    return sorted(digest_lock_id(tenant_id, rule_id, key) for rule_id, key in _by_key(drafts))


async def collect(
    conn: Connection,
    tenant_id: str,
    event: Event,
    drafts: list[NotificationDraft],
    now: datetime.datetime,
) -> list[NotificationDraft]:
    """Let ``event`` join the open digest of each digest draft's rule and key, in the
    caller's transaction; the digests it opens, to store (one per key it found none for)."""
    by_key = _by_key(drafts)
    if not by_key:
        return []
    await notification_queries.lock_keys(conn, digest_lock_ids(tenant_id, drafts))
    item = digest_item(event)
    opened = []
    for (rule_id, key), draft in sorted(by_key.items(), key=lambda pair: str(pair[0])):
        joined = await join_open_digest(conn, tenant_id, rule_id, key, item)
        if joined:
            continue
        # Read after the join: the database's clock judged the last window ended, so one
        # opening no earlier ends strictly later (the next `until` is after this instant).
        opened_at = max(now, await database_now(conn))
        opened.append(
            msgspec.structs.replace(
                draft,
                send=PlannedSend(
                    datetime.timedelta(0),
                    window_end(draft, opened_at),
                    NotificationStatus.PENDING,
                ),
                context={"events": [item]},
                digest_count=1,
                digest_open=True,
            )
        )
    return opened


def window_end(draft: NotificationDraft, opened_at: datetime.datetime) -> datetime.datetime:
    """When a digest of ``draft``'s rule opened at ``opened_at`` goes out: ``window`` later,
    or at the next ``until`` on the clock of the draft's zone (UTC without one)."""
    if draft.digest_until is not None:
        zone = zone_named(draft.timezone or "UTC")
        return next_wall_time(opened_at, draft.digest_until, zone)
    return opened_at + (draft.digest_window or datetime.timedelta(0))


async def database_now(conn: Connection) -> datetime.datetime:
    """The database's clock now (not the transaction's start)."""
    cursor = await conn.execute("SELECT clock_timestamp() AS now")
    row = await cursor.fetchone()
    assert row is not None
    now: datetime.datetime = row["now"]
    return now


async def join_open_digest(
    conn: Connection, tenant_id: str, rule_id: uuid.UUID, key: str, item: dict[str, Any]
) -> bool:
    """Add ``item`` to the open digest of (rule, key), if one is pending and its window has
    not ended; whether it did. A digest past its window, or filled by this item, is closed
    (a full one is sent at once)."""
    cursor = await conn.execute(
        """
        SELECT id, job_id, digest_count, send_at > clock_timestamp() AS window_open
        FROM notifier.notifications
        WHERE tenant_id = %s AND rule_id = %s AND key = %s AND status = 'pending' AND digest_open
        FOR UPDATE
        """,
        [tenant_id, rule_id, key],
    )
    row = await cursor.fetchone()
    if row is None:
        return False
    if not row["window_open"]:
        await _close(conn, row["id"])
        return False
    full = row["digest_count"] + 1 >= MAX_DIGEST_EVENTS
    await conn.execute(
        """
        UPDATE notifier.notifications
        SET context = jsonb_set(context, '{events}', (context -> 'events') || %s),
            digest_count = digest_count + 1, digest_open = NOT %s,
            send_at = CASE WHEN %s THEN now() ELSE send_at END, updated_at = now()
        WHERE id = %s
        """,
        [Jsonb([item]), full, full, row["id"]],
    )
    if full and row["job_id"] is not None:
        await jobs.reschedule_jobs(conn, {row["job_id"]: datetime.datetime.now(datetime.UTC)})
        logger.info("digest %s is full (%d events): sent now", row["id"], MAX_DIGEST_EVENTS)
    return True


async def _close(conn: Connection, notification_id: uuid.UUID) -> None:
    """No more events join this digest: its window has ended (its send is due or retrying)."""
    await conn.execute(
        "UPDATE notifier.notifications SET digest_open = false, updated_at = now() WHERE id = %s",
        [notification_id],
    )
