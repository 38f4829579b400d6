"""The routing-rule use cases: create, list, get, change and delete a tenant's rules.

Each function is one transaction of its own, on a connection from ``pool``; the API, the CLI
and the dashboard call these. Invalid input raises :class:`notifier.errors.ProblemError`
naming the field at fault; another tenant's rule is a 404 like a missing one.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping

import msgspec

from notifier import idempotency
from notifier.api_types import check_storable, checked_channel, checked_local_time
from notifier.channels.base import Channel
from notifier.db import Connection, Pool, transaction
from notifier.endpoints.references import check_endpoint, endpoint_channel_and_recipient
from notifier.errors import field_error, not_found
from notifier.idempotency import IdempotentRequest, Outcome
from notifier.rules import queries
from notifier.rules.keys import key_template_problem
from notifier.rules.schemas import Rule, RuleAction, RuleCreate, RuleUpdate
from notifier.templates.catalog import find_template

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


def validate_rule(rule: RuleCreate, channels: Mapping[str, Channel]) -> list[datetime.timedelta]:
    """Reject a rule that could never deliver, naming the field at fault; its lead times."""
    check_storable(rule)
    if rule.key is not None and (problem := key_template_problem(rule.key)):
        raise field_error("key", problem)
    if rule.action is RuleAction.CANCEL:
        if rule.key is None:
            raise field_error("key", "a cancel rule needs the key of the reminders it cancels")
        for unused in ("channel", "recipient", "recipient_field", "endpoint"):
            if getattr(rule, unused) is not None:
                raise field_error(unused, "a cancel rule makes no notification: leave it out")
        return parse_lead_times(rule.lead_times)
    if rule.channel is None:
        raise field_error("channel", "a notify rule needs the channel it delivers through")
    if rule.digest is not None:
        check_digest(rule)
    checked_channel(channels, rule.channel, rule.recipient)
    if rule.endpoint is not None:
        endpoint_channel_and_recipient(rule.endpoint, rule.channel)
        if rule.recipient is not None or rule.recipient_field is not None:
            raise field_error("endpoint", "give endpoint, recipient or recipient_field: one")
    elif (rule.recipient is None) == (rule.recipient_field is None):
        raise field_error("recipient", "give exactly one of recipient and recipient_field")
    checked_local_time(rule.timezone, rule.quiet_hours)
    parse_deliver_within(rule.deliver_within)
    return parse_lead_times(rule.lead_times)


# A digest's window: long enough to collect, short enough that its events are still news.
MIN_DIGEST_WINDOW = datetime.timedelta(seconds=1)
MAX_DIGEST_WINDOW = datetime.timedelta(days=7)


def digest_window(window: str) -> datetime.timedelta:
    """The ``digest.window`` duration, checked: a 422 naming it unless one second to 7 days."""
    try:
        parsed = msgspec.convert(window, datetime.timedelta)
    except msgspec.ValidationError as exc:
        raise field_error(
            "digest.window", f"is not an ISO 8601 duration such as PT10M: {exc}"
        ) from None
    if not MIN_DIGEST_WINDOW <= parsed <= MAX_DIGEST_WINDOW:
        raise field_error("digest.window", "must be from PT1S to P7D")
    return parsed


def check_digest(rule: RuleCreate) -> None:
    """A 422 naming the field that keeps ``rule`` (a notify rule) from being a digest."""
    assert rule.digest is not None
    if rule.digest.window is not None and rule.digest.until is not None:
        raise field_error("digest.until", "give digest.window or digest.until: one, not both")
    if rule.digest.window is not None:
        digest_window(rule.digest.window)
    elif rule.digest.until is None:
        raise field_error(
            "digest", 'give a window ({"window": "PT10M"}) or a time of day ({"until": "09:00"})'
        )
    if rule.key is None:
        raise field_error("key", "a digest collects the events of one key: give a key")
    if rule.date_field is not None:
        raise field_error("date_field", "a digest goes out when its window ends: leave it out")


def parse_deliver_within(duration: str | None) -> datetime.timedelta | None:
    """The rule's deadline after each send time: a positive ISO 8601 duration, or None."""
    if duration is None:
        return None
    try:
        within = msgspec.convert(duration, datetime.timedelta)
    except msgspec.ValidationError as exc:
        raise field_error(
            "deliver_within", f"is not an ISO 8601 duration such as PT1H: {exc}"
        ) from None
    if within <= datetime.timedelta(0):
        raise field_error("deliver_within", "must be positive")
    if within > MAX_LEAD_TIME:
        raise field_error("deliver_within", "must not exceed P3650D (ten years)")
    return within


async def check_template(conn: Connection, tenant_id: str, name: str | None) -> None:
    """A 422 naming ``template`` unless it is the tenant's or a built-in."""
    if name is not None and await find_template(conn, tenant_id, name) is None:
        raise field_error(
            "template", f"no template {name!r}: create it at /api/v1/templates/ first"
        )


async def create_rule(
    pool: Pool,
    channels: Mapping[str, Channel],
    tenant_id: str,
    rule: RuleCreate,
    idempotent: IdempotentRequest | None = None,
) -> Outcome[Rule]:
    """Store ``rule`` for the tenant (201); it applies to events processed from now on.

    ``channels``: the configured channels, which the rule's channel and recipient must fit.
    With ``idempotent``, a repeat answers the first rule and creates no second one.
    """
    lead_times = validate_rule(rule, channels)
    async with transaction(pool) as conn:

        async def insert() -> Outcome[Rule]:
            await check_template(conn, tenant_id, rule.template)
            await check_endpoint(conn, tenant_id, rule.endpoint)
            return Outcome(201, await queries.insert_rule(conn, tenant_id, rule, lead_times))

        return await idempotency.once(conn, idempotent, Rule, insert)


async def list_rules(pool: Pool, tenant_id: str) -> list[Rule]:
    """Every rule of the tenant, oldest first."""
    async with transaction(pool) as conn:
        return await queries.list_rules(conn, tenant_id)


async def get_rule(pool: Pool, tenant_id: str, rule_id: uuid.UUID) -> Rule:
    """The tenant's rule; a 404 if it has none with that id."""
    async with transaction(pool) as conn:
        rule = await queries.get_rule(conn, tenant_id, rule_id)
    if rule is None:
        raise not_found("rule", rule_id)
    return rule


async def update_rule(
    pool: Pool,
    channels: Mapping[str, Channel],
    tenant_id: str,
    rule_id: uuid.UUID,
    change: RuleUpdate,
) -> Rule:
    """Apply the fields ``change`` gives to the locked rule, validated as a new rule would
    be. Notifications already made keep their template and schedule."""
    async with transaction(pool) as conn:
        current = await queries.lock_rule(conn, tenant_id, rule_id)
        if current is None:
            raise not_found("rule", rule_id)
        changed = change.applied_to(current)
        lead_times = validate_rule(changed, channels)
        await check_template(conn, tenant_id, changed.template)
        await check_endpoint(conn, tenant_id, changed.endpoint)
        return await queries.update_rule(conn, tenant_id, rule_id, changed, lead_times)


async def delete_rule(pool: Pool, tenant_id: str, rule_id: uuid.UUID) -> None:
    """Delete the tenant's rule (a 404 if none); notifications it made are kept."""
    async with transaction(pool) as conn:
        if not await queries.delete_rule(conn, tenant_id, rule_id):
            raise not_found("rule", rule_id)
