"""Keys on the notifications API: one pending notification per key, cancel by key or entity.

``POST /api/v1/notifications/`` with a ``key`` replaces the tenant's pending notification of
that key (made through the API; rules keep their own keys, notifier.events.superseding)
instead of adding a second: the old one ends ``superseded``, pointing at the new one, in the
transaction that stores the new one. Two requests for one key at once take an advisory lock
on (tenant, key) first, so the second replaces the first.
"""

from __future__ import annotations

import hashlib
import uuid

import msgspec

from notifier.db import Connection
from notifier.notifications import queries
from notifier.notifications.scheduling import NotificationDraft, create_notifications
from notifier.notifications.schemas import Notification
from notifier.queue import jobs

# One DELETE cancels at most this many: beyond, it is refused and nothing is cancelled, so
# that one request cannot hold a transaction over a tenant's whole table.
MAX_CANCELLED_AT_ONCE = 10_000


class Scheduled(msgspec.Struct, kw_only=True):
    """A stored notification and the pending one of its key it replaced, if any."""

    notification: Notification
    replaced: uuid.UUID | None = None


class TooManyMatches(Exception):
    """More pending notifications match than one request may cancel."""


def api_key_lock_id(tenant_id: str, key: str) -> int:
    """A signed 64-bit advisory lock id for a key of the tenant's API notifications."""
    digest = hashlib.blake2b(f"api\0{tenant_id}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def schedule_replacing(
    conn: Connection, tenant_id: str, draft: NotificationDraft
) -> Scheduled:
    """Store ``draft`` (and its job) in the caller's transaction; with a key, the tenant's
    pending API notification of that key ends superseded by it, its job cancelled."""
    if draft.key is None:
        (notification,) = await create_notifications(conn, tenant_id, [draft])
        return Scheduled(notification=notification)
    await queries.lock_keys(conn, [api_key_lock_id(tenant_id, draft.key)])
    (notification,) = await create_notifications(conn, tenant_id, [draft])
    replaced = await queries.replace_pending_of_key(conn, tenant_id, draft.key, notification.id)
    await jobs.cancel_waiting_jobs(
        conn, sorted(ended.job_id for ended in replaced if ended.job_id is not None)
    )
    # Under the lock there is at most one: every earlier request of the key replaced its own.
    return Scheduled(notification=notification, replaced=replaced[0].id if replaced else None)


async def cancel_pending_matching(
    conn: Connection, tenant_id: str, *, key: str | None, entity_id: str | None
) -> int:
    """Cancel every pending notification of the tenant with ``key`` and ``entity_id`` (a
    None matches any) and their waiting jobs, in the caller's transaction; how many.

    Raises :class:`TooManyMatches`, having cancelled nothing, past
    :data:`MAX_CANCELLED_AT_ONCE`.
    """
    matching = await queries.lock_pending_matching(
        conn, tenant_id, key=key, entity_id=entity_id, limit=MAX_CANCELLED_AT_ONCE + 1
    )
    if len(matching) > MAX_CANCELLED_AT_ONCE:
        raise TooManyMatches
    await queries.cancel_many(conn, [ended.id for ended in matching])
    await jobs.cancel_waiting_jobs(
        conn, sorted(ended.job_id for ended in matching if ended.job_id is not None)
    )
    return len(matching)
