"""HTTP handlers for ``/api/v1/notifications``: HTTP only, the use cases are in
``notifications/service.py``."""

from __future__ import annotations

import datetime
import uuid

from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody

from notifier.api_types import check_storable, query_instant
from notifier.auth.guard import BEARER_SECURITY, requires
from notifier.http.body import StrictBody
from notifier.http.params import (
    ChannelFilter,
    CursorParameter,
    EntityFilter,
    InstantQuery,
    KeyFilter,
    Limit,
    RecipientFilter,
    TypeFilter,
)
from notifier.http.problems import problem_responses
from notifier.idempotency import IdempotentRequest
from notifier.notifications import service
from notifier.notifications.schemas import (
    CancelledCount,
    Notification,
    NotificationCreate,
    NotificationDetail,
    NotificationFilter,
    NotificationReplacement,
    NotificationStatus,
)
from notifier.notifications.selection import BulkOutcome
from notifier.pagination import DEFAULT_LIMIT, Cursor, next_link
from notifier.services import Services
from notifier.tenancy import Principal, Scope


class NotificationController(Controller):
    """Schedule, read, cancel and replay notifications."""

    path = "/api/v1/notifications"
    tags = ["notifications"]  # noqa: RUF012 - litestar reads it from the class
    security = BEARER_SECURITY

    @post(
        "/",
        status_code=201,
        summary="Schedule a notification",
        responses=problem_responses(400, 413, 415, 422)
        | {
            200: ResponseSpec(
                NotificationReplacement,
                description="A pending notification of the same key was replaced by this one",
            )
        },
        guards=[requires(Scope.NOTIFICATIONS_WRITE)],
        dto=StrictBody[NotificationCreate],
        return_dto=None,
    )
    async def create(
        self,
        data: JSONBody[NotificationCreate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotent: NamedDependency[IdempotentRequest | None],
    ) -> Response[Notification]:
        """Store the notification and its deliver job, scheduled ``lead_time_days`` before
        ``target_date``, in one transaction. Stored ``expired`` (saying why in ``last_error``)
        only when its send time is not before ``expires_at``, or its target date had passed
        more than NOTIFIER_EXPIRY_GRACE_SECONDS before; a target date now or just past with
        ``lead_time_days`` 0 is sent now.

        With a ``key``, a pending notification of the tenant with that key is replaced (it
        ends ``superseded``) in the same transaction: **200** with the new one and the
        ``replaced`` id.
        """
        outcome = await service.schedule(
            services.pool,
            services.channels,
            services.settings.default_channel,
            principal.tenant_id,
            data,
            idempotent,
            default_phone_region=services.settings.default_phone_region,
            expiry_grace=datetime.timedelta(seconds=services.settings.expiry_grace_seconds),
            metrics=services.metrics,
        )
        return Response(outcome.body, status_code=outcome.status)

    @delete(
        "/",
        status_code=200,
        summary="Cancel every pending notification of a key or entity",
        responses=problem_responses(400, 409, 422),
        guards=[requires(Scope.NOTIFICATIONS_WRITE)],
    )
    async def cancel_matching(
        self,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        key: KeyFilter = None,
        entity_id: EntityFilter = None,
    ) -> CancelledCount:
        """Cancel the tenant's pending notifications with ``key`` and/or ``entity_id`` (both
        given: those matching both), and their jobs, in one transaction; how many."""
        check_storable({"key": key, "entity_id": entity_id}, source="query")
        return await service.cancel_matching(
            services.pool, principal.tenant_id, key=key, entity_id=entity_id
        )

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
        key: KeyFilter = None,
        recipient: RecipientFilter = None,
        channel: ChannelFilter = None,
        created_after: InstantQuery = None,
        created_before: InstantQuery = None,
    ) -> Response[list[Notification]]:
        """Filter by status, type, entity, key, recipient, channel and creation time;
        ``Link`` names the next page."""
        after_time = query_instant("created_after", created_after)
        before_time = query_instant("created_before", created_before)
        check_storable(
            {
                "type": type,
                "entity_id": entity_id,
                "key": key,
                "recipient": recipient,
                "channel": channel,
            },
            source="query",
        )
        where = NotificationFilter(
            status=status,
            notification_type=type,
            entity_id=entity_id,
            key=key,
            recipient=recipient,
            channel=channel,
            created_after=after_time,
            created_before=before_time,
        )
        page, following = await service.list_notifications(
            services.pool,
            principal.tenant_id,
            where,
            limit=limit,
            after=Cursor.decode(cursor) if cursor else None,
        )
        filters = {
            "limit": limit,
            "status": status,
            "type": type,
            "entity_id": entity_id,
            "key": key,
            "recipient": recipient,
            "channel": channel,
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
        return await service.get_notification(services.pool, principal.tenant_id, notification_id)

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
        return await service.cancel(services.pool, principal.tenant_id, notification_id)

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
        outcome = await service.replay(
            services.pool, principal.tenant_id, notification_id, idempotent
        )
        return Response(outcome.body, status_code=outcome.status)

    @post(
        "/replay",
        status_code=200,
        summary="Replay the failed and dead notifications matching a filter",
        responses=problem_responses(400, 413, 415, 422),
        guards=[requires(Scope.NOTIFICATIONS_WRITE)],
        dto=StrictBody[NotificationFilter],
        return_dto=None,
    )
    async def replay_many(
        self,
        data: JSONBody[NotificationFilter],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> BulkOutcome:
        """Up to ``limit`` of them (oldest first), in one transaction: each pending again
        with a deliver job due now. ``{}`` matches every failed and dead one."""
        count = await service.replay_many(services.pool, principal.tenant_id, data)
        return BulkOutcome(count=count)

    @post(
        "/cancel",
        status_code=200,
        summary="Cancel the pending notifications matching a filter",
        responses=problem_responses(400, 413, 415, 422),
        guards=[requires(Scope.NOTIFICATIONS_WRITE)],
        dto=StrictBody[NotificationFilter],
        return_dto=None,
    )
    async def cancel_many(
        self,
        data: JSONBody[NotificationFilter],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> BulkOutcome:
        """Up to ``limit`` of them (oldest first) and their jobs, in one transaction; one
        being delivered at that moment is left to its delivery."""
        count = await service.cancel_many(services.pool, principal.tenant_id, data)
        return BulkOutcome(count=count)
