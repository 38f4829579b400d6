"""The event use cases: publish, process (the ``process_event`` task), list and get.

Each function is one transaction of its own (a single publish without an
``Idempotency-Key`` is one statement, shared with concurrent requests': see
:mod:`notifier.events.publisher`). The API, the worker, the CLI and the dashboard call
these. Invalid input raises :class:`notifier.errors.ProblemError` naming the field at fault;
another tenant's event is a 404 like a missing one.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import msgspec
import psycopg

from notifier import idempotency
from notifier.api_types import check_payload_size, check_storable, checked_instant
from notifier.db import Connection, Pool, transaction
from notifier.errors import not_found
from notifier.events import digests, queries
from notifier.events.cloudevents import NewEvent
from notifier.events.publisher import EventPublisher
from notifier.events.queries import PublishedEvent, TenantEvent
from notifier.events.routing import drafts_for_event
from notifier.events.schemas import Event, EventDetail
from notifier.events.superseding import KeyClaims, apply_keys, claim_keys, key_lock_id
from notifier.idempotency import IdempotentRequest, Outcome
from notifier.notifications import queries as notification_queries
from notifier.notifications.scheduling import (
    DEFAULT_EXPIRY_GRACE,
    DraftToStore,
    NotificationDraft,
    store_notifications,
)
from notifier.notifications.schemas import NotificationFilter
from notifier.notifications.selection import select_matching
from notifier.pagination import MAX_LIMIT, Cursor, Page, paginate
from notifier.queue import EVENTS_QUEUE, PROCESS_EVENT_TASK, jobs
from notifier.rules.queries import matching_rules
from notifier.rules.schemas import Rule
from notifier.telemetry import current_traceparent
from notifier.telemetry.metrics import Metrics
from notifier.telemetry.tracing import consumer_span

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


# A batch takes no more events along once its events make this many notifications: one
# transaction stays bounded (this plus NOTIFIER_MAX_NOTIFICATIONS_PER_EVENT) when events
# fan out to many recipients.
BATCH_NOTIFICATIONS = 5_000


class JobGroup(NamedTuple):
    """The jobs a process_event job's batch is taken from: its tenant's (None: jobs deferred
    before migration 0011) at its priority, as the fetch groups them, behind ``after`` (the
    job's own place in the group) when given."""

    tenant_id: str | None
    priority: int
    after: jobs.JobPosition | None = None


class _Plan(NamedTuple):
    """One event of a batch, routed (no write yet): its drafts and the keys it claims."""

    tenant_id: str
    event: Event
    # The job taken along for it; None for the running job's own event.
    job_id: int | None
    # The trace it continues (of a job taken along only: the own job's span has it).
    traceparent: str | None
    rules: list[Rule]
    drafts: list[NotificationDraft]
    to_digests: list[NotificationDraft]
    claims: KeyClaims
    # Why it makes no notification at all: more than the limit.
    too_many: str | None


class _Outcome(NamedTuple):
    """What processing one event of a batch made, for the log and the metrics."""

    plan: _Plan
    stored: list[NotificationDraft]
    superseded: int
    cancelled: int


async def process(
    pool: Pool,
    metrics: Metrics,
    event_id: uuid.UUID,
    *,
    max_notifications: int,
    group: JobGroup | None = None,
    batch_size: int = 1,
    now: datetime.datetime | None = None,
    expiry_grace: datetime.timedelta = DEFAULT_EXPIRY_GRACE,
    default_phone_region: str | None = None,
    keep_succeeded_jobs: bool = False,
) -> None:
    """Apply the routing rules to an event and, with a ``group``, to up to ``batch_size``
    - 1 other events whose process_event jobs wait due in it (NOTIFIER_EVENT_BATCH_SIZE),
    in one transaction: their notifications and deliver jobs, the events marked processed,
    the jobs taken along finished.

    An event unknown or processed already is left alone (and takes none along). One whose
    rules would make more than ``max_notifications`` makes none and is marked processed with
    the reason. ``now`` (the clock, default the current time) plans the send times; target
    dates are judged from when the event was accepted, with ``expiry_grace``
    (NOTIFIER_EXPIRY_GRACE_SECONDS). Events from the outbox are counted in ``metrics`` here
    (the API's were counted when published), and so are notifications made expired. SMS
    recipients are resolved to E.164 with ``default_phone_region``
    (NOTIFIER_DEFAULT_PHONE_REGION), as the API resolves them. The jobs taken along are
    deleted, or marked succeeded with ``keep_succeeded_jobs`` (NOTIFIER_KEEP_SUCCEEDED_JOBS).

    An event taken along that fails is left out of the batch, its job left waiting to run
    (and retry) on its own; if the batch as a whole fails, the event is processed again on
    its own, so that another event's fault never becomes this job's retry.
    """
    take_along = batch_size - 1 if group is not None else 0
    try:
        outcomes = await _process_batch(
            pool,
            event_id,
            group,
            take_along,
            _Planner(max_notifications, now, expiry_grace, default_phone_region),
            keep_succeeded_jobs=keep_succeeded_jobs,
        )
    except Exception:
        if take_along <= 0:
            raise
        logger.warning(
            "event %s: its batch failed; processing it on its own", event_id, exc_info=True
        )
        outcomes = await _process_batch(
            pool,
            event_id,
            None,
            0,
            _Planner(max_notifications, now, expiry_grace, default_phone_region),
            keep_succeeded_jobs=keep_succeeded_jobs,
        )
    for outcome in outcomes:
        _report(metrics, outcome)


async def _process_batch(
    pool: Pool,
    event_id: uuid.UUID,
    group: JobGroup | None,
    take_along: int,
    planner: _Planner,
    *,
    keep_succeeded_jobs: bool,
) -> list[_Outcome]:
    """Process the event and up to ``take_along`` others of ``group``, in one transaction;
    what each made, once committed."""
    async with transaction(pool) as conn:
        locked = await queries.lock_unprocessed_event(conn, event_id)
        if locked is None:
            logger.info("event %s is unknown or already processed; nothing to do", event_id)
            return []
        batch: list[tuple[str, Event, int | None, str | None]] = [(*locked, None, None)]
        if group is not None and take_along > 0:
            taken = await queries.lock_due_events(
                conn,
                own_event_id=event_id,
                tenant_id=group.tenant_id,
                priority=group.priority,
                limit=take_along,
                after=group.after,
            )
            batch += [(item.tenant_id, item.event, item.job_id, item.traceparent) for item in taken]
        planned_at = planner.now or datetime.datetime.now(datetime.UTC)
        plans: list[_Plan] = []
        planned = 0  # notifications the batch makes so far
        for tenant_id, event, job_id, traceparent in batch:
            if job_id is not None and planned >= BATCH_NOTIFICATIONS:
                break  # the rest keep their jobs, waiting, for the next batch
            try:
                plan = await planner.plan(conn, planned_at, tenant_id, event, job_id, traceparent)
            except psycopg.Error:
                raise  # the transaction is lost: the batch fails as a whole
            except Exception:
                if job_id is None:
                    raise
                # Pure routing code failed on this event: it runs (and retries) alone.
                logger.warning("event %s left out of a batch", event.id, exc_info=True)
                continue
            plans.append(plan)
            planned += len(plan.drafts) + len(plan.to_digests)
        return await _store(conn, plans, planned_at, keep_succeeded_jobs=keep_succeeded_jobs)


class _Planner:
    """Routes the events of a batch, reading each tenant's rules once per event type."""

    def __init__(
        self,
        max_notifications: int,
        now: datetime.datetime | None,
        expiry_grace: datetime.timedelta,
        phone_region: str | None,
    ) -> None:
        self.max_notifications = max_notifications
        self.now = now
        self.expiry_grace = expiry_grace
        self.phone_region = phone_region
        self.rules: dict[tuple[str, str], list[Rule]] = {}
        self.sharing_key: dict[str, dict[str, list[uuid.UUID]]] = {}

    async def plan(
        self,
        conn: Connection,
        planned_at: datetime.datetime,
        tenant_id: str,
        event: Event,
        job_id: int | None,
        traceparent: str | None,
    ) -> _Plan:
        rules = self.rules.get((tenant_id, event.type))
        if rules is None:
            rules = await matching_rules(conn, tenant_id, event.type)
            self.rules[(tenant_id, event.type)] = rules
        drafts = drafts_for_event(
            event, rules, planned_at, grace=self.expiry_grace, phone_region=self.phone_region
        )
        if len(drafts) > self.max_notifications:
            # All or nothing: an arbitrary first `limit` recipients would be a silent partial
            # send, and storing the excess as failed rows would let one event flood the table.
            error = (
                f"its rules would make {len(drafts)} notifications, more than the "
                f"{self.max_notifications} one event may make "
                "(NOTIFIER_MAX_NOTIFICATIONS_PER_EVENT); none were made"
            )
            none = KeyClaims(notify=set(), cancel=set())
            return _Plan(tenant_id, event, job_id, traceparent, rules, [], [], none, error)
        # Digest rules' drafts join their key's open digest instead (or open one).
        to_digests = [draft for draft in drafts if digests.is_digest(draft)]
        keyed = [draft for draft in drafts if not digests.is_digest(draft)]
        claims = await claim_keys(
            conn,
            tenant_id,
            event,
            rules,
            keyed,
            sharing_key=self.sharing_key.setdefault(tenant_id, {}),
        )
        return _Plan(tenant_id, event, job_id, traceparent, rules, keyed, to_digests, claims, None)


def _keys_touched(plan: _Plan) -> set[tuple[str, str]]:
    """The (tenant, key) pairs whose stored notifications ``plan``'s event reads or ends."""
    keys = {(plan.tenant_id, key) for _, key in plan.claims.all()}
    return keys | {(plan.tenant_id, d.key) for d in plan.to_digests if d.key is not None}


async def _store(
    conn: Connection,
    plans: list[_Plan],
    planned_at: datetime.datetime,
    *,
    keep_succeeded_jobs: bool,
) -> list[_Outcome]:
    """Supersede, cancel and collect digests by the events' keys, one event after the
    other; store every notification and deliver job; mark the events processed and finish
    the jobs taken along.

    Keys keep their guarantees in a batch: every advisory lock of the batch is taken first,
    superseding's then digests', each set sorted (the order a single event takes them in),
    so two batches never wait for each other in a circle. Notifications wait to be written
    together, except that an event whose keys meet those of notifications still waiting
    has them written first: superseding and digests read the stored rows.
    """
    await notification_queries.lock_keys(
        conn,
        sorted({key_lock_id(p.tenant_id, rk) for p in plans for rk in p.claims.all()}),
    )
    await notification_queries.lock_keys(
        conn,
        sorted(
            {lock for p in plans for lock in digests.digest_lock_ids(p.tenant_id, p.to_digests)}
        ),
    )
    waiting: list[DraftToStore] = []
    waiting_keys: set[tuple[str, str]] = set()
    outcomes: list[_Outcome] = []
    errors: dict[uuid.UUID, str | None] = {}
    for plan in plans:
        event = plan.event
        if plan.too_many is not None:
            errors[event.id] = plan.too_many
            outcomes.append(_Outcome(plan, [], 0, 0))
            continue
        with _event_span(plan):
            # Each notification's deliver job continues the trace its event was processed in.
            traceparent = current_traceparent()
            touched = _keys_touched(plan)
            if not touched:
                stored, superseded, cancelled = plan.drafts, 0, 0
                keyed_errors = plan.claims.errors
            else:
                if touched & waiting_keys:
                    await store_notifications(conn, waiting)
                    waiting, waiting_keys = [], set()
                try:
                    # An event taken along fails alone: its writes undone to a savepoint.
                    async with conn.transaction() if plan.job_id is not None else _no_savepoint():
                        keyed = await apply_keys(
                            conn, plan.tenant_id, event, plan.rules, plan.drafts, claims=plan.claims
                        )
                        opened = await digests.collect(
                            conn, plan.tenant_id, event, plan.to_digests, planned_at
                        )
                except Exception:
                    if plan.job_id is None:
                        raise
                    logger.warning("event %s left out of a batch", event.id, exc_info=True)
                    continue
                stored = keyed.drafts + opened
                superseded, cancelled, keyed_errors = (
                    keyed.superseded,
                    keyed.cancelled,
                    keyed.errors,
                )
        waiting += [DraftToStore(plan.tenant_id, draft, traceparent) for draft in stored]
        waiting_keys |= {(plan.tenant_id, d.key) for d in stored if d.key is not None}
        errors[event.id] = "; ".join(keyed_errors) or None
        outcomes.append(_Outcome(plan, stored, superseded, cancelled))
    await store_notifications(conn, waiting)
    await queries.mark_many_processed(conn, errors)
    # The jobs taken along did their work here: ended as if they had run.
    await jobs.finish_jobs(
        conn,
        [o.plan.job_id for o in outcomes if o.plan.job_id is not None],
        delete=not keep_succeeded_jobs,
    )
    return outcomes


@contextlib.asynccontextmanager
async def _no_savepoint() -> AsyncIterator[None]:
    yield


def _event_span(plan: _Plan) -> contextlib.AbstractContextManager[Any]:
    """The span of an event taken along in a batch: its own job never runs, so the batch
    starts the span the job would have had, in the trace the event continues. The running
    job's own event is in the job's span already."""
    if plan.job_id is None:
        return contextlib.nullcontext()
    return consumer_span(
        PROCESS_EVENT_TASK,
        job_id=plan.job_id,
        queue=EVENTS_QUEUE,
        traceparent=plan.traceparent,
        acting_on={"event_id": plan.event.id},
        batched=True,
    )


def _report(metrics: Metrics, outcome: _Outcome) -> None:
    """Count and log what one event of a committed batch made."""
    event = outcome.plan.event
    if outcome.plan.too_many is not None:
        logger.warning("event %s (%s): %s", event.id, event.type, outcome.plan.too_many)
        return
    metrics.count_expired(draft.send.expiry for draft in outcome.stored)
    if event.producer != "api":
        # The API counted its own events; the outbox's are first seen here.
        metrics.count_event(event.type, producer=event.producer)
    logger.info(
        "event %s (%s): %d rules matched, %d notifications, %d superseded, %d cancelled",
        event.id,
        event.type,
        len(outcome.plan.rules),
        len(outcome.stored),
        outcome.superseded,
        outcome.cancelled,
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
