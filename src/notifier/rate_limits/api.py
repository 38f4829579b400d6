"""HTTP handlers for ``/api/v1/rate-limits``: the calling tenant's per-channel limits. HTTP
only, the use cases are in ``rate_limits/service.py``."""

from __future__ import annotations

from litestar import Controller, delete, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from notifier.auth.guard import BEARER_SECURITY, requires
from notifier.http.body import StrictBody
from notifier.http.problems import problem_responses
from notifier.rate_limits import service
from notifier.rate_limits.schemas import RateLimit, RateLimitSet
from notifier.services import Services
from notifier.tenancy import Principal, Scope


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
        return await service.list_limits(
            services.pool, services.settings, services.channels, principal.tenant_id
        )

    @put(
        "/{channel:str}",
        summary="Set this tenant's limit for a channel",
        responses=problem_responses(400, 413, 415, 422),
        dto=StrictBody[RateLimitSet],
        return_dto=None,
    )
    async def set_limit(
        self,
        channel: FromPath[str],
        data: JSONBody[RateLimitSet],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> RateLimit:
        """Applies from the next send on, in every worker."""
        return await service.set_limit(
            services.pool, services.settings, services.channels, principal.tenant_id, channel, data
        )

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
        return await service.drop_limit(
            services.pool, services.settings, principal.tenant_id, channel
        )
