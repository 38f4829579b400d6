"""The rate-limit use cases: the limits in force for a tenant, set one, drop one.

Each function is one transaction of its own, on a connection from ``pool``; the API, the
CLI and the dashboard call these. ``settings`` gives the defaults
(``NOTIFIER_RATE_LIMIT_*``), ``channels`` the configured channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from notifier.api_types import checked_channel
from notifier.channels.base import Channel
from notifier.db import Pool, transaction
from notifier.errors import not_found
from notifier.rate_limits import queries
from notifier.rate_limits.gcra import Limit
from notifier.rate_limits.limiter import limit_in_force
from notifier.rate_limits.schemas import RateLimit, RateLimitSet
from notifier.settings import Settings


def effective_limit(settings: Settings, channel: str, override: dict[str, Any] | None) -> RateLimit:
    """The limit in force for ``channel``: the tenant's ``override`` row, else the default
    (the rule the deliveries obey, :func:`~notifier.rate_limits.limiter.limit_in_force`)."""
    own = None if override is None else Limit(override["per_second"], override["burst"])
    in_force = limit_in_force(settings, channel, own)
    return RateLimit(
        channel=channel,
        per_second=in_force.limit.per_second if in_force.limit else None,
        burst=in_force.limit.burst if in_force.limit else None,
        source=in_force.source,
        updated_at=override["updated_at"] if override else None,
    )


async def list_limits(
    pool: Pool, settings: Settings, channels: Mapping[str, Channel], tenant_id: str
) -> list[RateLimit]:
    """Every configured channel (and any the tenant set a limit for) with its limit in
    force: the tenant's own, the default, or none; by channel name."""
    async with transaction(pool) as conn:
        overrides = {row["channel"]: row for row in await queries.tenant_limits(conn, tenant_id)}
    names = sorted(set(channels) | set(overrides))
    return [effective_limit(settings, name, overrides.get(name)) for name in names]


async def set_limit(
    pool: Pool,
    settings: Settings,
    channels: Mapping[str, Channel],
    tenant_id: str,
    channel: str,
    limit: RateLimitSet,
) -> RateLimit:
    """Set the tenant's limit for ``channel`` (one of ``channels``, else a 422); applies
    from the next send on, in every worker."""
    checked_channel(channels, channel, None)
    async with transaction(pool) as conn:
        row = await queries.upsert_limit(conn, tenant_id, channel, limit.per_second, limit.burst)
    return effective_limit(settings, channel, row)


async def drop_limit(pool: Pool, settings: Settings, tenant_id: str, channel: str) -> RateLimit:
    """Drop the tenant's limit for ``channel`` (a 404 if none); the limit now in force."""
    async with transaction(pool) as conn:
        if not await queries.delete_limit(conn, tenant_id, channel):
            raise not_found("rate limit for channel", channel)
    return effective_limit(settings, channel, None)
