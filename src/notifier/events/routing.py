"""Turning one event into notification drafts by its matching routing rules."""

from __future__ import annotations

import datetime
from typing import Any

import msgspec

from notifier.events.schemas import Event
from notifier.notifications.scheduling import NotificationDraft, PlannedSend, plan_sends
from notifier.notifications.schemas import NotificationStatus
from notifier.rules.schemas import Rule


class RoutingError(ValueError):
    """The event's payload lacks what a rule needs."""


def lookup(payload: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` in ``payload``."""
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise RoutingError(f"payload has no field {path!r}")
        value = value[part]
    return value


def parse_target_date(value: Any, path: str) -> datetime.datetime:
    """A payload date: an ISO 8601 instant with a zone, or a date (midnight UTC)."""
    if isinstance(value, str):
        try:
            parsed = msgspec.convert(value, datetime.datetime)
        except msgspec.ValidationError:
            try:
                day = msgspec.convert(value, datetime.date)
            except msgspec.ValidationError:
                pass
            else:
                return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC)
        else:
            if parsed.tzinfo is not None:
                return parsed
            raise RoutingError(f"payload field {path!r} is a date-time without a time zone")
    raise RoutingError(f"payload field {path!r} is not an ISO 8601 date or date-time")


def drafts_for_event(
    event: Event, rules: list[Rule], now: datetime.datetime
) -> list[NotificationDraft]:
    """One draft per rule and lead time; a rule the payload cannot satisfy yields a failed draft."""
    drafts = []
    for rule in rules:
        common: dict[str, Any] = {
            "notification_type": event.type,
            "channel": rule.channel,
            "event_id": event.id,
            "rule_id": rule.id,
            "template": rule.template,
            "context": event.payload,
            "entity_id": _entity_id(event.payload),
        }
        try:
            recipient = rule.recipient or str(lookup(event.payload, rule.recipient_field or ""))
            target_date = (
                parse_target_date(lookup(event.payload, rule.date_field), rule.date_field)
                if rule.date_field
                else None
            )
        except RoutingError as exc:
            failed = PlannedSend(datetime.timedelta(0), now, NotificationStatus.FAILED)
            drafts.append(
                NotificationDraft(
                    **common, recipient="", send=failed, target_date=None, error=str(exc)
                )
            )
            continue
        for send in plan_sends(target_date, rule.lead_times, now):
            drafts.append(
                NotificationDraft(**common, recipient=recipient, send=send, target_date=target_date)
            )
    return drafts


def _entity_id(payload: dict[str, Any]) -> str | None:
    """The payload's ``entity_id`` (or ``id``) when it has a scalar one."""
    for key in ("entity_id", "id"):
        value = payload.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None
