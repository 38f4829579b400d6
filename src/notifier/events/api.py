"""HTTP handlers for ``/api/v1/events``."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from notifier import idempotency
from notifier.api_types import TypeFilter, check_instant, check_payload_size, check_storable
from notifier.db import transaction
from notifier.events import queries
from notifier.events.cloudevents import parse_publish_request
from notifier.events.schemas import Event, EventDetail
from notifier.events.tasks import enqueue_processing
from notifier.idempotency import IdempotentRequest
from notifier.notifications.queries import list_notifications
from notifier.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Cursor,
    CursorParameter,
    Limit,
    next_link,
    paginate,
)
from notifier.problems import not_found, problem_responses
from notifier.services import Services


class EventController(Controller):
    """Publish and read events."""

    path = "/api/v1/events"
    tags = ["events"]  # noqa: RUF012 - litestar reads it from the class

    @post(
        "/",
        status_code=201,
        summary="Publish an event, a CloudEvent, or a batch of either",
        responses=problem_responses(400, 422),
    )
    async def publish(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
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
            check_payload_size(f"{prefix}payload", event.payload)
            check_instant(f"{prefix}occurred_at", event.occurred_at)
        async with transaction(services.pool) as conn:
            stored = await idempotency.claim(conn, idempotent)
            if stored is not None:
                replay: Event | list[Event] = (
                    stored.decode(list[Event]) if is_batch else stored.decode(Event)
                )
                return Response(replay, status_code=stored.status)
            published, anything_new = [], False
            for event in events:
                row, created = await queries.insert_event(conn, event)
                if created:
                    await enqueue_processing(services.queue, conn, row.id)
                published.append(row)
                anything_new = anything_new or created
            status = 201 if anything_new else 200
            body: Event | list[Event] = published if is_batch else published[0]
            await idempotency.remember(conn, idempotent, status, body)
        return Response(body, status_code=status)

    @get("/", summary="List events, newest first", responses=problem_responses(400, 422))
    async def list_events(
        self,
        services: NamedDependency[Services],
        limit: Limit = DEFAULT_LIMIT,
        cursor: CursorParameter = None,
        type: TypeFilter = None,
    ) -> Response[list[Event]]:
        """A page of events. The ``Link`` header names the next page, if any."""
        check_storable({"type": type}, source="query")
        after = Cursor.decode(cursor) if cursor else None
        async with transaction(services.pool) as conn:
            events = await queries.list_events(conn, limit=limit + 1, after=after, event_type=type)
        page, following = paginate(events, limit)
        query = {"limit": str(limit)} | ({"type": type} if type else {})
        return Response(page, headers=next_link(self.path + "/", query, following))

    @get(
        "/{event_id:uuid}",
        summary="One event with its notifications",
        responses=problem_responses(400, 404),
    )
    async def get_event(
        self, event_id: FromPath[uuid.UUID], services: NamedDependency[Services]
    ) -> EventDetail:
        """The event and every notification it produced, with their states."""
        async with transaction(services.pool) as conn:
            event = await queries.get_event(conn, event_id)
            if event is None:
                raise not_found("event", event_id)
            notifications = await list_notifications(conn, event_id=event_id, limit=MAX_LIMIT)
        return EventDetail(
            **{name: getattr(event, name) for name in Event.__struct_fields__},
            notifications=notifications,
        )
