"""The event use cases: publish, process (the ``process_event`` task), list and get.

Each function is one transaction of its own (a single publish without an
``Idempotency-Key`` is one statement, shared with concurrent requests': see
:mod:`notifier.events.publisher`). The API, the worker, the CLI and the dashboard call
these. Invalid input raises :class:`notifier.errors.ProblemError` naming the field at fault;
another tenant's event is a 404 like a missing one.
"""

from __future__ import annotations

import datetime
import logging
import uuid

import msgspec

from notifier import idempotency
from notifier.api_types import check_payload_size, check_storable, checked_instant
from notifier.db import Pool, transaction
from notifier.errors import not_found
from notifier.events import digests, queries
from notifier.events.cloudevents import NewEvent
from notifier.events.publisher import EventPublisher
from notifier.events.queries import PublishedEvent, TenantEvent
from notifier.events.routing import drafts_for_event
from notifier.events.schemas import Event, EventDetail
from notifier.events.superseding import apply_keys
from notifier.idempotency import IdempotentRequest, Outcome
from notifier.notifications.scheduling import DEFAULT_EXPIRY_GRACE, create_notifications
from notifier.notifications.schemas import NotificationFilter
from notifier.notifications.selection import select_matching
from notifier.pagination import MAX_LIMIT, Cursor, Page, paginate
from notifier.rules.queries import matching_rules
from notifier.telemetry import current_traceparent
from notifier.telemetry.metrics import Metrics

logger = logging.getLogger("notifier.events")


def checked_events(tenant_id: str, events: list[NewEvent], *, is_batch: bool) -> list[TenantEvent]:
    """The events to store as the tenant's; a 422 naming the field at fault (``[2].payload``
    in a batch). Each continues the producer's trace if it names one, else the caller's."""
    traceparent = current_traceparent()
    checked = []
    for index, event in enumerate(events):
        prefix = f"[{index}]." if is_batch else ""
        check_storable({prefix + k: v for k, v in msgspec.structs.asdict(event).items()})
        check_payload_size(f"{prefix}payload", event.payload)
        occurred_at = event.occurred_at
        if occurred_at is not None:
            occurred_at = checked_instant(f"{prefix}occurred_at", occurred_at)
        checked.append(
            TenantEvent(
                tenant_id,
                msgspec.structs.replace(
                    event, occurred_at=occurred_at, traceparent=event.traceparent or traceparent
                ),
            )
        )
    return checked


def _answer(published: list[PublishedEvent], *, is_batch: bool) -> Outcome[Event | list[Event]]:
    """201 if anything was new, 200 if every event was stored before; the stored events."""
    stored = [p.event for p in published]
    status = 201 if any(p.is_new for p in published) else 200
    return Outcome(status, stored if is_batch else stored[0])


async def publish(
    pool: Pool,
    publisher: EventPublisher,
    metrics: Metrics,
    tenant_id: str,
    events: list[NewEvent],
    *,
    is_batch: bool,
    idempotent: IdempotentRequest | None = None,
) -> Outcome[Event | list[Event]]:
    """Store the tenant's event(s) and defer their processing, committed together.

    The one place that picks the path: a single event without ``idempotent`` goes through
    ``publisher`` (one autocommit statement shared with concurrent requests' events);
    a batch (all or nothing) or an idempotent request is a transaction of its own, the key
    claimed and its answer stored in it. A CloudEvent whose ``source`` + ``id`` is stored
    already is answered with the stored one (status 200 if nothing was new, else 201).
    ``metrics`` counts the new events by type (not on a replay).
    """
    items = checked_events(tenant_id, events, is_batch=is_batch)
    published: list[PublishedEvent] = []  # stays empty on a replay: nothing was stored
    if idempotent is None and not is_batch:
        # The common case: one statement, shared with the events of concurrent requests.
        published.append(await publisher.publish(items[0]))
        outcome = _answer(published, is_batch=False)
    else:
        async with transaction(pool) as conn:

            async def store() -> Outcome[Event | list[Event]]:
                published.extend(await queries.publish_events(conn, items))
                return _answer(published, is_batch=is_batch)

            answer_type = list[Event] if is_batch else Event
            outcome = await idempotency.once(conn, idempotent, answer_type, store)
    for stored in published:
        if stored.is_new:
            metrics.count_event(stored.event.type, producer="api")
    return outcome


async def process(
    pool: Pool,
    metrics: Metrics,
    event_id: uuid.UUID,
    *,
    max_notifications: int,
    now: datetime.datetime | None = None,
    expiry_grace: datetime.timedelta = DEFAULT_EXPIRY_GRACE,
    default_phone_region: str | None = None,
) -> None:
    """Apply the routing rules to one event, in one transaction: its notifications and
    their deliver jobs, and the event marked processed.

    An event unknown or processed already is left alone. One whose rules would make more
    than ``max_notifications`` makes none and is marked processed with the reason. ``now``
    (the clock, default the current time) plans the send times; target dates are judged
    from when the event was accepted, with ``expiry_grace`` (NOTIFIER_EXPIRY_GRACE_SECONDS).
    SMS recipients are resolved to E.164 with ``default_phone_region``
    (NOTIFIER_DEFAULT_PHONE_REGION), as the API resolves them. Events from the outbox are
    counted in ``metrics`` here (the API's were counted when
    published), and so are notifications made expired.
    """
    async with transaction(pool) as conn:
        locked = await queries.lock_unprocessed_event(conn, event_id)
        if locked is None:
            logger.info("event %s is unknown or already processed; nothing to do", event_id)
            return
        tenant_id, event = locked
        rules = await matching_rules(conn, tenant_id, event.type)
        planned_at = now or datetime.datetime.now(datetime.UTC)
        drafts = drafts_for_event(
            event, rules, planned_at, grace=expiry_grace, phone_region=default_phone_region
        )
        if len(drafts) > max_notifications:
            # All or nothing: an arbitrary first `limit` recipients would be a silent partial
            # send, and storing the excess as failed rows would let one event flood the table.
            error = (
                f"its rules would make {len(drafts)} notifications, more than the "
                f"{max_notifications} one event may make "
                "(NOTIFIER_MAX_NOTIFICATIONS_PER_EVENT); none were made"
            )
            await queries.mark_processed(conn, event.id, error=error)
            logger.warning("event %s (%s): %s", event_id, event.type, error)
            return
        # Keys: supersede the pending reminders of older events, cancel by cancel rules;
        # digest rules' drafts join their key's open digest instead (or open one).
        to_digests = [draft for draft in drafts if digests.is_digest(draft)]
        keyed = await apply_keys(
            conn, tenant_id, event, rules, [d for d in drafts if not digests.is_digest(d)]
        )
        opened = await digests.collect(conn, tenant_id, event, to_digests, planned_at)
        notifications = await create_notifications(conn, tenant_id, keyed.drafts + opened)
        await queries.mark_processed(conn, event.id, error="; ".join(keyed.errors) or None)
    metrics.count_expired(draft.send.expiry for draft in keyed.drafts + opened)
    if event.producer != "api":
        # The API counted its own events; the outbox's are first seen here.
        metrics.count_event(event.type, producer=event.producer)
    logger.info(
        "event %s (%s): %d rules matched, %d notifications, %d superseded, %d cancelled",
        event_id,
        event.type,
        len(rules),
        len(notifications),
        keyed.superseded,
        keyed.cancelled,
    )


async def list_events(
    pool: Pool,
    tenant_id: str,
    *,
    limit: int,
    after: Cursor | None = None,
    event_type: str | None = None,
) -> Page[Event]:
    """A page of at most ``limit`` of the tenant's events, newest first, after ``after``,
    of ``event_type`` only if given."""
    async with transaction(pool) as conn:
        events = await queries.list_events(
            conn, tenant_id, limit=limit + 1, after=after, event_type=event_type
        )
    return paginate(events, limit)


async def get_event(pool: Pool, tenant_id: str, event_id: uuid.UUID) -> EventDetail:
    """The tenant's event with every notification it produced; a 404 if it has none."""
    async with transaction(pool) as conn:
        event = await queries.get_event(conn, tenant_id, event_id)
        if event is None:
            raise not_found("event", event_id)
        notifications = await select_matching(
            conn, tenant_id, NotificationFilter(event_id=event_id), limit=MAX_LIMIT
        )
    return EventDetail(
        **{name: getattr(event, name) for name in Event.__struct_fields__},
        notifications=notifications,
    )
