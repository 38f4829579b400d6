"""The dashboard's notification pages: the filtered list, bulk replay and cancel behind a
confirmation that states the count, one notification's timeline and message, and the
"create notification" form.

Every handler calls :mod:`notifier.notifications.service`, the use cases the REST API
calls; a key lacking ``notifications:write`` is refused by the guard (403) before any of
them runs, and another tenant's notification is the service's 404.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Redirect, Template

from notifier.db import Pool
from notifier.errors import ProblemError
from notifier.notifications import service
from notifier.notifications.schemas import (
    Notification,
    NotificationCreate,
    NotificationDetail,
    NotificationFilter,
    NotificationStatus,
)
from notifier.notifications.selection import BULK_LIMIT
from notifier.pagination import DEFAULT_LIMIT, Cursor
from notifier.services import Services
from notifier.tenancy import Scope
from notifier.ui.auth import SCOPE_OPT, current_tenant
from notifier.ui.forms import (
    FILTER_FIELDS,
    FormErrors,
    as_utc_instant,
    convert_fields,
    filter_values,
    notification_filter,
)
from notifier.ui.pages import UI_PATH, page

READ = {SCOPE_OPT: Scope.NOTIFICATIONS_READ.value}
WRITE = {SCOPE_OPT: Scope.NOTIFICATIONS_WRITE.value}
LIST_PATH = f"{UI_PATH}/notifications"
BULK_ACTIONS = {
    "replay": ("Replay", "failed or dead", "replayed"),
    "cancel": ("Cancel", "pending", "cancelled"),
}
# What the list says after an action sent the browser back to it (?done=...&count=...).
DONE_NOTICES = {
    "replayed": "Replayed {count} notification{s}: each is pending again, due now.",
    "cancelled": "Cancelled {count} notification{s}; they will never be sent.",
}


def _with_query(path: str, query: dict[str, str]) -> str:
    return f"{path}?{urlencode(query)}" if query else path


def _done_notice(request: Request[Any, Any, Any]) -> str | None:
    template = DONE_NOTICES.get(request.query_params.get("done", ""))
    count = request.query_params.get("count", "")
    if template is None or not count.isdigit():
        return None
    return template.format(count=f"{int(count):,}", s="" if count == "1" else "s")


@get("/notifications", name="ui-notifications", opt=READ)
async def notification_list(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Template:
    """The tenant's notifications, newest first, filtered, a page at a time."""
    values = filter_values(request.query_params)
    errors: dict[str, str] = {}
    notifications: list[Notification] = []
    following: Cursor | None = None
    cursor_text = request.query_params.get("cursor")
    try:
        where = notification_filter(values)
        after = Cursor.decode(cursor_text) if cursor_text else None
        notifications, following = await service.list_notifications(
            services.pool, current_tenant(request), where, limit=DEFAULT_LIMIT, after=after
        )
    except FormErrors as exc:
        errors = exc.errors
    return await page(
        request,
        "notifications.html",
        current="ui-notifications",
        status_code=422 if errors else 200,
        values=values,
        errors=errors,
        statuses=list(NotificationStatus),
        notifications=notifications,
        next_page=(
            _with_query(LIST_PATH, {**values, "cursor": following.encode()}) if following else None
        ),
        first_page=_with_query(LIST_PATH, values) if cursor_text else None,
        bulk_links={
            action: _with_query(f"{LIST_PATH}/bulk/{action}", values) for action in BULK_ACTIONS
        },
        notice=_done_notice(request),
    )


def _bulk_action(action: str) -> tuple[str, str, str]:
    if action not in BULK_ACTIONS:
        raise NotFoundException("There is no such bulk action.")
    return BULK_ACTIONS[action]


def _confirmed_filter(values: dict[str, str]) -> NotificationFilter:
    """The filter a bulk action acts on. The list page checked it before linking here:
    one that does not convert was edited by hand, a 422 naming each field at fault."""
    try:
        return notification_filter(values)
    except FormErrors as exc:
        raise ProblemError(
            422, "Unprocessable Content", "; ".join(f"{k}: {v}" for k, v in exc.errors.items())
        ) from None


@get("/notifications/bulk/{action:str}", name="ui-bulk-confirm", opt=WRITE)
async def bulk_confirm(
    request: Request[Any, Any, Any], services: NamedDependency[Services], action: FromPath[str]
) -> Template:
    """How many notifications the action would change, and the button that does it."""
    verb, which, _ = _bulk_action(action)
    values = filter_values(request.query_params)
    where = _confirmed_filter(values)
    count = await service.count_for_bulk(services.pool, current_tenant(request), action, where)
    return await page(
        request,
        "bulk_confirm.html",
        current="ui-notifications",
        action=action,
        verb=verb,
        which=which,
        values=values,
        count=min(count, BULK_LIMIT),
        more=count > BULK_LIMIT,
        limit=BULK_LIMIT,
        back=_with_query(LIST_PATH, values),
    )


@post("/notifications/bulk/{action:str}", name="ui-bulk-run", opt=WRITE, status_code=303)
async def bulk_run(
    request: Request[Any, Any, Any], services: NamedDependency[Services], action: FromPath[str]
) -> Redirect:
    """Replay or cancel what the confirmed filter matches now; back to the list, saying
    how many."""
    _, _, done = _bulk_action(action)
    form = await request.form()
    values = filter_values({name: str(form.get(name, "")) for name in FILTER_FIELDS})
    where = _confirmed_filter(values)
    run = service.replay_many if action == "replay" else service.cancel_many
    count = await run(services.pool, current_tenant(request), where)
    return Redirect(
        _with_query(LIST_PATH, {**values, "done": done, "count": str(count)}), status_code=303
    )


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of a notification's timeline."""

    at: datetime.datetime
    kind: str  # created, scheduled, attempt, final
    title: str
    outcome: str | None = None
    status_code: int | None = None
    seconds: float | None = None
    error: str | None = None


def timeline(notification: NotificationDetail) -> list[TimelineEntry]:
    """Created, scheduled, each attempt, and the final state, in the order they happened."""
    entries = [
        TimelineEntry(notification.created_at, "created", "Created"),
        TimelineEntry(
            notification.send_at,
            "scheduled",
            # A replay makes it due again: this is the current round's due time.
            f"Due on {notification.channel} to {notification.recipient}",
        ),
    ]
    for attempt in notification.delivery_attempts:
        entries.append(
            TimelineEntry(
                attempt.started_at,
                "attempt",
                f"Attempt {attempt.attempt} on {attempt.channel}",
                outcome=attempt.outcome,
                status_code=attempt.status_code,
                seconds=(attempt.finished_at - attempt.started_at).total_seconds(),
                error=attempt.error,
            )
        )
    status = NotificationStatus(notification.status)
    if status is NotificationStatus.SENT and notification.sent_at:
        entries.append(TimelineEntry(notification.sent_at, "final", "Sent"))
    elif status is NotificationStatus.CANCELLED and notification.cancelled_at:
        entries.append(TimelineEntry(notification.cancelled_at, "final", "Cancelled"))
    elif status is not NotificationStatus.PENDING:
        entries.append(
            TimelineEntry(
                notification.updated_at,
                "final",
                status.value.capitalize(),
                error=notification.last_error,
            )
        )
    # The final state is stamped by the transaction of the last attempt, which began
    # before that attempt's own clock reading: it still comes last.
    return sorted(entries, key=lambda entry: (entry.kind == "final", entry.at))


@get("/notifications/{notification_id:uuid}", name="ui-notification", opt=READ)
async def notification_detail(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    notification_id: FromPath[uuid.UUID],
) -> Template:
    """One notification: its fields, timeline, rendered message and the actions it allows."""
    tenant = current_tenant(request)
    notification = await service.get_notification(services.pool, tenant, notification_id)
    message_problem = None
    try:
        message = await service.render_message(
            services.pool, services.renderer, tenant, notification_id
        )
    except ProblemError as exc:
        if exc.status == 404:
            raise
        message, message_problem = None, exc.detail or exc.title
    return await page(
        request,
        "notification.html",
        current="ui-notifications",
        n=notification,
        timeline=timeline(notification),
        message=message,
        message_problem=message_problem,
        cancellable=NotificationStatus(notification.status) in service.CANCELLABLE,
        replayable=NotificationStatus(notification.status).replayable,
        notice=_done_notice(request),
    )


# What each button of one notification's page does: the use case (the API's DELETE, and
# its POST .../retry) and the notice its page shows after.
SINGLE_ACTIONS: dict[str, tuple[Callable[[Pool, str, uuid.UUID], Awaitable[object]], str]] = {
    "cancel": (service.cancel, "cancelled"),
    "replay": (service.replay, "replayed"),
}


@post(
    "/notifications/{notification_id:uuid}/{action:str}",
    name="ui-notification-action",
    opt=WRITE,
    status_code=303,
)
async def notification_action(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    notification_id: FromPath[uuid.UUID],
    action: FromPath[str],
) -> Redirect:
    """Cancel or replay it; back to its page, saying so."""
    if action not in SINGLE_ACTIONS:
        raise NotFoundException("There is no such action.")
    run, done = SINGLE_ACTIONS[action]
    await run(services.pool, current_tenant(request), notification_id)
    return Redirect(f"{LIST_PATH}/{notification_id}?done={done}&count=1", status_code=303)


# The create form ------------------------------------------------------------------------

CREATE_FIELDS = (
    "notification_type",
    "entity_id",
    "channel",
    "recipient",
    "target_date",
    "lead_time_days",
    "timezone",
    "data",
)


def _create_request(values: dict[str, str]) -> NotificationCreate:
    """The form as the API's request body; :class:`FormErrors` naming each field at fault."""
    fields: dict[str, Any] = {name: value for name, value in values.items() if value}
    errors: dict[str, str] = {}
    if "target_date" in fields:
        fields["target_date"] = as_utc_instant(fields["target_date"])
    if "lead_time_days" in fields:
        try:
            fields["lead_time_days"] = int(fields["lead_time_days"])
        except ValueError:
            errors["lead_time_days"] = "give a whole number of days"
    if "data" in fields:
        try:
            fields["data"] = msgspec.json.decode(fields["data"].encode())
        except msgspec.DecodeError as exc:
            errors["data"] = f"not JSON: {exc}"
        else:
            if not isinstance(fields["data"], dict):
                errors["data"] = "give a JSON object, such as {}"
    for required in ("notification_type", "entity_id", "target_date"):
        if required not in fields:
            errors[required] = "required"
    try:
        request = convert_fields(
            NotificationCreate, {k: v for k, v in fields.items() if k not in errors}
        )
    except FormErrors as exc:
        raise FormErrors({**exc.errors, **errors}) from None
    if errors:
        raise FormErrors(errors)
    return request


@get("/notifications/new", name="ui-notification-new", opt=WRITE)
async def notification_new(request: Request[Any, Any, Any]) -> Template:
    """The form that schedules one notification, as ``POST /api/v1/notifications/``."""
    services: Services = request.app.state.services
    return await page(
        request,
        "notification_new.html",
        current="ui-notifications",
        values={"lead_time_days": "7", "data": "{}"},
        errors={},
        channels=sorted(services.channels),
        default_channel=services.settings.default_channel,
    )


@post("/notifications/new", name="ui-notification-create", opt=WRITE, status_code=303)
async def notification_create(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Template | Redirect:
    """Schedule it with the API's use case; the form again, each error next to its field."""
    form = await request.form()
    values = {name: str(form.get(name, "")).strip() for name in CREATE_FIELDS}
    errors: dict[str, str] = {}
    try:
        outcome = await service.schedule(
            services.pool,
            services.channels,
            services.settings.default_channel,
            current_tenant(request),
            _create_request(values),
            expiry_grace=datetime.timedelta(seconds=services.settings.expiry_grace_seconds),
            metrics=services.metrics,
        )
    except FormErrors as exc:
        errors = exc.errors
    except ProblemError as exc:
        if exc.status >= 500 or not exc.errors:
            raise
        errors = {problem.field: problem.message for problem in exc.errors}
    if errors:
        return await page(
            request,
            "notification_new.html",
            current="ui-notifications",
            status_code=422,
            values=values,
            errors=errors,
            channels=sorted(services.channels),
            default_channel=services.settings.default_channel,
        )
    return Redirect(f"{LIST_PATH}/{outcome.body.id}", status_code=303)


ROUTES = [
    notification_list,
    notification_new,
    notification_create,
    bulk_confirm,
    bulk_run,
    notification_detail,
    notification_action,
]
