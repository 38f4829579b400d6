"""Notifications as the delivery reads them, for tests that need one without a database."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from notifier.notifications.queries import DeliveryRow
from notifier.notifications.schemas import NotificationStatus


def delivery_row(**changes: Any) -> DeliveryRow:
    """A pending email notification, due now, its target a week ahead; ``changes`` replace
    any field."""
    now = datetime.datetime.now(datetime.UTC)
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "tenant_id": "default",
        "notification_type": "invoice.due",
        "channel": "email",
        "recipient": "ada@example.com",
        "status": NotificationStatus.PENDING,
        "attempts": 0,
        "send_at": now,
        "target_date": now + datetime.timedelta(days=7),
        "lead_time": datetime.timedelta(days=7),
    }
    return DeliveryRow(**{**fields, **changes})
