"""The opt-out resource at the API boundary."""

from __future__ import annotations

import datetime
import enum
import uuid
from typing import Annotated, Any

import msgspec

from notifier.rules.schemas import EventTypePattern


class OptOutSource(enum.StrEnum):
    """Who recorded an opt-out."""

    API = "api"
    UNSUBSCRIBE_LINK = "unsubscribe_link"


class OptOutCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/preferences/``: stop sending ``recipient`` some or all notifications.

    Leave ``channel`` out for every channel and ``notification_type`` out for every type;
    ``"invoice.*"`` covers every type starting with ``invoice.``.
    """

    recipient: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    channel: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    notification_type: EventTypePattern | None = None
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class OptOut(msgspec.Struct, kw_only=True):
    """A stored opt-out: notifications it covers end ``suppressed`` instead of being sent."""

    id: uuid.UUID
    recipient: str
    channel: str | None
    notification_type: str | None
    reason: str
    source: OptOutSource
    created_at: datetime.datetime


def opt_out_from_row(row: dict[str, Any]) -> OptOut:
    """The response struct from a ``notifier.recipient_preferences`` row."""
    return OptOut(**{name: row[name] for name in OptOut.__struct_fields__})
