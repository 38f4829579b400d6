"""The ``process_event`` task: an event becomes notifications and their deliver jobs."""

from __future__ import annotations

import datetime
import logging
import uuid

from notifier.db import transaction
from notifier.events import queries
from notifier.events.routing import drafts_for_event
from notifier.events.superseding import apply_keys
from notifier.notifications.scheduling import create_notifications
from notifier.queue import JobInfo
from notifier.rules.queries import matching_rules
from notifier.services import Services

logger = logging.getLogger("notifier.events")


async def process_event(
    services: Services, job: JobInfo, event_id: str, tenant_id: str | None = None
) -> None:
    """Apply the routing rules to one event, in one transaction.

    ``tenant_id`` is there for the fetch, which shares out due jobs by tenant (migration
    0011); the event row says the same. Jobs deferred before that revision have none.
    """
    limit = services.settings.max_notifications_per_event
    async with transaction(services.pool) as conn:
        locked = await queries.lock_unprocessed_event(conn, uuid.UUID(event_id))
        if locked is None:
            logger.info("event %s is unknown or already processed; nothing to do", event_id)
            return
        tenant_id, event = locked
        rules = await matching_rules(conn, tenant_id, event.type)
        drafts = drafts_for_event(event, rules, datetime.datetime.now(datetime.UTC))
        if len(drafts) > limit:
            # All or nothing: an arbitrary first `limit` recipients would be a silent partial
            # send, and storing the excess as failed rows would let one event flood the table.
            error = (
                f"its rules would make {len(drafts)} notifications, more than the "
                f"{limit} one event may make (NOTIFIER_MAX_NOTIFICATIONS_PER_EVENT); none were made"
            )
            await queries.mark_processed(conn, event.id, error=error)
            logger.warning("event %s (%s): %s", event_id, event.type, error)
            return
        keyed = await apply_keys(conn, tenant_id, event, rules, drafts)
        notifications = await create_notifications(conn, tenant_id, keyed.drafts)
        await queries.mark_processed(conn, event.id, error="; ".join(keyed.errors) or None)
    if event.producer != "api":
        # The API counted its own events; the outbox's are first seen here.
        services.metrics.count_event(event.type, producer=event.producer)
    logger.info(
        "event %s (%s): %d rules matched, %d notifications, %d superseded, %d cancelled",
        event_id,
        event.type,
        len(rules),
        len(notifications),
        keyed.superseded,
        keyed.cancelled,
    )
