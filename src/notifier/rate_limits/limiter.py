"""Which limit a tenant's channel is under, and taking a send slot from its shared bucket."""

from __future__ import annotations

import datetime

import msgspec

from notifier.db import Connection
from notifier.rate_limits import queries
from notifier.rate_limits.gcra import Limit, decide
from notifier.rate_limits.schemas import LimitSource
from notifier.settings import Settings


class LimitInForce(msgspec.Struct, frozen=True):
    """The limit a channel of a tenant is under (None: unlimited), and where it comes from."""

    limit: Limit | None
    source: LimitSource


def limit_in_force(settings: Settings, channel: str, override: Limit | None) -> LimitInForce:
    """The tenant's ``override`` for ``channel``, else the limit
    ``NOTIFIER_RATE_LIMIT_<CHANNEL>_PER_SECOND`` sets, else none: the one rule the API
    shows and the deliveries obey."""
    if override is not None:
        return LimitInForce(override, LimitSource.TENANT)
    per_second = {
        "email": settings.rate_limit_email_per_second,
        "sms": settings.rate_limit_sms_per_second,
        "webhook": settings.rate_limit_webhook_per_second,
    }.get(channel)
    if per_second is None or per_second <= 0:
        return LimitInForce(None, LimitSource.NONE)
    return LimitInForce(Limit(per_second, max(settings.rate_limit_burst, 1)), LimitSource.DEFAULT)


async def take_send_slot(
    conn: Connection, tenant_id: str, channel: str, limit: Limit
) -> datetime.datetime | None:
    """Take a slot to send now from the (tenant, channel) bucket every worker shares: None
    if one was free, else the later slot handed out instead. The bucket's new state is
    saved either way, on ``conn``, in the caller's transaction.

    The bucket row stays locked until that transaction ends: the caller commits it before
    any network send.
    """
    now, bucket = await queries.lock_bucket(conn, tenant_id, channel)
    decision = decide(now, bucket, limit)
    await queries.save_bucket(conn, tenant_id, channel, decision.bucket)
    if decision.allowed:
        return None
    return now + datetime.timedelta(seconds=decision.wait_seconds)
