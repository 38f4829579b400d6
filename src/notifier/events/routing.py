"""Turning one event into notification drafts by its matching routing rules."""

from __future__ import annotations

import datetime
from typing import Any

import msgspec

from notifier.endpoints.references import endpoint_recipient
from notifier.events.schemas import Event
from notifier.instants import storable
from notifier.notifications.localtime import zone_named
from notifier.notifications.scheduling import (
    DEFAULT_EXPIRY_GRACE,
    NotificationDraft,
    PlannedSend,
    plan_sends,
)
from notifier.notifications.schemas import NotificationStatus
from notifier.recipients import sms_recipient
from notifier.rules.keys import render_key
from notifier.rules.schemas import Rule, RuleAction


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


def recipient_at(payload: dict[str, Any], path: str) -> str:
    """The recipient at ``path``: a non-empty string, or a number such as a phone number.

    ``null``, ``true`` or an object would otherwise become the recipient ``"None"``,
    ``"True"`` or a dict's repr, and be "delivered" there by a lenient channel.
    """
    value = lookup(payload, path)
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise RoutingError(f"payload field {path!r} is not a usable recipient")
    return str(value)


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
                midnight = datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC)
                return _in_range(midnight, path)
        else:
            if parsed.tzinfo is None:
                raise RoutingError(f"payload field {path!r} is a date-time without a time zone")
            return _in_range(parsed, path)
    raise RoutingError(f"payload field {path!r} is not an ISO 8601 date or date-time")


def _in_range(value: datetime.datetime, path: str) -> datetime.datetime:
    """``value`` in UTC, if in range: PostgreSQL reads offsets beyond 15:59 in text as errors."""
    if not storable(value):
        raise RoutingError(f"payload field {path!r} is out of range")
    return value.astimezone(datetime.UTC)


def drafts_for_event(
    event: Event,
    rules: list[Rule],
    now: datetime.datetime,
    *,
    grace: datetime.timedelta = DEFAULT_EXPIRY_GRACE,
    phone_region: str | None = None,
) -> list[NotificationDraft]:
    """One draft per rule and lead time; a rule the payload cannot satisfy yields a failed draft.

    The event's ``created_at`` is when notifier accepted it: however long it waited to be
    processed, its target dates are judged from then (``grace``: NOTIFIER_EXPIRY_GRACE_SECONDS).
    An SMS recipient is resolved to E.164 as the API resolves one, national numbers in
    ``phone_region`` (NOTIFIER_DEFAULT_PHONE_REGION); one that is no number fails the draft.
    """
    drafts = []
    for rule in rules:
        if rule.action is RuleAction.CANCEL:
            continue  # makes no notification (notifier.events.superseding)
        common: dict[str, Any] = {
            "notification_type": event.type,
            "channel": rule.channel,
            "event_id": event.id,
            "rule_id": rule.id,
            "template": rule.template,
            "context": event.payload,
            "entity_id": _entity_id(event.payload),
            "quiet_hours": rule.quiet_hours,
            "endpoint_id": rule.endpoint,
        }
        try:
            if rule.endpoint is not None:
                recipient = endpoint_recipient(rule.endpoint)
            else:
                recipient = rule.recipient or recipient_at(
                    event.payload, rule.recipient_field or ""
                )
                if rule.channel == "sms":
                    recipient = _sms_recipient(rule, recipient, phone_region)
            target_date = (
                parse_target_date(lookup(event.payload, rule.date_field), rule.date_field)
                if rule.date_field
                else None
            )
            timezone = _timezone(event.payload, rule)
            key = rule_key(rule, event.payload)
        except RoutingError as exc:
            failed = PlannedSend(datetime.timedelta(0), now, NotificationStatus.FAILED)
            drafts.append(
                NotificationDraft(
                    **common, recipient="", send=failed, target_date=None, error=str(exc)
                )
            )
            continue
        zone = zone_named(timezone) if timezone else None
        for send in plan_sends(
            target_date,
            rule.lead_times,
            now,
            grace=grace,
            accepted_at=min(event.created_at, now),
            zone=zone,
            quiet_hours=rule.quiet_hours,
            deliver_within=rule.deliver_within,
        ):
            drafts.append(
                NotificationDraft(
                    **common,
                    recipient=recipient,
                    send=send,
                    target_date=target_date,
                    timezone=timezone,
                    key=key,
                    digest_window=(
                        msgspec.convert(rule.digest.window, datetime.timedelta)
                        if rule.digest and rule.digest.window
                        else None
                    ),
                    digest_until=(
                        datetime.time.fromisoformat(rule.digest.until)
                        if rule.digest and rule.digest.until
                        else None
                    ),
                )
            )
    return drafts


def _sms_recipient(rule: Rule, number: str, phone_region: str | None) -> str:
    """``number`` in E.164 form (:func:`notifier.recipients.sms_recipient`), else a
    RoutingError naming where it came from and how to fix it."""
    try:
        return sms_recipient(number, phone_region)
    except ValueError as exc:
        source = (
            "the rule's recipient"
            if rule.recipient is not None
            else f"payload field {rule.recipient_field!r}"
        )
        raise RoutingError(f"{source} ({number!r}) {exc}") from None


def rule_key(rule: Rule, payload: dict[str, Any]) -> str | None:
    """The key ``rule`` gives an event with ``payload``; None for a rule without one."""
    if rule.key is None:
        return None
    try:
        return render_key(rule.key, payload)
    except ValueError as exc:
        raise RoutingError(str(exc)) from None


def _timezone(payload: dict[str, Any], rule: Rule) -> str | None:
    """The recipient's IANA zone: the payload's ``timezone_field`` if present, else the rule's.

    The rule's own zone was checked when it was stored; one from the payload is checked here.
    """
    if rule.timezone_field is None:
        return rule.timezone
    try:
        value = lookup(payload, rule.timezone_field)
    except RoutingError:
        return rule.timezone
    if not isinstance(value, str):
        raise RoutingError(f"payload field {rule.timezone_field!r} is not an IANA time zone")
    try:
        zone_named(value)
    except ValueError as exc:
        raise RoutingError(f"payload field {rule.timezone_field!r}: {exc}") from None
    return value


def _entity_id(payload: dict[str, Any]) -> str | None:
    """The payload's ``entity_id`` (or ``id``) when it has a scalar one."""
    for key in ("entity_id", "id"):
        value = payload.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    return None
