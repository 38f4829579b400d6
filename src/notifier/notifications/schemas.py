"""The notification resource at the API boundary."""

from __future__ import annotations

import datetime
import enum
import uuid
from collections.abc import Iterable
from typing import Annotated, Any

import msgspec

from notifier.api_types import (
    MAX_FILTER_LENGTH,
    AwareDatetime,
    ChannelName,
    EventType,
    Payload,
    Recipient,
)
from notifier.notifications.localtime import QuietHours, TimeZoneName
from notifier.recipients import MAX_PHONE_LENGTH

NotificationKey = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=200,
        description="What the notification is about: one pending notification per key",
        examples=["password-expiry-user-42"],
    ),
]


class NotificationStatus(enum.StrEnum):
    """Where a notification is in its life. Only ``pending`` may still be sent."""

    PENDING = "pending"
    SENT = "sent"
    CANCELLED = "cancelled"
    # Its deadline (expires_at) passed, or its target date long before it could be sent.
    EXPIRED = "expired"
    SKIPPED = "skipped"  # superseded by a later reminder for the same target
    FAILED = "failed"  # a permanent error: retrying cannot help
    DEAD = "dead"  # every attempt failed
    SUPPRESSED = "suppressed"  # the recipient opted out; never sent
    # A newer event (or request) for its key took its place; never sent.
    SUPERSEDED = "superseded"

    @property
    def replayable(self) -> bool:
        """Whether ``POST .../retry`` may send it again."""
        return self in {NotificationStatus.FAILED, NotificationStatus.DEAD}


class AttemptOutcome(enum.StrEnum):
    """What one delivery attempt came to, as ``delivery_attempts.outcome`` stores it."""

    DELIVERED = "delivered"  # a channel accepted it: the notification is sent
    RETRY = "retry"  # failed, tried again later
    FAILED = "failed"  # failed for good: the notification is failed, or dead


class NotificationCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/notifications/``: the seed shape plus optional channel fields."""

    notification_type: EventType
    entity_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    # Seed clients send it without an offset, meaning UTC (as the seed read it).
    target_date: Annotated[
        datetime.datetime,
        msgspec.Meta(description="An ISO 8601 date-time; one without an offset is UTC"),
    ]
    lead_time_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 7
    # Checked with notifier.recipients; the schema says so for clients and the fuzz tests.
    email: (
        Annotated[
            str, msgspec.Meta(max_length=320, extra_json_schema={"extra": {"format": "email"}})
        ]
        | None
    ) = None
    # Stored in E.164 form when it reads as a number (national ones in
    # NOTIFIER_DEFAULT_PHONE_REGION), else as given; an SMS recipient must read as one.
    phone: (
        Annotated[
            str,
            msgspec.Meta(min_length=1, max_length=MAX_PHONE_LENGTH, examples=["+14155550123"]),
        ]
        | None
    ) = None
    # Beyond the seed API: where to send it. The recipient defaults to email, then phone.
    channel: ChannelName | None = None
    recipient: Recipient | None = None
    data: Payload = msgspec.field(default_factory=dict)
    # The recipient's IANA zone: lead days are counted on its clock, quiet hours read in it.
    timezone: TimeZoneName | None = None
    quiet_hours: QuietHours | None = None
    # One of the tenant's webhook endpoints (its id), instead of a recipient URL.
    endpoint: uuid.UUID | None = None
    # A pending notification of the tenant with this key (made through the API) is
    # replaced by this one: answered 200 with its id in ``replaced``.
    key: NotificationKey | None = None
    # The deliver-by: not sent after it (``expired``, saying so). None: no deadline; then
    # only a target date passed by more than NOTIFIER_EXPIRY_GRACE_SECONDS expires it.
    expires_at: AwareDatetime | None = None


class DeliveryAttempt(msgspec.Struct, kw_only=True):
    """One try at sending a notification."""

    attempt: int
    channel: str
    outcome: str
    started_at: datetime.datetime
    finished_at: datetime.datetime
    status_code: int | None = None
    error: str | None = None


class Notification(msgspec.Struct, kw_only=True):
    """A stored notification."""

    id: uuid.UUID
    notification_type: str
    entity_id: str | None
    target_date: datetime.datetime | None
    # Whole days in the seed API; an int keeps `7` from turning into `7.0` on a replay.
    # (Documented as one "number": "oneOf integer, number" would reject every whole number.)
    lead_time_days: Annotated[
        int | float, msgspec.Meta(extra_json_schema={"extra": {"one_of": None, "type": "number"}})
    ]
    email: str | None
    phone: str | None
    channel: str
    recipient: str
    status: NotificationStatus
    send_at: datetime.datetime
    sent_at: datetime.datetime | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    attempts: int
    last_error: str | None = None
    event_id: uuid.UUID | None = None
    rule_id: uuid.UUID | None = None
    cancelled_at: datetime.datetime | None = None
    timezone: str | None = None
    quiet_hours: QuietHours | None = None
    # The webhook endpoint it goes to, if it names one (recipient is then "endpoint:<id>").
    endpoint: uuid.UUID | None = None
    key: str | None = None
    expires_at: datetime.datetime | None = None
    # The event whose rule superseded (status superseded) or cancelled it.
    cancelled_by_event_id: uuid.UUID | None = None
    # The notification that replaced it through the API (status superseded).
    replaced_by_id: uuid.UUID | None = None
    # A digest: how many events it holds (its ``events``), and whether more may still join.
    digest_count: int | None = None
    digest_open: bool | None = None


class NotificationReplacement(Notification, kw_only=True):
    """``POST /api/v1/notifications/`` with a ``key``: the new notification and the id of
    the pending one of that key it replaced (None only while decoding a stored 201, which
    has none: :func:`notifier.notifications.service.schedule` answers those as they were)."""

    replaced: uuid.UUID | None = None


class CancelledCount(msgspec.Struct, kw_only=True):
    """``DELETE /api/v1/notifications/?key=...``: how many pending ones were cancelled."""

    cancelled: int


class NotificationDetail(Notification, kw_only=True):
    """A notification with its delivery attempts, oldest first."""

    delivery_attempts: list[DeliveryAttempt] = msgspec.field(default_factory=list)


def notification_from_row(row: dict[str, Any]) -> Notification:
    """Build the response struct from a ``notifier.notifications`` row."""
    lead_time: datetime.timedelta = row["lead_time"]
    days = lead_time.total_seconds() / 86400
    fields = {name: row[name] for name in Notification.__struct_fields__ if name in row}
    fields["lead_time_days"] = int(days) if days.is_integer() else days
    fields["quiet_hours"] = QuietHours.from_column(row.get("quiet_hours"))
    fields["endpoint"] = row.get("endpoint_id")
    return Notification(**fields)


FilterText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_FILTER_LENGTH)]


class NotificationFilter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which of a tenant's notifications: every field given must match (exactly; times:
    ``created_after`` inclusive, ``created_before`` exclusive).

    The one filter of every way to choose notifications: the API's list (query
    parameters) and bulk replay and cancel (a JSON body), and the dashboard's list and
    bulk actions (a form), all pass it down to ``notifications/selection.py``.
    """

    status: NotificationStatus | None = None
    notification_type: FilterText | None = None
    entity_id: FilterText | None = None
    recipient: FilterText | None = None
    channel: FilterText | None = None
    key: FilterText | None = None
    event_id: uuid.UUID | None = None
    created_after: AwareDatetime | None = None
    created_before: AwareDatetime | None = None

    def statuses_within(self, wanted: Iterable[NotificationStatus]) -> list[NotificationStatus]:
        """The statuses of ``wanted`` this filter lets through."""
        return [s for s in wanted if self.status is None or s is self.status]
