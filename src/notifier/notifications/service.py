"""The notification use cases: schedule, list, get, cancel (one, or by key or entity) and
replay.

Each function is one transaction of its own, on a connection from ``pool``; the API, the
CLI and the dashboard call these. Invalid input or a state that does not allow the change
raises :class:`notifier.errors.ProblemError`; another tenant's notification is a 404 like a
missing one. Delivery itself is the ``deliver`` task (``notifications/tasks.py``), which runs
``notifications/delivery.py``.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import msgspec

from notifier import idempotency
from notifier.api_types import (
    check_payload_size,
    check_storable,
    checked_channel,
    checked_instant,
    checked_local_time,
)
from notifier.channels.base import Channel
from notifier.db import Connection, Pool, transaction
from notifier.endpoints.references import check_endpoint, endpoint_channel_and_recipient
from notifier.errors import ProblemError, field_error, not_found
from notifier.idempotency import IdempotentRequest, Outcome
from notifier.instants import nearest_storable
from notifier.notifications import queries, selection
from notifier.notifications.keys import (
    MAX_CANCELLED_AT_ONCE,
    TooManyMatches,
    cancel_pending_matching,
    schedule_replacing,
)
from notifier.notifications.scheduling import (
    DEFAULT_EXPIRY_GRACE,
    NotificationDraft,
    defer_delivery,
    delivery_job,
    plan_sends,
)
from notifier.notifications.schemas import (
    CancelledCount,
    Notification,
    NotificationCreate,
    NotificationDetail,
    NotificationFilter,
    NotificationReplacement,
    NotificationStatus,
    notification_from_row,
)
from notifier.pagination import Cursor, Page, paginate
from notifier.queue import jobs
from notifier.recipients import e164_phone, email_address_problem, sms_recipient
from notifier.telemetry import current_traceparent
from notifier.telemetry.metrics import Metrics
from notifier.templates import catalog
from notifier.templates.messages import MessageFields, TemplateProblem
from notifier.templates.pool import RendererUnavailable, RenderPool
from notifier.templates.schemas import Preview
from notifier.templates.service import renderer_unavailable, template_error

CANCELLABLE = frozenset(
    {NotificationStatus.PENDING, NotificationStatus.FAILED, NotificationStatus.DEAD}
)


def draft_notification(
    data: NotificationCreate,
    *,
    channels: Mapping[str, Channel],
    default_channel: str,
    now: datetime.datetime,
    default_phone_region: str | None = None,
    expiry_grace: datetime.timedelta = DEFAULT_EXPIRY_GRACE,
) -> NotificationDraft:
    """Check a create request against the configured ``channels`` and plan its one send
    (``lead_time_days`` before ``target_date``, as of ``now``, expired only as
    :func:`~notifier.notifications.scheduling.plan_sends` says with ``expiry_grace``); a 422
    names the field at fault. ``default_channel``: the channel when the request names none.

    A ``target_date`` without an offset is UTC, as the seed API read it. A ``phone`` is kept
    in E.164 form where it reads as a number (national ones in ``default_phone_region``),
    else as given; only as the SMS recipient must it read as one.
    """
    check_storable(data)
    check_payload_size("data", data.data)
    if data.target_date.tzinfo is None:
        data.target_date = data.target_date.replace(tzinfo=datetime.UTC)
    data.target_date = checked_instant("target_date", data.target_date)
    if data.expires_at is not None:
        data.expires_at = checked_instant("expires_at", data.expires_at)
    if data.email is not None and (problem := email_address_problem(data.email)):
        raise field_error("email", problem)
    recipient: str | None
    if data.endpoint is not None:
        channel_name, recipient = endpoint_channel_and_recipient(data.endpoint, data.channel)
        if data.recipient is not None:
            raise field_error("recipient", "give either recipient or endpoint, not both")
    else:
        channel_name = data.channel or default_channel
        # The seed shape carries both an email and a phone: SMS goes to the phone.
        fallback = (
            (data.phone or data.email) if channel_name == "sms" else (data.email or data.phone)
        )
        recipient = data.recipient or fallback
    recipient_field = (
        "recipient" if data.recipient else "phone" if recipient == data.phone else "email"
    )
    if channel_name == "sms" and recipient is not None:
        # The SMS recipient must be a number the provider can dial, whichever field gave it.
        try:
            recipient = sms_recipient(recipient, default_phone_region)
        except ValueError as exc:
            raise field_error(recipient_field, str(exc)) from None
    phone = data.phone
    if phone is not None:
        phone = e164_phone(phone, default_phone_region) or phone
    # A notification to an endpoint is checked against the endpoint (check_endpoint).
    checked_channel(channels, channel_name, None if data.endpoint else recipient)
    if recipient is None:
        raise field_error("recipient", "give recipient, email or phone")
    zone = checked_local_time(data.timezone, data.quiet_hours)
    (send,) = plan_sends(
        data.target_date,
        [datetime.timedelta(days=data.lead_time_days)],
        now,
        grace=expiry_grace,
        zone=zone,
        quiet_hours=data.quiet_hours,
        expires_at=data.expires_at,
    )
    return NotificationDraft(
        notification_type=data.notification_type,
        entity_id=data.entity_id,
        channel=channel_name,
        recipient=recipient,
        email=data.email,
        phone=phone,
        target_date=data.target_date,
        context=data.data,
        send=send,
        timezone=data.timezone,
        quiet_hours=data.quiet_hours,
        endpoint_id=data.endpoint,
        key=data.key,
    )


async def schedule(
    pool: Pool,
    channels: Mapping[str, Channel],
    default_channel: str,
    tenant_id: str,
    request: NotificationCreate,
    idempotent: IdempotentRequest | None = None,
    *,
    now: datetime.datetime | None = None,
    default_phone_region: str | None = None,
    expiry_grace: datetime.timedelta = DEFAULT_EXPIRY_GRACE,
    metrics: Metrics | None = None,
) -> Outcome[Notification]:
    """Store the notification and its deliver job, due ``lead_time_days`` before
    ``target_date``, in one transaction (201). Stored ``expired``, with no job and the
    reason in ``last_error`` (counted in ``metrics``), only when its send time is not
    before ``expires_at`` or its target date had passed by more than ``expiry_grace``.

    With a ``key``, the tenant's pending notification of that key (made through the API)
    ends ``superseded`` by the new one in the same transaction (200, a
    :class:`NotificationReplacement` naming it; :mod:`notifier.notifications.keys`).

    The request is checked first (:func:`draft_notification`, with ``channels``,
    ``default_channel`` and ``default_phone_region``; ``now``, the clock, defaults to the
    current time). With ``idempotent``, a repeat answers the first notification and stores
    nothing new.
    """
    draft = draft_notification(
        request,
        channels=channels,
        default_channel=default_channel,
        now=now or datetime.datetime.now(datetime.UTC),
        default_phone_region=default_phone_region,
        expiry_grace=expiry_grace,
    )
    async with transaction(pool) as conn:

        async def create() -> Outcome[Notification]:
            await check_endpoint(conn, tenant_id, draft.endpoint_id)
            scheduled = await schedule_replacing(conn, tenant_id, draft)
            if metrics is not None:
                metrics.count_expired([draft.send.expiry])
            if scheduled.replaced is None:
                return Outcome(201, scheduled.notification)
            return Outcome(
                200,
                NotificationReplacement(
                    **msgspec.structs.asdict(scheduled.notification), replaced=scheduled.replaced
                ),
            )

        # A stored 201 has no "replaced": it decodes as a replacement of none, given back
        # as the plain notification it was.
        outcome = await idempotency.once(conn, idempotent, NotificationReplacement, create)
    if isinstance(outcome.body, NotificationReplacement) and outcome.body.replaced is None:
        fields = msgspec.structs.asdict(outcome.body)
        del fields["replaced"]
        return Outcome(outcome.status, Notification(**fields), replayed=outcome.replayed)
    return outcome


async def cancel_matching(
    pool: Pool, tenant_id: str, *, key: str | None, entity_id: str | None
) -> CancelledCount:
    """Cancel the tenant's pending notifications with ``key`` and/or ``entity_id`` (both
    given: those matching both) and their waiting jobs, in one transaction; how many.
    A 422 naming ``key`` with neither, a 409 (nothing cancelled) past
    :data:`~notifier.notifications.keys.MAX_CANCELLED_AT_ONCE` matches."""
    if key is None and entity_id is None:
        raise field_error("key", "give key or entity_id (or both)", source="query")
    async with transaction(pool) as conn:
        try:
            count = await cancel_pending_matching(conn, tenant_id, key=key, entity_id=entity_id)
        except TooManyMatches:
            raise ProblemError(
                409,
                "Conflict",
                f"more than {MAX_CANCELLED_AT_ONCE} pending notifications match; "
                "nothing was cancelled: narrow the match (key and entity_id together)",
            ) from None
    return CancelledCount(cancelled=count)


async def list_notifications(
    pool: Pool,
    tenant_id: str,
    where: NotificationFilter,
    *,
    limit: int,
    after: Cursor | None = None,
) -> Page[Notification]:
    """A page of at most ``limit`` of the tenant's notifications matching ``where``, newest
    first, after the cursor ``after``; a 422 naming the field the filter cannot hold."""
    where = checked_filter(where)
    async with transaction(pool) as conn:
        rows = await selection.select_matching(conn, tenant_id, where, limit=limit + 1, after=after)
    return paginate(rows, limit)


async def get_notification(
    pool: Pool, tenant_id: str, notification_id: uuid.UUID
) -> NotificationDetail:
    """The tenant's notification with every delivery attempt; a 404 if it has none."""
    async with transaction(pool) as conn:
        notification = await queries.get_notification(conn, tenant_id, notification_id)
    if notification is None:
        raise not_found("notification", notification_id)
    return notification


async def cancel(pool: Pool, tenant_id: str, notification_id: uuid.UUID) -> Notification:
    """Cancel the notification and its waiting job in one transaction; it will never be sent.

    If a delivery is in flight, this waits for it (the row lock): a notification that got
    sent is a 409 instead of a cancel that did not happen. Cancelling a cancelled one
    answers it again, as the first cancel did.
    """
    async with transaction(pool) as conn:
        row = await queries.lock_notification(conn, notification_id, tenant_id=tenant_id)
        if row is None:
            raise not_found("notification", notification_id)
        status, job_id = NotificationStatus(row["status"]), row["job_id"]
        if status is NotificationStatus.CANCELLED:
            return notification_from_row(row)  # the answer the first cancel gave
        if status not in CANCELLABLE:
            raise ProblemError(
                409, "Conflict", f"notification {notification_id} is already {status}"
            )
        cancelled = await queries.set_status(conn, notification_id, NotificationStatus.CANCELLED)
        if job_id is not None:
            # Only a job still waiting can be cancelled; one already running finds the
            # row cancelled once it gets the lock this transaction holds.
            await jobs.cancel_waiting_job(conn, job_id)
    return cancelled


async def replay(
    pool: Pool,
    tenant_id: str,
    notification_id: uuid.UUID,
    idempotent: IdempotentRequest | None = None,
) -> Outcome[Notification]:
    """Make a failed or dead notification pending again, with a new deliver job due now,
    in one transaction (202); a 409 for any other status. The new round continues the
    caller's trace. With ``idempotent``, a repeat answers the first replay."""
    async with transaction(pool) as conn:

        async def start_new_round() -> Outcome[Notification]:
            row = await queries.lock_notification(conn, notification_id, tenant_id=tenant_id)
            if row is None:
                raise not_found("notification", notification_id)
            status = NotificationStatus(row["status"])
            if not status.replayable:
                raise ProblemError(
                    409,
                    "Conflict",
                    f"only failed or dead notifications can be replayed; this one is {status}",
                )
            job_id = await defer_delivery(conn, notification_id, tenant_id=tenant_id)
            notification = await queries.start_new_round(
                conn, notification_id, job_id, current_traceparent()
            )
            return Outcome(202, notification)

        return await idempotency.once(conn, idempotent, Notification, start_new_round)


# Choosing by filter, and bulk actions (the dashboard's list; API and dashboard bulk) -----

# What each bulk action acts on: replay the ones that can never be sent otherwise, cancel
# the ones still waiting.
BULK_STATUSES = {
    "replay": [NotificationStatus.FAILED, NotificationStatus.DEAD],
    "cancel": [NotificationStatus.PENDING],
}


def checked_filter(where: NotificationFilter) -> NotificationFilter:
    """``where``, its times in UTC within the storable range (a bound beyond it selects the
    same rows as the range's edge; :func:`notifier.instants.nearest_storable`); a 422 naming
    the field if it holds text PostgreSQL cannot store."""
    check_storable(where)
    return msgspec.structs.replace(
        where,
        created_after=where.created_after and nearest_storable(where.created_after),
        created_before=where.created_before and nearest_storable(where.created_before),
    )


async def count_for_bulk(pool: Pool, tenant_id: str, action: str, where: NotificationFilter) -> int:
    """How many notifications ``replay_many`` or ``cancel_many`` (``action``) would change
    now, counting no further than ``BULK_LIMIT + 1`` (more than one run's worth)."""
    where = checked_filter(where)
    statuses = where.statuses_within(BULK_STATUSES[action])
    if not statuses:
        return 0
    async with transaction(pool) as conn:
        return await selection.count_matching(
            conn, tenant_id, where, statuses, cap=selection.BULK_LIMIT + 1
        )


@asynccontextmanager
async def _locked_for_bulk(
    pool: Pool, tenant_id: str, action: str, where: NotificationFilter
) -> AsyncIterator[tuple[Connection, list[selection.LockedNotification]]]:
    """A transaction holding the locks of up to ``BULK_LIMIT`` of the tenant's
    notifications matching ``where`` that ``action`` may change (oldest first), for the
    action to change them on the connection it gives; a 422 for a filter it cannot hold."""
    where = checked_filter(where)
    statuses = where.statuses_within(BULK_STATUSES[action])
    async with transaction(pool) as conn:
        locked = (
            await selection.lock_matching(
                conn, tenant_id, where, statuses, limit=selection.BULK_LIMIT
            )
            if statuses
            else []
        )
        yield conn, locked


async def replay_many(pool: Pool, tenant_id: str, where: NotificationFilter) -> int:
    """Replay up to ``BULK_LIMIT`` of the tenant's failed and dead notifications matching
    ``where`` (oldest first), as :func:`replay` does one: pending again with a deliver job
    due now, all in one transaction. How many were replayed."""
    async with _locked_for_bulk(pool, tenant_id, "replay", where) as (conn, locked):
        if not locked:
            return 0
        ids = [row.id for row in locked]
        job_ids = await jobs.defer_jobs(
            conn, [delivery_job(notification_id, tenant_id=tenant_id) for notification_id in ids]
        )
        return await selection.start_new_rounds(
            conn, dict(zip(ids, job_ids, strict=True)), current_traceparent()
        )


async def cancel_many(pool: Pool, tenant_id: str, where: NotificationFilter) -> int:
    """Cancel up to ``BULK_LIMIT`` of the tenant's pending notifications matching ``where``
    (oldest first) and their waiting jobs, in one transaction. One being delivered at that
    moment is left as it is (its delivery decides). How many were cancelled."""
    async with _locked_for_bulk(pool, tenant_id, "cancel", where) as (conn, locked):
        if not locked:
            return 0
        cancelled = await selection.mark_cancelled(conn, [row.id for row in locked])
        # A job already running finds its row cancelled once it gets the lock held here.
        await jobs.cancel_waiting_jobs(conn, [r.job_id for r in locked if r.job_id is not None])
        return cancelled


async def render_message(
    pool: Pool, renderer: RenderPool, tenant_id: str, notification_id: uuid.UUID
) -> Preview:
    """The tenant's notification's message as its next delivery would render it now, with
    today's template (no unsubscribe link); sends nothing. A 404 if the tenant has no such
    notification; a 422 if its template is missing or does not render."""
    async with transaction(pool) as conn:
        row = await queries.message_inputs(conn, tenant_id, notification_id)
        if row is None:
            raise not_found("notification", notification_id)
        try:
            source = await catalog.template_for(
                conn, tenant_id, row["template"], row["notification_type"]
            )
        except catalog.TemplateNotFound as exc:
            raise ProblemError(422, "Unprocessable Content", str(exc)) from None
    fields = MessageFields(
        notification_id=str(row["id"]),
        notification_type=row["notification_type"],
        recipient=row["recipient"],
        entity_id=row["entity_id"],
        target_date=row["target_date"],
        lead_time=row["lead_time"],
        channel=row["channel"],
    )
    try:
        rendered = await renderer.render(tenant_id, source, row["context"], fields)
    except TemplateProblem as exc:
        raise template_error(exc) from None
    except RendererUnavailable as exc:
        raise renderer_unavailable(exc) from None
    return Preview(
        template=source.name, subject=rendered.subject, text=rendered.text, html=rendered.html
    )
