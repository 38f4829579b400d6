"""HTTP handlers for ``/api/v1/notifications``."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from notifier import idempotency
from notifier.api_types import (
    EntityFilter,
    InstantQuery,
    TypeFilter,
    check_payload_size,
    check_storable,
    checked_channel,
    checked_instant,
    checked_local_time,
    decode_strictly,
    query_instant,
)
from notifier.auth.guard import BEARER_SECURITY, requires
from notifier.db import Connection, transaction
from notifier.endpoints.references import check_endpoint, endpoint_channel_and_recipient
from notifier.idempotency import IdempotentRequest
from notifier.notifications import queries
from notifier.notifications.scheduling import (
    NotificationDraft,
    create_notifications,
    defer_delivery,
    plan_sends,
)
from notifier.notifications.schemas import (
    Notification,
    NotificationCreate,
    NotificationDetail,
    NotificationStatus,
    notification_from_row,
)
from notifier.pagination import (
    DEFAULT_LIMIT,
    Cursor,
    CursorParameter,
    Limit,
    next_link,
    paginate,
)
from notifier.problems import ProblemError, field_error, not_found, problem_responses
from notifier.queue import jobs
from notifier.recipients import email_address_problem, phone_number_problem
from notifier.services import Services
from notifier.telemetry import current_traceparent
from notifier.tenancy import Principal, Scope

CANCELLABLE = frozenset(
    {NotificationStatus.PENDING, NotificationStatus.FAILED, NotificationStatus.DEAD}
)


def draft_from_request(
    data: NotificationCreate, services: Services, now: datetime.datetime
) -> NotificationDraft:
    """Check a create request against the configured channels and plan its one send."""
    check_storable(data)
    check_payload_size("data", data.data)
    data.target_date = checked_instant("target_date", data.target_date)
    if data.email is not None and (problem := email_address_problem(data.email)):
        raise field_error("email", problem)
    if data.phone is not None and (problem := phone_number_problem(data.phone)):
        raise field_error("phone", problem)
    recipient: str | None
    if data.endpoint is not None:
        channel_name, recipient = endpoint_channel_and_recipient(data.endpoint, data.channel)
        if data.recipient is not None:
            raise field_error("recipient", "give either recipient or endpoint, not both")
    else:
        channel_name = data.channel or services.settings.default_channel
        # The seed shape carries both an email and a phone: SMS goes to the phone.
        fallback = (
            (data.phone or data.email) if channel_name == "sms" else (data.email or data.phone)
        )
        recipient = data.recipient or fallback
    checked_channel(services, channel_name, None if data.endpoint else recipient)
    if recipient is None:
        raise field_error("recipient", "give recipient, email or phone")
    zone = checked_local_time(data.timezone, data.quiet_hours)
    (send,) = plan_sends(
        data.target_date,
        [datetime.timedelta(days=data.lead_time_days)],
        now,
        zone=zone,
        quiet_hours=data.quiet_hours,
    )
    return NotificationDraft(
        notification_type=data.notification_type,
        entity_id=data.entity_id,
        channel=channel_name,
        recipient=recipient,
        email=data.email,
        phone=data.phone,
        target_date=data.target_date,
        context=data.data,
        send=send,
        timezone=data.timezone,
        quiet_hours=data.quiet_hours,
        endpoint_id=data.endpoint,
    )


async def _locked(
    conn: Connection, principal: Principal, notification_id: uuid.UUID
) -> dict[str, Any]:
    """Lock the caller's notification and return its row. 404 if unknown or another's."""
    row = await queries.lock_notification(conn, notification_id, tenant_id=principal.tenant_id)
    if row is None:
        raise not_found("notification", notification_id)
    return row


class NotificationController(Controller):
    """Schedule, read, cancel and replay notifications."""

    path = "/api/v1/notifications"
    tags = ["notifications"]  # noqa: RUF012 - litestar reads it from the class
    security = BEARER_SECURITY

    @post(
        "/",
        status_code=201,
        summary="Schedule a notification",
        responses=problem_responses(400, 413, 415, 422),
        guards=[requires(Scope.NOTIFICATIONS_WRITE)],
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[NotificationCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotent: NamedDependency[IdempotentRequest | None],
    ) -> Response[Notification]:
        """Store the notification and its deliver job, scheduled ``lead_time_days`` before
        ``target_date``, in one transaction. A target date in the past stores it ``expired``.
        """
        data = decode_strictly(await request.body(), NotificationCreate)
        draft = draft_from_request(data, services, datetime.datetime.now(datetime.UTC))
        async with transaction(services.pool) as conn:
            stored = await idempotency.claim(conn, idempotent)
            if stored is not None:
                return Response(stored.decode(Notification), status_code=stored.status)
            await check_endpoint(conn, principal.tenant_id, draft.endpoint_id)
            (notification,) = await create_notifications(conn, principal.tenant_id, [draft])
            await idempotency.remember(conn, idempotent, 201, notification)
        return Response(notification, status_code=201)

    @get(
        "/",
        summary="List notifications, newest first",
        responses=problem_responses(400, 422),
        guards=[requires(Scope.NOTIFICATIONS_READ)],
    )
    async def list_notifications(
        self,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        limit: Limit = DEFAULT_LIMIT,
        cursor: CursorParameter = None,
        status: FromQuery[NotificationStatus | None] = None,
        type: TypeFilter = None,
        entity_id: EntityFilter = None,
        created_after: InstantQuery = None,
        created_before: InstantQuery = None,
    ) -> Response[list[Notification]]:
        """Filter by status, type, entity and creation time; ``Link`` names the next page."""
        after_time = query_instant("created_after", created_after)
        before_time = query_instant("created_before", created_before)
        check_storable({"type": type, "entity_id": entity_id}, source="query")
        after = Cursor.decode(cursor) if cursor else None
        async with transaction(services.pool) as conn:
            rows = await queries.list_notifications(
                conn,
                principal.tenant_id,
                limit=limit + 1,
                after=after,
                status=status,
                notification_type=type,
                entity_id=entity_id,
                created_after=after_time,
                created_before=before_time,
            )
        page, following = paginate(rows, limit)
        filters = {
            "limit": limit,
            "status": status,
            "type": type,
            "entity_id": entity_id,
            "created_after": after_time.isoformat() if after_time else None,
            "created_before": before_time.isoformat() if before_time else None,
        }
        query = {key: str(value) for key, value in filters.items() if value is not None}
        return Response(page, headers=next_link(self.path + "/", query, following))

    @get(
        "/{notification_id:uuid}",
        summary="One notification with its delivery attempts",
        responses=problem_responses(400, 404),
        guards=[requires(Scope.NOTIFICATIONS_READ)],
    )
    async def get_notification(
        self,
        notification_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> NotificationDetail:
        """The notification, its status and every delivery attempt."""
        async with transaction(services.pool) as conn:
            notification = await queries.get_notification(
                conn, principal.tenant_id, notification_id
            )
        if notification is None:
            raise not_found("notification", notification_id)
        return notification

    @delete(
        "/{notification_id:uuid}",
        status_code=200,
        summary="Cancel a notification",
        responses=problem_responses(400, 404, 409),
        guards=[requires(Scope.NOTIFICATIONS_WRITE)],
    )
    async def cancel(
        self,
        notification_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Notification:
        """Cancel the notification and its job in one transaction; it will never be sent.

        If a delivery is in flight, this waits for it: a notification that got sent
        answers 409 instead of claiming a cancel that did not happen.
        """
        async with transaction(services.pool) as conn:
            row = await _locked(conn, principal, notification_id)
            status, job_id = NotificationStatus(row["status"]), row["job_id"]
            if status is NotificationStatus.CANCELLED:
                return notification_from_row(row)  # the answer the first cancel gave
            if status not in CANCELLABLE:
                raise ProblemError(
                    409, "Conflict", f"notification {notification_id} is already {status}"
                )
            cancelled = await queries.set_status(
                conn, notification_id, NotificationStatus.CANCELLED
            )
            if job_id is not None:
                # Only a job still waiting can be cancelled; one already running finds the
                # row cancelled once it gets the lock this transaction holds.
                await jobs.cancel_waiting_job(conn, job_id)
        return cancelled

    @post(
        "/{notification_id:uuid}/retry",
        status_code=202,
        summary="Replay a failed or dead notification",
        responses=problem_responses(400, 404, 409, 422),
        guards=[requires(Scope.NOTIFICATIONS_WRITE)],
    )
    async def retry(
        self,
        notification_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotent: NamedDependency[IdempotentRequest | None],
    ) -> Response[Notification]:
        """Make a failed or dead notification pending again and deliver it now."""
        async with transaction(services.pool) as conn:
            stored = await idempotency.claim(conn, idempotent)
            if stored is not None:
                return Response(stored.decode(Notification), status_code=stored.status)
            status = NotificationStatus((await _locked(conn, principal, notification_id))["status"])
            if not status.replayable:
                raise ProblemError(
                    409,
                    "Conflict",
                    f"only failed or dead notifications can be replayed; this one is {status}",
                )
            job_id = await defer_delivery(conn, notification_id, tenant_id=principal.tenant_id)
            notification = await queries.start_new_round(
                conn, notification_id, job_id, current_traceparent()
            )
            await idempotency.remember(conn, idempotent, 202, notification)
        return Response(notification, status_code=202)
