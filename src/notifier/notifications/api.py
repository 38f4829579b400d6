"""HTTP handlers for ``/api/v1/notifications``."""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Any

from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from notifier import idempotency
from notifier.api_types import (
    AwareDatetime,
    check_aware,
    check_instant,
    check_storable,
    checked_channel,
)
from notifier.db import Connection, transaction
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
from notifier.pagination import DEFAULT_LIMIT, Cursor, Limit, next_link, paginate
from notifier.problems import ProblemError, field_error, not_found, problem_responses
from notifier.services import Services

CANCELLABLE = frozenset(
    {NotificationStatus.PENDING, NotificationStatus.FAILED, NotificationStatus.DEAD}
)


def draft_from_request(
    data: NotificationCreate, services: Services, now: datetime.datetime
) -> NotificationDraft:
    """Check a create request against the configured channels and plan its one send."""
    check_storable(data)
    check_instant("target_date", data.target_date)
    channel_name = data.channel or services.settings.default_channel
    # The seed shape carries both an email and a phone: SMS goes to the phone.
    fallback = (data.phone or data.email) if channel_name == "sms" else (data.email or data.phone)
    recipient = data.recipient or fallback
    checked_channel(services, channel_name, recipient)
    if recipient is None:
        raise field_error("recipient", "give recipient, email or phone")
    (send,) = plan_sends(data.target_date, [datetime.timedelta(days=data.lead_time_days)], now)
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
    )


async def _locked(conn: Connection, notification_id: uuid.UUID) -> dict[str, Any]:
    """Lock the notification and return its row. 404 if unknown."""
    row = await queries.lock_notification(conn, notification_id)
    if row is None:
        raise not_found("notification", notification_id)
    return row


class NotificationController(Controller):
    """Schedule, read, cancel and replay notifications."""

    path = "/api/v1/notifications"
    tags = ["notifications"]  # noqa: RUF012 - litestar reads it from the class

    @post(
        "/",
        status_code=201,
        summary="Schedule a notification",
        responses=problem_responses(400, 422),
    )
    async def create(
        self,
        data: JSONBody[NotificationCreate],
        services: NamedDependency[Services],
        idempotent: NamedDependency[IdempotentRequest | None],
    ) -> Response[Notification]:
        """Store the notification and its deliver job, scheduled ``lead_time_days`` before
        ``target_date``, in one transaction. A target date in the past stores it ``expired``.
        """
        draft = draft_from_request(data, services, datetime.datetime.now(datetime.UTC))
        async with transaction(services.pool) as conn:
            stored = await idempotency.claim(conn, idempotent)
            if stored is not None:
                return Response(stored.decode(Notification), status_code=stored.status)
            (notification,) = await create_notifications(services.queue, conn, [draft])
            await idempotency.remember(conn, idempotent, 201, notification)
        return Response(notification, status_code=201)

    @get("/", summary="List notifications, newest first", responses=problem_responses(400, 422))
    async def list_notifications(
        self,
        services: NamedDependency[Services],
        limit: Limit = DEFAULT_LIMIT,
        cursor: FromQuery[str | None] = None,
        status: FromQuery[NotificationStatus | None] = None,
        notification_type: Annotated[str | None, QueryParameter(name="type")] = None,
        entity_id: FromQuery[str | None] = None,
        created_after: FromQuery[AwareDatetime | None] = None,
        created_before: FromQuery[AwareDatetime | None] = None,
    ) -> Response[list[Notification]]:
        """Filter by status, type, entity and creation time; ``Link`` names the next page."""
        check_aware("created_after", created_after)
        check_aware("created_before", created_before)
        check_storable({"type": notification_type, "entity_id": entity_id}, source="query")
        after = Cursor.decode(cursor) if cursor else None
        async with transaction(services.pool) as conn:
            rows = await queries.list_notifications(
                conn,
                limit=limit + 1,
                after=after,
                status=status,
                notification_type=notification_type,
                entity_id=entity_id,
                created_after=created_after,
                created_before=created_before,
            )
        page, following = paginate(rows, limit)
        filters = {
            "limit": limit,
            "status": status,
            "type": notification_type,
            "entity_id": entity_id,
            "created_after": created_after.isoformat() if created_after else None,
            "created_before": created_before.isoformat() if created_before else None,
        }
        query = {key: str(value) for key, value in filters.items() if value is not None}
        return Response(page, headers=next_link(self.path + "/", query, following))

    @get(
        "/{notification_id:uuid}",
        summary="One notification with its delivery attempts",
        responses=problem_responses(400, 404),
    )
    async def get_notification(
        self, notification_id: FromPath[uuid.UUID], services: NamedDependency[Services]
    ) -> NotificationDetail:
        """The notification, its status and every delivery attempt."""
        async with transaction(services.pool) as conn:
            notification = await queries.get_notification(conn, notification_id)
        if notification is None:
            raise not_found("notification", notification_id)
        return notification

    @delete(
        "/{notification_id:uuid}",
        status_code=200,
        summary="Cancel a notification",
        responses=problem_responses(400, 404, 409),
    )
    async def cancel(
        self, notification_id: FromPath[uuid.UUID], services: NamedDependency[Services]
    ) -> Notification:
        """Cancel the notification and its job in one transaction; it will never be sent.

        If a delivery is in flight, this waits for it: a notification that got sent
        answers 409 instead of claiming a cancel that did not happen.
        """
        async with transaction(services.pool) as conn:
            row = await _locked(conn, notification_id)
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
                await services.queue.job_manager.cancel_job_by_id_async(job_id, connection=conn)
        return cancelled

    @post(
        "/{notification_id:uuid}/retry",
        status_code=202,
        summary="Replay a failed or dead notification",
        responses=problem_responses(400, 404, 409, 422),
    )
    async def retry(
        self,
        notification_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        idempotent: NamedDependency[IdempotentRequest | None],
    ) -> Response[Notification]:
        """Make a failed or dead notification pending again and deliver it now."""
        async with transaction(services.pool) as conn:
            stored = await idempotency.claim(conn, idempotent)
            if stored is not None:
                return Response(stored.decode(Notification), status_code=stored.status)
            status = NotificationStatus((await _locked(conn, notification_id))["status"])
            if not status.replayable:
                raise ProblemError(
                    409,
                    "Conflict",
                    f"only failed or dead notifications can be replayed; this one is {status}",
                )
            job_id = await defer_delivery(services.queue, conn, notification_id)
            notification = await queries.start_new_round(conn, notification_id, job_id)
            await idempotency.remember(conn, idempotent, 202, notification)
        return Response(notification, status_code=202)
