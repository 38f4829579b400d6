"""SQL for routing rules."""

from __future__ import annotations

import datetime
import uuid

import msgspec
from psycopg.types.json import Jsonb

from notifier.db import Connection
from notifier.notifications.localtime import QuietHours
from notifier.rules.schemas import Rule, RuleCreate, rule_from_row


def _rule_params(rule: RuleCreate, lead_times: list[datetime.timedelta]) -> dict[str, object]:
    """The query parameters of a rule's columns (quiet hours as JSON, or NULL)."""
    # deliver_within was checked by notifier.rules.service.parse_deliver_within.
    deliver_within = (
        None
        if rule.deliver_within is None
        else msgspec.convert(rule.deliver_within, datetime.timedelta)
    )
    return msgspec.structs.asdict(rule) | {
        "lead_times": lead_times,
        "quiet_hours": QuietHours.to_column(rule.quiet_hours),
        "deliver_within": deliver_within,
        "digest": Jsonb(msgspec.to_builtins(rule.digest)) if rule.digest else None,
    }


async def insert_rule(
    conn: Connection, tenant_id: str, rule: RuleCreate, lead_times: list[datetime.timedelta]
) -> Rule:
    """Store a tenant's new rule with its ``lead_times`` parsed from the request's durations."""
    cursor = await conn.execute(
        """
        INSERT INTO notifier.routing_rules
            (tenant_id, name, event_type, channel, recipient_field, recipient, date_field,
             lead_times, template, enabled, timezone, timezone_field, quiet_hours, key, action,
             digest, deliver_within, endpoint_id)
        VALUES (%(tenant_id)s, %(name)s, %(event_type)s, %(channel)s, %(recipient_field)s,
                %(recipient)s, %(date_field)s, %(lead_times)s, %(template)s, %(enabled)s,
                %(timezone)s, %(timezone_field)s, %(quiet_hours)s, %(key)s, %(action)s,
                %(digest)s, %(deliver_within)s, %(endpoint)s)
        RETURNING *
        """,
        _rule_params(rule, lead_times) | {"tenant_id": tenant_id},
    )
    row = await cursor.fetchone()
    assert row is not None
    return rule_from_row(row)


async def matching_rules(conn: Connection, tenant_id: str, event_type: str) -> list[Rule]:
    """The tenant's enabled rules whose pattern matches ``event_type``, oldest first."""
    cursor = await conn.execute(
        """
        SELECT * FROM notifier.routing_rules
        WHERE tenant_id = %(tenant_id)s
          AND enabled
          AND (event_type = %(type)s
               OR event_type = '*'
               OR (event_type LIKE '%%.*' AND starts_with(%(type)s, rtrim(event_type, '*'))))
        ORDER BY created_at, id
        """,
        {"tenant_id": tenant_id, "type": event_type},
    )
    return [rule_from_row(row) for row in await cursor.fetchall()]


async def list_rules(conn: Connection, tenant_id: str) -> list[Rule]:
    """Every rule of the tenant, oldest first."""
    cursor = await conn.execute(
        "SELECT * FROM notifier.routing_rules WHERE tenant_id = %s ORDER BY created_at, id",
        [tenant_id],
    )
    return [rule_from_row(row) for row in await cursor.fetchall()]


async def get_rule(conn: Connection, tenant_id: str, rule_id: uuid.UUID) -> Rule | None:
    """One of the tenant's rules, or None."""
    cursor = await conn.execute(
        "SELECT * FROM notifier.routing_rules WHERE tenant_id = %s AND id = %s",
        [tenant_id, rule_id],
    )
    row = await cursor.fetchone()
    return rule_from_row(row) if row else None


async def lock_rule(conn: Connection, tenant_id: str, rule_id: uuid.UUID) -> Rule | None:
    """The tenant's rule, locked until the transaction ends, or None."""
    cursor = await conn.execute(
        "SELECT * FROM notifier.routing_rules WHERE id = %s AND tenant_id = %s FOR UPDATE",
        [rule_id, tenant_id],
    )
    row = await cursor.fetchone()
    return rule_from_row(row) if row else None


async def update_rule(
    conn: Connection,
    tenant_id: str,
    rule_id: uuid.UUID,
    rule: RuleCreate,
    lead_times: list[datetime.timedelta],
) -> Rule:
    """Replace every field of a (locked) rule; events processed from now on use it."""
    cursor = await conn.execute(
        """
        UPDATE notifier.routing_rules
        SET name = %(name)s, event_type = %(event_type)s, channel = %(channel)s,
            recipient_field = %(recipient_field)s, recipient = %(recipient)s,
            date_field = %(date_field)s, lead_times = %(lead_times)s,
            template = %(template)s, enabled = %(enabled)s, timezone = %(timezone)s,
            timezone_field = %(timezone_field)s, quiet_hours = %(quiet_hours)s,
            key = %(key)s, action = %(action)s, digest = %(digest)s,
            deliver_within = %(deliver_within)s, endpoint_id = %(endpoint)s
        WHERE tenant_id = %(tenant_id)s AND id = %(id)s
        RETURNING *
        """,
        _rule_params(rule, lead_times) | {"tenant_id": tenant_id, "id": rule_id},
    )
    row = await cursor.fetchone()
    assert row is not None
    return rule_from_row(row)


async def delete_rule(conn: Connection, tenant_id: str, rule_id: uuid.UUID) -> bool:
    """Remove one of the tenant's rules; notifications it made keep existing. True if it existed."""
    cursor = await conn.execute(
        "DELETE FROM notifier.routing_rules WHERE tenant_id = %s AND id = %s",
        [tenant_id, rule_id],
    )
    return cursor.rowcount == 1


async def rules_sharing_key(conn: Connection, tenant_id: str, key_template: str) -> list[uuid.UUID]:
    """The tenant's notify rules with ``key_template`` as their key (enabled or not), by id:
    the rules whose reminders a cancel rule of that key cancels."""
    cursor = await conn.execute(
        """
        SELECT id FROM notifier.routing_rules
        WHERE tenant_id = %s AND key = %s AND action = 'notify'
        ORDER BY id
        """,
        [tenant_id, key_template],
    )
    return [row["id"] for row in await cursor.fetchall()]
