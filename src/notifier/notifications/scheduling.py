"""When each reminder goes out, and writing notifications together with their jobs."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import msgspec
import procrastinate
from psycopg.types.json import Jsonb

from notifier.db import Connection
from notifier.notifications import queries
from notifier.notifications.schemas import Notification, NotificationStatus
from notifier.queue import DELIVER_TASK


class PlannedSend(msgspec.Struct, frozen=True):
    """One reminder of a series: when it goes out, or why it never will."""

    lead_time: datetime.timedelta
    send_at: datetime.datetime
    status: NotificationStatus


def plan_sends(
    target_date: datetime.datetime | None,
    lead_times: list[datetime.timedelta],
    now: datetime.datetime,
) -> list[PlannedSend]:
    """Decide each reminder of one series ("N days before ``target_date``").

    - No target date: one send, now.
    - Target date already passed: every reminder is ``expired``.
    - Send time in the future: ``pending`` at that time.
    - Send time already past: ``skipped``, because a "7 days before" message sent 3 days
      before would be wrong, and a later reminder still to come covers it. Only when no
      reminder is left in the future does the latest overdue one go out now, so the
      series still reaches the recipient once before the target date.
    """
    if target_date is None:
        return [PlannedSend(datetime.timedelta(0), now, NotificationStatus.PENDING)]
    if target_date <= now:
        return [
            PlannedSend(lead, target_date - lead, NotificationStatus.EXPIRED) for lead in lead_times
        ]
    overdue = [lead for lead in lead_times if target_date - lead <= now]
    any_upcoming = len(overdue) < len(lead_times)
    latest_overdue = None if any_upcoming else min(overdue, default=None)
    plan = []
    for lead in lead_times:
        send_at = target_date - lead
        if send_at > now:
            plan.append(PlannedSend(lead, send_at, NotificationStatus.PENDING))
        elif lead == latest_overdue:
            plan.append(PlannedSend(lead, now, NotificationStatus.PENDING))
            latest_overdue = None  # duplicates of the same lead time are skipped
        else:
            plan.append(PlannedSend(lead, send_at, NotificationStatus.SKIPPED))
    return plan


class NotificationDraft(msgspec.Struct, kw_only=True):
    """Everything needed to store one notification, before it has an id or a job."""

    notification_type: str
    channel: str
    recipient: str
    send: PlannedSend
    target_date: datetime.datetime | None
    entity_id: str | None = None
    event_id: uuid.UUID | None = None
    rule_id: uuid.UUID | None = None
    email: str | None = None
    phone: str | None = None
    template: str | None = None
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    # A draft the routing could not complete is stored as failed, visibly, with the reason.
    error: str | None = None


async def defer_delivery(
    queue: procrastinate.App,
    conn: Connection,
    notification_id: uuid.UUID,
    scheduled_at: datetime.datetime | None = None,
) -> int:
    """Enqueue the deliver job on ``conn``, inside the caller's transaction."""
    # procrastinate's option is ``schedule_at``; unknown options are silently ignored.
    deferrer = queue.configure_task(
        DELIVER_TASK, connection=conn, schedule_at=scheduled_at, allow_unknown=False
    )
    return await deferrer.defer_async(notification_id=str(notification_id))


async def create_notifications(
    queue: procrastinate.App, conn: Connection, tenant_id: str, drafts: list[NotificationDraft]
) -> list[Notification]:
    """Store each draft as the tenant's and, if pending, its deliver job, in the caller's
    transaction."""
    created = []
    for draft in drafts:
        notification_id = uuid.uuid4()
        status = NotificationStatus.FAILED if draft.error else draft.send.status
        job_id = None
        if status is NotificationStatus.PENDING:
            job_id = await defer_delivery(queue, conn, notification_id, draft.send.send_at)
        values = msgspec.structs.asdict(draft)
        send = values.pop("send")
        values.update(
            id=notification_id,
            context=Jsonb(draft.context),
            lead_time=send.lead_time,
            send_at=send.send_at,
            status=status,
            last_error=values.pop("error"),
            job_id=job_id,
            tenant_id=tenant_id,
        )
        created.append(await queries.insert_notification(conn, values))
    return created
