"""The event resource at the API boundary."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import msgspec

from notifier.api_types import AwareDatetime, EventType, Payload
from notifier.notifications.schemas import Notification


class EventCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/events/``."""

    type: EventType
    payload: Payload = msgspec.field(default_factory=dict)
    occurred_at: AwareDatetime | None = None


class Event(msgspec.Struct, kw_only=True):
    """A stored event."""

    id: uuid.UUID
    type: str
    payload: Payload
    created_at: datetime.datetime
    occurred_at: datetime.datetime | None = None
    processed_at: datetime.datetime | None = None
    source: str | None = None
    external_id: str | None = None
    # "api" or "sql" (the outbox table).
    producer: str = "api"
    # Why processing made no notifications, e.g. too many of them for one event.
    processing_error: str | None = None


def event_from_row(row: dict[str, Any]) -> Event:
    """The response struct from a ``notifier.events`` row (internal columns left out)."""
    return Event(**{name: row[name] for name in Event.__struct_fields__})


class EventDetail(Event, kw_only=True):
    """An event with the notifications it produced."""

    notifications: list[Notification] = msgspec.field(default_factory=list)
