"""Taking a send slot before a delivery: the call the deliver task makes."""

from __future__ import annotations

import datetime
import uuid

from notifier.db import transaction
from notifier.notifications.scheduling import defer_delivery
from notifier.rate_limits import queries
from notifier.rate_limits.gcra import Limit, decide
from notifier.services import Services
from notifier.settings import Settings


def default_limit(settings: Settings, channel: str) -> Limit | None:
    """The limit ``NOTIFIER_RATE_LIMIT_<CHANNEL>_PER_SECOND`` sets, if any."""
    per_second = {
        "email": settings.rate_limit_email_per_second,
        "sms": settings.rate_limit_sms_per_second,
        "webhook": settings.rate_limit_webhook_per_second,
    }.get(channel)
    if per_second is None or per_second <= 0:
        return None
    return Limit(per_second, max(settings.rate_limit_burst, 1))


def limit_for(settings: Settings, override: tuple[float, int] | None, channel: str) -> Limit | None:
    """The limit a delivery through ``channel`` is under: the tenant's override
    (per second, burst), else the channel's default, else none."""
    if override is not None:
        return Limit(*override)
    return default_limit(settings, channel)


async def take_send_slot(
    services: Services,
    notification_id: uuid.UUID,
    job_id: int | None,
    *,
    tenant_id: str,
    channel: str,
    limit: Limit,
) -> bool:
    """Whether this notification may be sent now; if not, its delivery moves to a later job.

    Runs in a transaction of its own, between the deliver task's look at the notification
    and its delivery transaction: the bucket row every worker shares is locked for two
    short statements, never across a network send.

    Without a free slot, a new deliver job is deferred for the time the bucket hands out and
    becomes the notification's job (for cancel), in the same transaction; this run then ends.
    Waiting for a slot is no delivery attempt, and a new job rather than a retry of this one
    keeps procrastinate's run count, which bounds unexpected failures, free of waits.
    A slot taken for a notification that is then cancelled is lost, which errs on the side
    of the provider's quota.
    """
    async with transaction(services.pool) as conn:
        now, bucket = await queries.lock_bucket(conn, tenant_id, channel)
        decision = decide(now, bucket, limit)
        await queries.save_bucket(conn, tenant_id, channel, decision.bucket)
        if decision.allowed:
            return True
        slot = now + datetime.timedelta(seconds=decision.wait_seconds)
        new_job = await defer_delivery(conn, notification_id, slot, tenant_id=tenant_id)
        await queries.hand_over_job(conn, notification_id, job_id, new_job)
    return False
