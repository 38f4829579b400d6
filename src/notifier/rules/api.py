"""HTTP handlers for ``/api/v1/rules``: HTTP only, the use cases are in ``rules/service.py``."""

from __future__ import annotations

import uuid

from litestar import Controller, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from notifier.auth.guard import BEARER_SECURITY, requires
from notifier.http.body import StrictBody
from notifier.http.problems import problem_responses
from notifier.idempotency import IdempotentRequest
from notifier.rules import service
from notifier.rules.schemas import Rule, RuleCreate, RuleUpdate
from notifier.services import Services
from notifier.tenancy import Principal, Scope


class RuleController(Controller):
    """Manage the routing rules that turn events into notifications."""

    path = "/api/v1/rules"
    tags = ["rules"]  # noqa: RUF012 - litestar reads it from the class
    security = BEARER_SECURITY

    @post(
        "/",
        status_code=201,
        summary="Create a routing rule",
        responses=problem_responses(400, 413, 415, 422),
        guards=[requires(Scope.RULES_WRITE)],
        dto=StrictBody[RuleCreate],
        return_dto=None,
    )
    async def create(
        self,
        data: JSONBody[RuleCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotent: NamedDependency[IdempotentRequest | None],
    ) -> Response[Rule]:
        """Applies to events processed from now on. With an ``Idempotency-Key``, a repeat
        returns the first answer and creates no second rule."""
        outcome = await service.create_rule(
            services.pool, services.channels, principal.tenant_id, data, idempotent
        )
        return Response(outcome.body, status_code=outcome.status)

    @get(
        "/",
        summary="List routing rules",
        responses=problem_responses(),
        guards=[requires(Scope.RULES_READ)],
    )
    async def list_rules(
        self, services: NamedDependency[Services], principal: NamedDependency[Principal]
    ) -> list[Rule]:
        """Every rule of the caller's tenant, oldest first."""
        return await service.list_rules(services.pool, principal.tenant_id)

    @get(
        "/{rule_id:uuid}",
        summary="One routing rule",
        responses=problem_responses(400, 404),
        guards=[requires(Scope.RULES_READ)],
    )
    async def get_rule(
        self,
        rule_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Rule:
        """The rule, or 404."""
        return await service.get_rule(services.pool, principal.tenant_id, rule_id)

    @patch(
        "/{rule_id:uuid}",
        summary="Change a routing rule",
        responses=problem_responses(400, 404, 413, 415, 422),
        guards=[requires(Scope.RULES_WRITE)],
        dto=StrictBody[RuleUpdate],
        return_dto=None,
    )
    async def update_rule(
        self,
        rule_id: FromPath[uuid.UUID],
        data: JSONBody[RuleUpdate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Rule:
        """Change the fields given (``enabled``, ``template``, ``lead_times`` ...); the
        result is validated as a new rule would be. Applies to events processed from now
        on; notifications already made keep their template and schedule."""
        return await service.update_rule(
            services.pool, services.channels, principal.tenant_id, rule_id, data
        )

    @delete(
        "/{rule_id:uuid}",
        status_code=204,
        summary="Delete a routing rule",
        responses=problem_responses(400, 404),
        guards=[requires(Scope.RULES_WRITE)],
    )
    async def delete_rule(
        self,
        rule_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> None:
        """Notifications it already made are kept."""
        await service.delete_rule(services.pool, principal.tenant_id, rule_id)
