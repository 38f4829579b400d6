"""The dashboard's event pages: the list (by type, a page at a time) and one event with the
notifications it made, through :mod:`notifier.events.service` like the REST API."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Template

from notifier.api_types import EventType
from notifier.events import service
from notifier.events.schemas import Event
from notifier.pagination import DEFAULT_LIMIT, Cursor
from notifier.services import Services
from notifier.tenancy import Scope
from notifier.ui.auth import SCOPE_OPT, current_tenant
from notifier.ui.forms import field_message
from notifier.ui.pages import UI_PATH, page

READ = {SCOPE_OPT: Scope.EVENTS_READ.value}
LIST_PATH = f"{UI_PATH}/events"


@get("/events", name="ui-events", opt=READ)
async def event_list(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Template:
    """The tenant's events, newest first, of one type if asked."""
    event_type = request.query_params.get("type", "").strip()
    cursor_text = request.query_params.get("cursor")
    errors: dict[str, str] = {}
    events: list[Event] = []
    following: Cursor | None = None
    if event_type:
        try:
            msgspec.convert(event_type, EventType)
        except msgspec.ValidationError as exc:
            errors["type"] = field_message(exc)
    if not errors:
        events, following = await service.list_events(
            services.pool,
            current_tenant(request),
            limit=DEFAULT_LIMIT,
            after=Cursor.decode(cursor_text) if cursor_text else None,
            event_type=event_type or None,
        )
    query = {"type": event_type} if event_type else {}
    return await page(
        request,
        "events.html",
        current="ui-events",
        status_code=422 if errors else 200,
        event_type=event_type,
        errors=errors,
        events=events,
        next_page=(
            f"{LIST_PATH}?{urlencode({**query, 'cursor': following.encode()})}"
            if following
            else None
        ),
        first_page=(f"{LIST_PATH}?{urlencode(query)}" if query else LIST_PATH)
        if cursor_text
        else None,
    )


@get("/events/{event_id:uuid}", name="ui-event", opt=READ)
async def event_detail(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    event_id: FromPath[uuid.UUID],
) -> Template:
    """One event, its payload, and the notifications it made."""
    event = await service.get_event(services.pool, current_tenant(request), event_id)
    payload = msgspec.json.format(msgspec.json.encode(event.payload), indent=2).decode()
    return await page(request, "event.html", current="ui-events", event=event, payload=payload)


ROUTES = [event_list, event_detail]
