"""Taking a send slot before a delivery: the call the deliver task makes."""

from __future__ import annotations

import uuid

from notifier.db import transaction
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


async def take_send_slot(services: Services, notification_id: uuid.UUID) -> float:
    """Seconds to wait before this notification may be sent; 0 means send now.

    Runs in a transaction of its own, *before* the delivery transaction: the bucket row
    every worker shares is locked for two short statements, never across a network send.
    A slot taken for a notification that then turns out cancelled or suppressed is lost,
    which errs on the side of the provider's quota.
    """
    async with transaction(services.pool) as conn:
        scope = await queries.delivery_scope(conn, notification_id)
        if scope is None or scope["status"] != "pending":
            return 0.0  # the deliver task sees why and sends nothing
        if scope["per_second"] is not None:
            limit: Limit | None = Limit(scope["per_second"], scope["burst"])
        else:
            limit = default_limit(services.settings, scope["channel"])
        if limit is None:
            return 0.0
        now, bucket = await queries.lock_bucket(conn, scope["tenant_id"], scope["channel"])
        decision = decide(now, bucket, limit)
        await queries.save_bucket(conn, scope["tenant_id"], scope["channel"], decision.bucket)
    return decision.wait_seconds
