"""When each reminder goes out, and writing notifications together with their jobs."""

from __future__ import annotations

import datetime
import enum
import uuid
import zoneinfo
from typing import Any, NamedTuple

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

# NOTIFIER_EXPIRY_GRACE_SECONDS' default; the service passes its setting.
DEFAULT_EXPIRY_GRACE = datetime.timedelta(minutes=5)


class ExpiryReason(enum.StrEnum):
    """Why a notification is ``expired``: the label of ``notifier_notifications_expired_total``."""

    # The client's deadline: ``expires_at``, or the rule's ``deliver_within``.
    DEADLINE = "deadline"
    # Its target date passed more than NOTIFIER_EXPIRY_GRACE_SECONDS before it could go.
    TARGET_PASSED = "target_passed"
    # Its quiet hours end at or after the target date it reminds of.
    QUIET_HOURS = "quiet_hours"


class PlannedSend(msgspec.Struct, frozen=True):
    """One reminder of a series: when it goes out, or why it never will."""

    lead_time: datetime.timedelta
    send_at: datetime.datetime
    status: NotificationStatus
    # The client's deliver-by: not sent after it.
    expires_at: datetime.datetime | None = None
    # Why it is expired (with ``status`` expired), and the same said for ``last_error``.
    expiry: ExpiryReason | None = None
    why: str | None = None


def target_deadline(
    target_date: datetime.datetime, accepted_at: datetime.datetime, grace: datetime.timedelta
) -> datetime.datetime:
    """The last moment a reminder of ``target_date`` may still go out: ``grace`` after the
    target date, or after notifier accepted the request or event if that came later.

    Counted from the acceptance too, so that the time a request, an event or a delivery
    waits inside notifier (an outage, a backlog) cannot use up the grace: a target date
    that had passed by more than the grace when the client asked is already past it.
    """
    if target_date + grace <= accepted_at:
        return target_date + grace
    return max(target_date, accepted_at) + grace


def plan_sends(
    target_date: datetime.datetime | None,
    lead_times: list[datetime.timedelta],
    now: datetime.datetime,
    *,
    grace: datetime.timedelta = DEFAULT_EXPIRY_GRACE,
    accepted_at: datetime.datetime | None = None,
    zone: zoneinfo.ZoneInfo | None = None,
    quiet_hours: QuietHours | None = None,
    expires_at: datetime.datetime | None = None,
    deliver_within: datetime.timedelta | None = None,
) -> list[PlannedSend]:
    """Decide each reminder of one series ("N days before ``target_date``").

    ``accepted_at``: when notifier accepted the request or event (default ``now``).
    With the recipient's ``zone``, whole days of a lead time are calendar days on the
    recipient's clock (see :func:`~notifier.notifications.localtime.days_before`). With
    ``quiet_hours`` (local to ``zone``, UTC without one), a pending send time inside the
    window moves to its end; a reminder ahead of its target that this pushes to or past
    the target date is ``expired`` instead, since it would arrive too late to say what it
    says. A send time at or after the client's deadline (``expires_at``) is ``expired``;
    ``deliver_within`` sets each reminder's deadline that long after its send time.

    - No target date: one send, now.
    - Target date passed more than ``grace`` before ``accepted_at``
      (:func:`target_deadline`): every reminder is ``expired``.
    - Send time in the future: ``pending`` at that time.
    - Send time already past (the target date too, within the grace): ``skipped``,
      because a "7 days before" message sent 3 days before would be wrong, and a later
      reminder still to come covers it. Only when no reminder is left in the future does
      the latest overdue one go out now, so the series still reaches the recipient once:
      a notification due at its target date (lead time 0) with the target now or just
      past is sent now.
    """
    accepted_at = accepted_at or now
    if target_date is not None and target_deadline(target_date, accepted_at, grace) <= now:
        why = (
            f"target date {target_date.isoformat()} had passed more than "
            f"{grace.total_seconds():g} s (NOTIFIER_EXPIRY_GRACE_SECONDS) before it was accepted"
        )
        return [
            PlannedSend(
                lead,
                days_before(target_date, lead, zone),
                NotificationStatus.EXPIRED,
                expiry=ExpiryReason.TARGET_PASSED,
                why=why,
            )
            for lead in lead_times
        ]
    plan = _plan_in_time(target_date, lead_times, now, zone)
    if quiet_hours is not None:
        plan = [_outside_quiet_hours(send, target_date, zone, quiet_hours) for send in plan]
    return [_with_deadline(send, expires_at, deliver_within) for send in plan]


def _with_deadline(
    send: PlannedSend,
    expires_at: datetime.datetime | None,
    deliver_within: datetime.timedelta | None,
) -> PlannedSend:
    """``send`` with its deadline; expired if it would go out at or after it."""
    if deliver_within is not None:
        by_rule = send.send_at + deliver_within
        expires_at = by_rule if expires_at is None else min(expires_at, by_rule)
    if expires_at is None:
        return send
    if send.status is NotificationStatus.PENDING and send.send_at >= expires_at:
        why = f"its send time is not before its expires_at {expires_at.isoformat()}"
        return msgspec.structs.replace(
            send,
            status=NotificationStatus.EXPIRED,
            expires_at=expires_at,
            expiry=ExpiryReason.DEADLINE,
            why=why,
        )
    return msgspec.structs.replace(send, expires_at=expires_at)


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
    if not late:
        return msgspec.structs.replace(send, send_at=send_at)
    return PlannedSend(
        send.lead_time,
        send_at,
        NotificationStatus.EXPIRED,
        expiry=ExpiryReason.QUIET_HOURS,
        why="its quiet hours end at or after the target date",
    )


def _plan_in_time(
    target_date: datetime.datetime | None,
    lead_times: list[datetime.timedelta],
    now: datetime.datetime,
    zone: zoneinfo.ZoneInfo | None,
) -> list[PlannedSend]:
    if target_date is None:
        return [PlannedSend(datetime.timedelta(0), now, NotificationStatus.PENDING)]
    send_times = {lead: days_before(target_date, lead, zone) for lead in lead_times}
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
    # Digests (notifier.events.digests): the rule's window (a duration, or a time of day on
    # the clock of ``timezone``), on a draft routing made; the events counted in it and
    # whether more may join, on a digest to store.
    digest_window: datetime.timedelta | None = None
    digest_until: datetime.time | None = None
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
            last_error=values.pop("error") or send.why,
            expires_at=send.expires_at,
            job_id=job_ids.get(notification_id),
            traceparent=traceparent,
            tenant_id=tenant_id,
        )
        created.append(await queries.insert_notification(conn, values))
    return created


class DraftToStore(NamedTuple):
    """A draft to store as ``tenant_id``'s notification, its deliver job continuing the
    trace ``traceparent`` (the one its event was processed in)."""

    tenant_id: str
    draft: NotificationDraft
    traceparent: str | None


async def store_notifications(conn: Connection, to_store: list[DraftToStore]) -> int:
    """Store every draft and, if pending, its deliver job, in the caller's transaction: the
    jobs in one statement, the notifications in another, however many events they come
    from; how many were stored.

    :func:`create_notifications` for a batch of events: the same rows, none read back.
    """
    planned = [
        (uuid.uuid4(), NotificationStatus.FAILED if item.draft.error else item.draft.send.status)
        for item in to_store
    ]
    # A job due already is deferred to run now, not scheduled for a past instant: the same
    # turn in the fetch, one procrastinate event row fewer ("scheduled") per notification.
    now = datetime.datetime.now(datetime.UTC)
    to_defer = {
        notification_id: delivery_job(
            notification_id,
            item.draft.send.send_at if item.draft.send.send_at > now else None,
            tenant_id=item.tenant_id,
        )
        for (notification_id, status), item in zip(planned, to_store, strict=True)
        if status is NotificationStatus.PENDING
    }
    job_ids = dict(zip(to_defer, await jobs.defer_jobs(conn, list(to_defer.values())), strict=True))
    rows = []
    for (notification_id, status), item in zip(planned, to_store, strict=True):
        draft, send = item.draft, item.draft.send
        rows.append(
            {
                "id": notification_id,
                "tenant_id": item.tenant_id,
                "event_id": draft.event_id,
                "rule_id": draft.rule_id,
                "notification_type": draft.notification_type,
                "entity_id": draft.entity_id,
                "channel": draft.channel,
                "recipient": draft.recipient,
                "email": draft.email,
                "phone": draft.phone,
                "template": draft.template,
                "context": Jsonb(draft.context),
                "target_date": draft.target_date,
                "lead_time": send.lead_time,
                "send_at": send.send_at,
                "status": status.value,
                "last_error": draft.error or send.why,
                "job_id": job_ids.get(notification_id),
                "timezone": draft.timezone,
                "quiet_hours": QuietHours.to_column(draft.quiet_hours),
                "traceparent": item.traceparent,
                "key": draft.key,
                "cancelled_by_event_id": draft.cancelled_by_event_id,
                "digest_count": draft.digest_count,
                "digest_open": draft.digest_open,
                "expires_at": send.expires_at,
                "endpoint_id": draft.endpoint_id,
            }
        )
    await queries.insert_notifications(conn, rows)
    return len(rows)
