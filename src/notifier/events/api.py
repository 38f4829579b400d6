"""HTTP handlers for ``/api/v1/events``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody
from litestar.params import FromPath

from notifier import idempotency
from notifier.api_types import TypeFilter, check_payload_size, check_storable, checked_instant
from notifier.auth.guard import BEARER_SECURITY, requires
from notifier.db import transaction
from notifier.events import queries
from notifier.events.cloudevents import (
    CLOUDEVENTS_BATCH_JSON,
    CLOUDEVENTS_JSON,
    MAX_BATCH_SIZE,
    CloudEvent,
    parse_publish_request,
)
from notifier.events.publisher import EventPublisher
from notifier.events.queries import PublishedEvent, TenantEvent
from notifier.events.schemas import Event, EventCreate, EventDetail
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
from notifier.telemetry import current_traceparent
from notifier.tenancy import Principal, Scope


def _publish_request_body() -> RequestBody:
    """The three shapes ``publish`` reads, for the OpenAPI document.

    ``publish`` parses its body itself (the shape depends on the content type and on the
    body), so Litestar cannot derive this from its signature. The schemas come from the
    very structs the parser decodes with, inlined so the document needs no extra components.
    """
    refs, definitions = msgspec.json.schema_components([EventCreate, CloudEvent])
    plain, cloudevent = (definitions[ref["$ref"].removeprefix("#/$defs/")] for ref in refs)

    def batch(item: dict[str, Any]) -> dict[str, Any]:
        return {"type": "array", "items": item, "minItems": 1, "maxItems": MAX_BATCH_SIZE}

    either: dict[str, Any] = {"anyOf": [plain, cloudevent]}
    # Litestar renders plain dicts as they are; its Schema type cannot be built from them.
    shapes: dict[str, Any] = {
        "application/json": {"anyOf": [plain, cloudevent, batch(either)]},
        CLOUDEVENTS_JSON: cloudevent,
        CLOUDEVENTS_BATCH_JSON: batch(cloudevent),
    }
    return RequestBody(
        required=True,
        description="An event, a CloudEvent, or a batch (an array) of them",
        content={media: OpenAPIMediaType(schema=schema) for media, schema in shapes.items()},
    )


@dataclass
class _PublishOperation(Operation):
    """The OpenAPI operation of ``publish``, with its request body."""

    def __post_init__(self) -> None:
        self.request_body = _publish_request_body()


def _stored(published: list[PublishedEvent]) -> tuple[list[Event], list[str]]:
    """The events as stored, and the types of those this request stored (the new ones)."""
    return [p.event for p in published], [p.event.type for p in published if p.is_new]


def _status(new_types: list[str]) -> int:
    """201 if anything was new, 200 if every event was stored before."""
    return 201 if new_types else 200


def _body(published: list[Event], *, is_batch: bool) -> Event | list[Event]:
    return published if is_batch else published[0]


class EventController(Controller):
    """Publish and read events."""

    path = "/api/v1/events"
    tags = ["events"]  # noqa: RUF012 - litestar reads it from the class
    security = BEARER_SECURITY

    @post(
        "/",
        status_code=201,
        summary="Publish an event, a CloudEvent, or a batch of either",
        responses={
            200: ResponseSpec(
                Event | list[Event],
                description="Every CloudEvent in the request was already stored: the stored ones",
                generate_examples=False,
            ),
            **problem_responses(400, 413, 415, 422),
        },
        operation_class=_PublishOperation,
        guards=[requires(Scope.EVENTS_WRITE)],
    )
    async def publish(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        publisher: NamedDependency[EventPublisher],
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
            request.headers.get("content-type", ""), await request.body(), request.headers
        )
        for index, event in enumerate(events):
            prefix = f"[{index}]." if is_batch else ""
            check_storable({prefix + k: v for k, v in msgspec.structs.asdict(event).items()})
            check_payload_size(f"{prefix}payload", event.payload)
            if event.occurred_at is not None:
                occurred_at = checked_instant(f"{prefix}occurred_at", event.occurred_at)
                events[index] = msgspec.structs.replace(event, occurred_at=occurred_at)
        # Processing continues the producer's trace if the event names one, else this request's.
        traceparent = current_traceparent()
        items = [
            TenantEvent(
                principal.tenant_id,
                msgspec.structs.replace(event, traceparent=event.traceparent or traceparent),
            )
            for event in events
        ]
        if idempotent is None and not is_batch:
            # The common case: one statement, shared with the events of concurrent requests.
            published, new_types = _stored([await publisher.publish(items[0])])
        else:
            async with transaction(services.pool) as conn:
                stored = await idempotency.claim(conn, idempotent)
                if stored is not None:
                    replay: Event | list[Event] = (
                        stored.decode(list[Event]) if is_batch else stored.decode(Event)
                    )
                    return Response(replay, status_code=stored.status)
                published, new_types = _stored(await queries.publish_events(conn, items))
                await idempotency.remember(
                    conn, idempotent, _status(new_types), _body(published, is_batch=is_batch)
                )
        for event_type in new_types:
            services.metrics.count_event(event_type, producer="api")
        return Response(_body(published, is_batch=is_batch), status_code=_status(new_types))

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
        cursor: CursorParameter = None,
        type: TypeFilter = None,
    ) -> Response[list[Event]]:
        """A page of events. The ``Link`` header names the next page, if any."""
        check_storable({"type": type}, source="query")
        after = Cursor.decode(cursor) if cursor else None
        async with transaction(services.pool) as conn:
            events = await queries.list_events(
                conn, principal.tenant_id, limit=limit + 1, after=after, event_type=type
            )
        page, following = paginate(events, limit)
        query = {"limit": str(limit)} | ({"type": type} if type else {})
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
