"""HTTP handlers for ``/api/v1/rate-limits``: the calling tenant's per-channel limits."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from notifier.api_types import checked_channel, decode_strictly
from notifier.auth.guard import BEARER_SECURITY, requires
from notifier.db import transaction
from notifier.problems import not_found, problem_responses
from notifier.rate_limits import queries
from notifier.rate_limits.gcra import Limit
from notifier.rate_limits.limiter import limit_in_force
from notifier.rate_limits.schemas import RateLimit, RateLimitSet
from notifier.services import Services
from notifier.tenancy import Principal, Scope


def _effective(services: Services, channel: str, override: dict[str, Any] | None) -> RateLimit:
    own = None if override is None else Limit(override["per_second"], override["burst"])
    in_force = limit_in_force(services.settings, channel, own)
    return RateLimit(
        channel=channel,
        per_second=in_force.limit.per_second if in_force.limit else None,
        burst=in_force.limit.burst if in_force.limit else None,
        source=in_force.source,
        updated_at=override["updated_at"] if override else None,
    )


class RateLimitController(Controller):
    """How fast each channel may send for this tenant, across all workers."""

    path = "/api/v1/rate-limits"
    tags = ["rate limits"]  # noqa: RUF012 - litestar reads it from the class
    security = BEARER_SECURITY
    # A tenant's send rate protects the providers' quotas: only its admin keys change it.
    guards = [requires(Scope.ADMIN)]  # noqa: RUF012 - litestar reads it from the class

    @get("/", summary="Limits in force, per channel", responses=problem_responses())
    async def list_limits(
        self, services: NamedDependency[Services], principal: NamedDependency[Principal]
    ) -> list[RateLimit]:
        """Every configured channel with its limit: the tenant's own, the default, or none."""
        async with transaction(services.pool) as conn:
            overrides = {
                row["channel"]: row
                for row in await queries.tenant_limits(conn, principal.tenant_id)
            }
        channels = sorted(set(services.channels) | set(overrides))
        return [_effective(services, channel, overrides.get(channel)) for channel in channels]

    @put(
        "/{channel:str}",
        summary="Set this tenant's limit for a channel",
        responses=problem_responses(400, 413, 415, 422),
    )
    async def set_limit(
        self,
        request: Request[Any, Any, Any],
        channel: FromPath[str],
        data: JSONBody[RateLimitSet],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> RateLimit:
        """Applies from the next send on, in every worker."""
        data = decode_strictly(await request.body(), RateLimitSet)
        checked_channel(services, channel, None)
        async with transaction(services.pool) as conn:
            row = await queries.upsert_limit(
                conn, principal.tenant_id, channel, data.per_second, data.burst
            )
        return _effective(services, channel, row)

    @delete(
        "/{channel:str}",
        status_code=200,
        summary="Drop this tenant's limit for a channel",
        responses=problem_responses(400, 404),
    )
    async def drop_limit(
        self,
        channel: FromPath[str],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> RateLimit:
        """The default applies again; answers with the limit now in force."""
        async with transaction(services.pool) as conn:
            if not await queries.delete_limit(conn, principal.tenant_id, channel):
                raise not_found("rate limit for channel", channel)
        return _effective(services, channel, None)
