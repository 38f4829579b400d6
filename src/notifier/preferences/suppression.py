"""Whether notifications may still go to their recipients: the check the deliver task makes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from notifier.db import Connection
from notifier.preferences.queries import Addressed, covering_opt_outs
from notifier.preferences.schemas import OptOut


async def suppression_reasons(
    conn: Connection, notifications: Sequence[Addressed]
) -> dict[uuid.UUID, str]:
    """Why each (locked) notification that must not be sent must not, by its id.

    Checked at delivery time, under the notifications' row locks, so an opt-out recorded
    after a notification was scheduled still stops it.
    """
    if not notifications:
        return {}
    opt_outs = await covering_opt_outs(conn, notifications)
    return {notification_id: _reason(opt_out) for notification_id, opt_out in opt_outs.items()}


def _reason(opt_out: OptOut) -> str:
    channel = f"channel {opt_out.channel}" if opt_out.channel else "every channel"
    types = f"type {opt_out.notification_type}" if opt_out.notification_type else "every type"
    return (
        f"suppressed: the recipient opted out of {types} on {channel} "
        f"(opt-out {opt_out.id}, via {opt_out.source})"
    )
