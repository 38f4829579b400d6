"""Whether a notification may still go to its recipient: the check the deliver task makes."""

from __future__ import annotations

from typing import Any

from notifier.db import Connection
from notifier.preferences.queries import covering_opt_out


async def suppression_reason(conn: Connection, notification: dict[str, Any]) -> str | None:
    """Why the (locked) ``notification`` must not be sent, or None if it may be.

    Checked at delivery time, under the notification's row lock, so an opt-out recorded
    after the notification was scheduled still stops it.
    """
    opt_out = await covering_opt_out(
        conn,
        tenant_id=notification["tenant_id"],
        recipient=notification["recipient"],
        channel=notification["channel"],
        notification_type=notification["notification_type"],
    )
    if opt_out is None:
        return None
    channel = f"channel {opt_out.channel}" if opt_out.channel else "every channel"
    types = f"type {opt_out.notification_type}" if opt_out.notification_type else "every type"
    return (
        f"suppressed: the recipient opted out of {types} on {channel} "
        f"(opt-out {opt_out.id}, via {opt_out.source})"
    )
