"""HTTP handlers for ``/api/v1/rules``."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from notifier import idempotency
from notifier.api_types import (
    check_storable,
    checked_channel,
    checked_local_time,
    decode_strictly,
)
from notifier.auth.guard import BEARER_SECURITY, requires
from notifier.db import Connection, transaction
from notifier.endpoints.references import check_endpoint, endpoint_channel_and_recipient
from notifier.idempotency import IdempotentRequest
from notifier.problems import field_error, not_found, problem_responses
from notifier.rules import queries
from notifier.rules.schemas import Rule, RuleCreate, RuleUpdate
from notifier.services import Services
from notifier.templates.catalog import find_template
from notifier.tenancy import Principal, Scope

# As for notifications' lead_time_days: reminders up to ten years ahead.
MAX_LEAD_TIME = datetime.timedelta(days=3650)


def parse_lead_times(durations: list[str]) -> list[datetime.timedelta]:
    """The rule's lead times, each an ISO 8601 duration from zero to ten years."""
    lead_times = []
    for index, duration in enumerate(durations):
        field = f"lead_times[{index}]"
        try:
            lead = msgspec.convert(duration, datetime.timedelta)
        except msgspec.ValidationError as exc:
            raise field_error(field, f"is not an ISO 8601 duration such as P7D: {exc}") from None
        if lead < datetime.timedelta(0):
            raise field_error(field, "must not be negative")
        if lead > MAX_LEAD_TIME:
            raise field_error(field, "must not exceed P3650D (ten years)")
        lead_times.append(lead)
    return lead_times


def validate_rule(rule: RuleCreate, services: Services) -> list[datetime.timedelta]:
    """Reject a rule that could never deliver, naming the field at fault; its lead times."""
    check_storable(rule)
    checked_channel(services, rule.channel, rule.recipient)
    if rule.endpoint is not None:
        endpoint_channel_and_recipient(rule.endpoint, rule.channel)
        if rule.recipient is not None or rule.recipient_field is not None:
            raise field_error("endpoint", "give endpoint, recipient or recipient_field: one")
    elif (rule.recipient is None) == (rule.recipient_field is None):
        raise field_error("recipient", "give exactly one of recipient and recipient_field")
    checked_local_time(rule.timezone, rule.quiet_hours)
    return parse_lead_times(rule.lead_times)


async def check_template(conn: Connection, tenant_id: str, name: str | None) -> None:
    """A 422 naming ``template`` unless it is the tenant's or a built-in."""
    if name is not None and await find_template(conn, tenant_id, name) is None:
        raise field_error(
            "template", f"no template {name!r}: create it at /api/v1/templates/ first"
        )


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
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[RuleCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotent: NamedDependency[IdempotentRequest | None],
    ) -> Response[Rule]:
        """Applies to events processed from now on. With an ``Idempotency-Key``, a repeat
        returns the first answer and creates no second rule."""
        data = decode_strictly(await request.body(), RuleCreate)
        lead_times = validate_rule(data, services)
        async with transaction(services.pool) as conn:
            stored = await idempotency.claim(conn, idempotent)
            if stored is not None:
                return Response(stored.decode(Rule), status_code=stored.status)
            await check_template(conn, principal.tenant_id, data.template)
            await check_endpoint(conn, principal.tenant_id, data.endpoint)
            rule = await queries.insert_rule(conn, principal.tenant_id, data, lead_times)
            await idempotency.remember(conn, idempotent, 201, rule)
        return Response(rule, status_code=201)

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
        async with transaction(services.pool) as conn:
            return await queries.list_rules(conn, principal.tenant_id)

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
        async with transaction(services.pool) as conn:
            rule = await queries.get_rule(conn, principal.tenant_id, rule_id)
        if rule is None:
            raise not_found("rule", rule_id)
        return rule

    @patch(
        "/{rule_id:uuid}",
        summary="Change a routing rule",
        responses=problem_responses(400, 404, 413, 415, 422),
        guards=[requires(Scope.RULES_WRITE)],
    )
    async def update_rule(
        self,
        request: Request[Any, Any, Any],
        rule_id: FromPath[uuid.UUID],
        data: JSONBody[RuleUpdate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Rule:
        """Change the fields given (``enabled``, ``template``, ``lead_times`` ...); the
        result is validated as a new rule would be. Applies to events processed from now
        on; notifications already made keep their template and schedule."""
        data = decode_strictly(await request.body(), RuleUpdate)
        async with transaction(services.pool) as conn:
            current = await queries.lock_rule(conn, principal.tenant_id, rule_id)
            if current is None:
                raise not_found("rule", rule_id)
            changed = data.applied_to(current)
            lead_times = validate_rule(changed, services)
            await check_template(conn, principal.tenant_id, changed.template)
            await check_endpoint(conn, principal.tenant_id, changed.endpoint)
            return await queries.update_rule(
                conn, principal.tenant_id, rule_id, changed, lead_times
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
        async with transaction(services.pool) as conn:
            if not await queries.delete_rule(conn, principal.tenant_id, rule_id):
                raise not_found("rule", rule_id)
