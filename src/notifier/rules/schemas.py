"""The routing rule resource at the API boundary."""

from __future__ import annotations

import datetime
import enum
import uuid
from typing import Annotated, Any

import msgspec

from notifier.api_types import ChannelName, Recipient
from notifier.notifications.localtime import LocalTime, QuietHours, TimeZoneName
from notifier.patterns import NO_WHITESPACE, WHITESPACE, whole
from notifier.rules.keys import MAX_KEY_LENGTH
from notifier.templates.schemas import TemplateName

# A dotted path into the event payload: "email", "user.contact.email".
FieldPath = Annotated[
    str,
    msgspec.Meta(
        pattern=whole(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*"), max_length=200
    ),
]
# "user.signup", "payment.*" (every type starting with "payment.") or "*" (every event).
EventTypePattern = Annotated[
    str,
    msgspec.Meta(pattern=whole(rf"\*|[^{WHITESPACE}*]+(\.\*)?"), min_length=1, max_length=200),
]
# Strings, not timedeltas: in lax mode msgspec reads a number as seconds, so `[7]` meant to
# be a week would silently become 7 seconds. The API parses and bounds them.
ISO_DURATION_PATTERN = whole(f"[-+]?[Pp]{NO_WHITESPACE}*")
IsoDuration = Annotated[
    str,
    msgspec.Meta(
        pattern=ISO_DURATION_PATTERN,
        max_length=40,
        description="An ISO 8601 duration in days, hours, minutes, seconds: P7D, PT12H, P1DT6H",
    ),
]
LeadTimes = Annotated[
    list[IsoDuration],
    msgspec.Meta(
        min_length=1,
        max_length=20,
        # Litestar leaves the items' constraints out of the OpenAPI document: restate them.
        extra_json_schema={
            "extra": {"items": {"type": "string", "pattern": ISO_DURATION_PATTERN, "maxLength": 40}}
        },
    ),
]
RuleName = Annotated[str, msgspec.Meta(max_length=200)]
KeyTemplate = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Payload fields in braces naming what the reminders are about",
        examples=["{user_id}", "subscription-{subscription.id}"],
    ),
]


class DigestSpec(
    msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, omit_defaults=True
):
    """A rule's digest: its events of one key, collected into one notification per window.

    The window opens with the first event of a key and the digest goes out when it ends:
    ``window`` after that event (``"PT10M"``), or at the next ``until`` (``"09:00"``) on
    the recipient's clock (the rule's ``timezone`` / ``timezone_field``; UTC without one).
    Exactly one of the two.
    """

    window: IsoDuration | None = None
    until: LocalTime | None = None


class RuleAction(enum.StrEnum):
    """What a matching event does through the rule."""

    NOTIFY = "notify"  # make notifications (superseding the key's pending ones)
    CANCEL = "cancel"  # cancel the pending ones of the rules with the same key template


class RuleCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/rules/``. Lead times are ISO 8601 durations, e.g. ``"P7D"``."""

    event_type: EventTypePattern
    # Required to notify; a cancel rule has none (nor a recipient).
    channel: ChannelName | None = None
    recipient_field: FieldPath | None = None
    recipient: Recipient | None = None
    date_field: FieldPath | None = None
    lead_times: LeadTimes = msgspec.field(default_factory=lambda: ["P0D"])
    # A template of the tenant's or a built-in; none: the one named after the event type.
    template: TemplateName | None = None
    name: RuleName = ""
    enabled: bool = True
    # The recipients' IANA zone: lead days are counted on its clock, quiet hours read in it.
    # ``timezone_field`` reads each recipient's zone from the payload; ``timezone`` is the
    # fallback when the payload has no such field.
    timezone: TimeZoneName | None = None
    timezone_field: FieldPath | None = None
    quiet_hours: QuietHours | None = None
    # One of the tenant's webhook endpoints (its id), instead of recipient or
    # recipient_field; the channel is then webhook.
    endpoint: uuid.UUID | None = None
    # Reminders about the same key supersede each other; see notifier.rules.keys.
    key: KeyTemplate | None = None
    action: RuleAction = RuleAction.NOTIFY
    # One notification per key and window instead of one per event (needs a key).
    digest: DigestSpec | None = None
    # A deadline for the notifications it makes: each expires this long after its send
    # time (an ISO 8601 duration, "PT1H"). None: only a long-passed target date expires them.
    deliver_within: IsoDuration | None = None


class RuleUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``PATCH /api/v1/rules/{id}``: the fields to change; ``null`` clears an optional one."""

    event_type: EventTypePattern | msgspec.UnsetType = msgspec.UNSET
    channel: ChannelName | msgspec.UnsetType | None = msgspec.UNSET
    recipient_field: FieldPath | msgspec.UnsetType | None = msgspec.UNSET
    recipient: Recipient | msgspec.UnsetType | None = msgspec.UNSET
    date_field: FieldPath | msgspec.UnsetType | None = msgspec.UNSET
    lead_times: LeadTimes | msgspec.UnsetType = msgspec.UNSET
    template: TemplateName | msgspec.UnsetType | None = msgspec.UNSET
    name: RuleName | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    timezone: TimeZoneName | msgspec.UnsetType | None = msgspec.UNSET
    timezone_field: FieldPath | msgspec.UnsetType | None = msgspec.UNSET
    quiet_hours: QuietHours | msgspec.UnsetType | None = msgspec.UNSET
    endpoint: uuid.UUID | msgspec.UnsetType | None = msgspec.UNSET
    key: KeyTemplate | msgspec.UnsetType | None = msgspec.UNSET
    action: RuleAction | msgspec.UnsetType = msgspec.UNSET
    digest: DigestSpec | msgspec.UnsetType | None = msgspec.UNSET
    deliver_within: IsoDuration | msgspec.UnsetType | None = msgspec.UNSET

    def applied_to(self, rule: Rule) -> RuleCreate:
        """``rule`` with these changes, as a whole rule to validate and store."""
        current = {name: getattr(rule, name) for name in RuleCreate.__struct_fields__}
        current["lead_times"] = msgspec.to_builtins(rule.lead_times)  # back to "P7D" strings
        current["deliver_within"] = msgspec.to_builtins(rule.deliver_within)
        changes = {
            name: value
            for name, value in msgspec.structs.asdict(self).items()
            if value is not msgspec.UNSET
        }
        return RuleCreate(**(current | changes))


class Rule(msgspec.Struct, kw_only=True):
    """A stored routing rule."""

    id: uuid.UUID
    name: str
    event_type: str
    channel: str | None
    recipient_field: str | None
    recipient: str | None
    date_field: str | None
    lead_times: list[datetime.timedelta]
    template: str | None
    enabled: bool
    created_at: datetime.datetime
    timezone: str | None = None
    timezone_field: str | None = None
    quiet_hours: QuietHours | None = None
    endpoint: uuid.UUID | None = None
    key: str | None = None
    action: RuleAction = RuleAction.NOTIFY
    digest: DigestSpec | None = None
    deliver_within: datetime.timedelta | None = None


def rule_from_row(row: dict[str, Any]) -> Rule:
    """The response struct from a ``notifier.routing_rules`` row (internal columns left out)."""
    fields = {name: row[name] for name in Rule.__struct_fields__ if name in row}
    fields["quiet_hours"] = QuietHours.from_column(row.get("quiet_hours"))
    fields["endpoint"] = row.get("endpoint_id")
    fields["action"] = RuleAction(row.get("action", RuleAction.NOTIFY))
    digest = row.get("digest")
    fields["digest"] = msgspec.convert(digest, DigestSpec) if digest is not None else None
    return Rule(**fields)
