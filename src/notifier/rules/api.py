"""HTTP handlers for ``/api/v1/rules``."""

from __future__ import annotations

import uuid

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from notifier.db import transaction
from notifier.problems import field_error, not_found
from notifier.rules import queries
from notifier.rules.schemas import Rule, RuleCreate
from notifier.services import Services


def validate_rule(rule: RuleCreate, services: NamedDependency[Services]) -> None:
    """Reject a rule that could never deliver, naming the field at fault."""
    channel = services.channel(rule.channel)
    if channel is None:
        raise field_error(
            "channel", f"unknown channel {rule.channel!r}; have {sorted(services.channels)}"
        )
    if (rule.recipient is None) == (rule.recipient_field is None):
        raise field_error("recipient", "give exactly one of recipient and recipient_field")
    if rule.recipient is not None and (problem := channel.validate_recipient(rule.recipient)):
        raise field_error("recipient", problem)
    if any(lead.total_seconds() < 0 for lead in rule.lead_times):
        raise field_error("lead_times", "lead times must not be negative")


class RuleController(Controller):
    """Manage the routing rules that turn events into notifications."""

    path = "/api/v1/rules"
    tags = ["rules"]  # noqa: RUF012 - litestar reads it from the class

    @post("/", status_code=201, summary="Create a routing rule")
    async def create(self, data: JSONBody[RuleCreate], services: NamedDependency[Services]) -> Rule:
        """Applies to events processed from now on."""
        validate_rule(data, services)
        async with transaction(services.pool) as conn:
            return await queries.insert_rule(conn, data)

    @get("/", summary="List routing rules")
    async def list_rules(self, services: NamedDependency[Services]) -> list[Rule]:
        """Every rule, oldest first."""
        async with transaction(services.pool) as conn:
            return await queries.list_rules(conn)

    @get("/{rule_id:uuid}", summary="One routing rule")
    async def get_rule(
        self, rule_id: FromPath[uuid.UUID], services: NamedDependency[Services]
    ) -> Rule:
        """The rule, or 404."""
        async with transaction(services.pool) as conn:
            rule = await queries.get_rule(conn, rule_id)
        if rule is None:
            raise not_found("rule", rule_id)
        return rule

    @delete("/{rule_id:uuid}", status_code=204, summary="Delete a routing rule")
    async def delete_rule(
        self, rule_id: FromPath[uuid.UUID], services: NamedDependency[Services]
    ) -> None:
        """Notifications it already made are kept."""
        async with transaction(services.pool) as conn:
            if not await queries.delete_rule(conn, rule_id):
                raise not_found("rule", rule_id)
