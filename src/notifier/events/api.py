"""HTTP handlers for ``/api/v1/events``: HTTP only, the use cases are in ``events/service.py``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody
from litestar.params import FromPath

from notifier.api_types import check_storable
from notifier.auth.guard import BEARER_SECURITY, UncopiedGuardsRouteHandler, requires
from notifier.events import service
from notifier.events.cloudevents import (
    CLOUDEVENTS_BATCH_JSON,
    CLOUDEVENTS_JSON,
    MAX_BATCH_SIZE,
    CloudEvent,
    parse_publish_request,
)
from notifier.events.publisher import EventPublisher
from notifier.events.schemas import Event, EventCreate, EventDetail
from notifier.http.direct import answer_directly
from notifier.http.params import (
    CursorParameter,
    IdempotencyKey,
    Limit,
    TypeFilter,
    idempotent_request_of,
    principal_of,
)
from notifier.http.problems import problem_responses
from notifier.idempotency import HEADER as IDEMPOTENCY_HEADER
from notifier.idempotency import Outcome
from notifier.pagination import DEFAULT_LIMIT, Cursor, next_link
from notifier.services import Services
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


async def publish_answer(
    request: Request[Any, Any, Any], idempotency_key: str | None
) -> Outcome[Event | list[Event]]:
    """What ``POST /api/v1/events/`` answers, once its guard and request checks passed.

    No dependencies, on the API's busiest path: Litestar resolves the independent ones of
    a handler concurrently, in a task group of their own per request, which cost more than
    the rest of its dependency handling. The same values, in the same order: the principal
    the guard set, then the idempotency key (a 400 for a bad one, before the body is decoded).
    """
    services: Services = request.app.state.services
    publisher: EventPublisher = request.app.state.event_publisher
    principal = principal_of(request)
    body = await request.body()
    idempotent = idempotent_request_of(request, principal, idempotency_key, body)
    headers = request.headers
    events, is_batch = parse_publish_request(headers.get("content-type", ""), body, headers)
    return await service.publish(
        services.pool,
        publisher,
        services.metrics,
        principal.tenant_id,
        events,
        is_batch=is_batch,
        idempotent=idempotent,
    )


async def _publish_directly(request: Request[Any, Any, Any]) -> tuple[int, Any]:
    # The header as Litestar reads the handler's idempotency_key parameter: its first value.
    outcome = await publish_answer(request, request.headers.get(IDEMPOTENCY_HEADER))
    return outcome.status, outcome.body


class EventController(Controller):
    """Publish and read events."""

    path = "/api/v1/events"
    tags = ["events"]  # noqa: RUF012 - litestar reads it from the class
    security = BEARER_SECURITY

    @UncopiedGuardsRouteHandler(
        "/",
        http_method="POST",
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
        middleware=[answer_directly(_publish_directly, reads=["request", "idempotency_key"])],
    )
    async def publish(
        self, request: Request[Any, Any, Any], idempotency_key: IdempotencyKey = None
    ) -> Response[Event | list[Event]]:
        """Store the event(s) and enqueue their processing in one transaction.

        Takes ``{"type", "payload"}``, a CloudEvents 1.0 event (``application/cloudevents+json``
        or any JSON object with ``specversion``), or a JSON array of either
        (``application/cloudevents-batch+json``): a batch is all-or-nothing. A 201 means
        everything is committed. A CloudEvent whose ``source`` + ``id`` is already stored is
        not stored again: the stored one is returned (200 if nothing in the request was new).
        With an ``Idempotency-Key``, a repeat returns the first answer and stores nothing new.
        """
        # Never called in service: answer_directly (its middleware) answers for it with the
        # same publish_answer, so a change made only here takes no effect. The signature
        # declares the operation for the API document, and this body is the reference the
        # tests compare the direct path with (tests/events/test_publish_direct.py).
        outcome = await publish_answer(request, idempotency_key)
        return Response(outcome.body, status_code=outcome.status)

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
        page, following = await service.list_events(
            services.pool,
            principal.tenant_id,
            limit=limit,
            after=Cursor.decode(cursor) if cursor else None,
            event_type=type,
        )
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
        return await service.get_event(services.pool, principal.tenant_id, event_id)
