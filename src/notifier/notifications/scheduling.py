"""When each reminder goes out, and writing notifications together with their jobs."""

from __future__ import annotations

import datetime
import uuid
import zoneinfo
from typing import Any

import msgspec
from psycopg.types.json import Jsonb

from notifier.db import Connection
from notifier.notifications import queries
from notifier.notifications.localtime import (
    QuietHours,
    days_before,
    leave_quiet_hours,
    zone_named,
)
from notifier.notifications.schemas import Notification, NotificationStatus
from notifier.queue import DELIVER_TASK, jobs
from notifier.telemetry import current_traceparent


class PlannedSend(msgspec.Struct, frozen=True):
    """One reminder of a series: when it goes out, or why it never will."""

    lead_time: datetime.timedelta
    send_at: datetime.datetime
    status: NotificationStatus


def plan_sends(
    target_date: datetime.datetime | None,
    lead_times: list[datetime.timedelta],
    now: datetime.datetime,
    *,
    zone: zoneinfo.ZoneInfo | None = None,
    quiet_hours: QuietHours | None = None,
) -> list[PlannedSend]:
    """Decide each reminder of one series ("N days before ``target_date``").

    With the recipient's ``zone``, whole days of a lead time are calendar days on the
    recipient's clock (see :func:`~notifier.notifications.localtime.days_before`). With
    ``quiet_hours`` (local to ``zone``, UTC without one), a pending send time inside the
    window moves to its end; a reminder that this pushes to or past its target date is
    ``expired`` instead, since it would arrive too late to say what it says.

    - No target date: one send, now.
    - Target date already passed: every reminder is ``expired``.
    - Send time in the future: ``pending`` at that time.
    - Send time already past: ``skipped``, because a "7 days before" message sent 3 days
      before would be wrong, and a later reminder still to come covers it. Only when no
      reminder is left in the future does the latest overdue one go out now, so the
      series still reaches the recipient once before the target date.
    """
    plan = _plan_in_time(target_date, lead_times, now, zone)
    if quiet_hours is None:
        return plan
    return [_outside_quiet_hours(send, target_date, zone, quiet_hours) for send in plan]


def _outside_quiet_hours(
    send: PlannedSend,
    target_date: datetime.datetime | None,
    zone: zoneinfo.ZoneInfo | None,
    quiet_hours: QuietHours,
) -> PlannedSend:
    if send.status is not NotificationStatus.PENDING:
        return send
    send_at = leave_quiet_hours(send.send_at, zone or zone_named("UTC"), quiet_hours)
    late = (
        target_date is not None
        and send.lead_time > datetime.timedelta(0)
        and send_at >= target_date
    )
    return PlannedSend(send.lead_time, send_at, NotificationStatus.EXPIRED if late else send.status)


def _plan_in_time(
    target_date: datetime.datetime | None,
    lead_times: list[datetime.timedelta],
    now: datetime.datetime,
    zone: zoneinfo.ZoneInfo | None,
) -> list[PlannedSend]:
    if target_date is None:
        return [PlannedSend(datetime.timedelta(0), now, NotificationStatus.PENDING)]
    send_times = {lead: days_before(target_date, lead, zone) for lead in lead_times}
    if target_date <= now:
        return [
            PlannedSend(lead, send_times[lead], NotificationStatus.EXPIRED) for lead in lead_times
        ]
    overdue = [lead for lead in lead_times if send_times[lead] <= now]
    any_upcoming = len(overdue) < len(lead_times)
    latest_overdue = None if any_upcoming else min(overdue, default=None)
    plan = []
    for lead in lead_times:
        send_at = send_times[lead]
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
    # Kept on the notification so readers see why its send time is what it is.
    timezone: str | None = None
    quiet_hours: QuietHours | None = None
    # A draft the routing could not complete is stored as failed, visibly, with the reason.
    error: str | None = None
    # A webhook to one of the tenant's endpoints (notifier.endpoints) rather than a URL.
    endpoint_id: uuid.UUID | None = None
    # What it is about (notifier.notifications.keys); the event that superseded it, when it
    # is stored superseded because it arrived after a newer event for its key.
    key: str | None = None
    cancelled_by_event_id: uuid.UUID | None = None
    # Digests (notifier.events.digests): the rule's window, on a draft routing made; the
    # events counted in it and whether more may join, on a digest to store.
    digest_window: datetime.timedelta | None = None
    digest_count: int | None = None
    digest_open: bool | None = None


def delivery_job(
    notification_id: uuid.UUID,
    scheduled_at: datetime.datetime | None = None,
    *,
    tenant_id: str,
    slot_waits: int = 0,
) -> jobs.JobToDefer:
    """The deliver job of a notification, due at ``scheduled_at`` (None: now).

    The job names the notification's tenant: workers share out due jobs by tenant
    (migration 0011), and a job's batch is its tenant's. ``slot_waits``: how often the
    delivery has waited for a host slot already (:mod:`notifier.notifications.host_slots`).
    """
    args: dict[str, Any] = {"notification_id": str(notification_id), "tenant_id": tenant_id}
    if slot_waits:
        args["slot_waits"] = slot_waits
    return jobs.JobToDefer(task=DELIVER_TASK, args=args, scheduled_at=scheduled_at)


async def defer_delivery(
    conn: Connection,
    notification_id: uuid.UUID,
    scheduled_at: datetime.datetime | None = None,
    *,
    tenant_id: str,
    slot_waits: int = 0,
) -> int:
    """Enqueue the deliver job on ``conn``, inside the caller's transaction; its id."""
    job = delivery_job(notification_id, scheduled_at, tenant_id=tenant_id, slot_waits=slot_waits)
    (job_id,) = await jobs.defer_jobs(conn, [job])
    return job_id


async def create_notifications(
    conn: Connection, tenant_id: str, drafts: list[NotificationDraft]
) -> list[Notification]:
    """Store each draft as the tenant's and, if pending, its deliver job, in the caller's
    transaction (the jobs in one statement)."""
    # Each deliver job continues the trace that created its notification.
    traceparent = current_traceparent()
    planned = [
        (uuid.uuid4(), NotificationStatus.FAILED if draft.error else draft.send.status, draft)
        for draft in drafts
    ]
    to_defer = {
        notification_id: delivery_job(notification_id, draft.send.send_at, tenant_id=tenant_id)
        for notification_id, status, draft in planned
        if status is NotificationStatus.PENDING
    }
    job_ids = dict(zip(to_defer, await jobs.defer_jobs(conn, list(to_defer.values())), strict=True))
    created = []
    for notification_id, status, draft in planned:
        values = msgspec.structs.asdict(draft)
        send = values.pop("send")
        values.update(
            id=notification_id,
            context=Jsonb(draft.context),
            quiet_hours=QuietHours.to_column(draft.quiet_hours),
            lead_time=send.lead_time,
            send_at=send.send_at,
            status=status,
            last_error=values.pop("error"),
            job_id=job_ids.get(notification_id),
            traceparent=traceparent,
            tenant_id=tenant_id,
        )
        created.append(await queries.insert_notification(conn, values))
    return created
