"""HTTP handlers for ``/api/v1/events``."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter

from notifier import idempotency
from notifier.api_types import check_instant, check_storable
from notifier.auth.guard import BEARER_SECURITY, requires
from notifier.db import transaction
from notifier.events import queries
from notifier.events.cloudevents import parse_publish_request
from notifier.events.schemas import Event, EventDetail
from notifier.events.tasks import enqueue_processing
from notifier.idempotency import IdempotentRequest
from notifier.notifications.queries import list_notifications
from notifier.pagination import DEFAULT_LIMIT, MAX_LIMIT, Cursor, Limit, next_link, paginate
from notifier.problems import not_found, problem_responses
from notifier.services import Services
from notifier.telemetry import current_traceparent
from notifier.tenancy import Principal, Scope


class EventController(Controller):
    """Publish and read events."""

    path = "/api/v1/events"
    tags = ["events"]  # noqa: RUF012 - litestar reads it from the class
    security = BEARER_SECURITY

    @post(
        "/",
        status_code=201,
        summary="Publish an event, a CloudEvent, or a batch of either",
        responses=problem_responses(400, 422),
        guards=[requires(Scope.EVENTS_WRITE)],
    )
    async def publish(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotent: NamedDependency[IdempotentRequest | None],
    ) -> Response[Event | list[Event]]:
        """Store the event(s) and enqueue their processing in one transaction.

        Takes ``{"type", "payload"}``, a CloudEvents 1.0 event (``application/cloudevents+json``
        or any JSON object with ``specversion``), or a JSON array of either
        (``application/cloudevents-batch+json``): a batch is all-or-nothing. A 201 means
        everything is committed. A CloudEvent whose ``source`` + ``id`` is already stored is
        not stored again: the stored one is returned (200 if nothing in the request was new).
        With an ``Idempotency-Key``, a repeat returns the first answer and stores nothing new.
        """
        events, is_batch = parse_publish_request(
            request.headers.get("content-type", ""), await request.body()
        )
        for index, event in enumerate(events):
            prefix = f"[{index}]." if is_batch else ""
            check_storable({prefix + k: v for k, v in msgspec.structs.asdict(event).items()})
            check_instant(f"{prefix}occurred_at", event.occurred_at)
        # Processing continues the producer's trace if the event names one, else this request's.
        traceparent = current_traceparent()
        async with transaction(services.pool) as conn:
            stored = await idempotency.claim(conn, idempotent)
            if stored is not None:
                replay: Event | list[Event] = (
                    stored.decode(list[Event]) if is_batch else stored.decode(Event)
                )
                return Response(replay, status_code=stored.status)
            published, new_types = [], []
            for event in events:
                row, created = await queries.insert_event(
                    conn,
                    principal.tenant_id,
                    msgspec.structs.replace(event, traceparent=event.traceparent or traceparent),
                )
                if created:
                    await enqueue_processing(services.queue, conn, row.id)
                    new_types.append(row.type)
                published.append(row)
            status = 201 if new_types else 200
            body: Event | list[Event] = published if is_batch else published[0]
            await idempotency.remember(conn, idempotent, status, body)
        for event_type in new_types:
            services.metrics.count_event(event_type, producer="api")
        return Response(body, status_code=status)

    @get(
        "/",
        summary="List events, newest first",
        responses=problem_responses(400, 422),
        guards=[requires(Scope.EVENTS_READ)],
    )
    async def list_events(
        self,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        limit: Limit = DEFAULT_LIMIT,
        cursor: FromQuery[str | None] = None,
        event_type: Annotated[str | None, QueryParameter(name="type")] = None,
    ) -> Response[list[Event]]:
        """A page of events. The ``Link`` header names the next page, if any."""
        check_storable({"type": event_type}, source="query")
        after = Cursor.decode(cursor) if cursor else None
        async with transaction(services.pool) as conn:
            events = await queries.list_events(
                conn, principal.tenant_id, limit=limit + 1, after=after, event_type=event_type
            )
        page, following = paginate(events, limit)
        query = {"limit": str(limit)} | ({"type": event_type} if event_type else {})
        return Response(page, headers=next_link(self.path + "/", query, following))

    @get(
        "/{event_id:uuid}",
        summary="One event with its notifications",
        responses=problem_responses(400, 404),
        guards=[requires(Scope.EVENTS_READ)],
    )
    async def get_event(
        self,
        event_id: FromPath[uuid.UUID],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> EventDetail:
        """The event and every notification it produced, with their states."""
        async with transaction(services.pool) as conn:
            event = await queries.get_event(conn, principal.tenant_id, event_id)
            if event is None:
                raise not_found("event", event_id)
            notifications = await list_notifications(
                conn, principal.tenant_id, event_id=event_id, limit=MAX_LIMIT
            )
        return EventDetail(
            **{name: getattr(event, name) for name in Event.__struct_fields__},
            notifications=notifications,
        )
