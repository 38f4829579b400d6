"""The ``deliver`` task: send due notifications, each once, and record what happened."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import uuid
from typing import Any, NamedTuple

import psycopg
from opentelemetry.trace import SpanKind

from notifier.channels.base import Channel, DeliveryError, DeliveryReceipt, OutgoingMessage
from notifier.channels.egress import origin_of
from notifier.channels.webhook import WebhookChannel
from notifier.db import Connection, transaction
from notifier.endpoints.delivery import note_endpoint_attempts, route_webhooks
from notifier.notifications import host_slots, queries
from notifier.notifications.host_slots import HostBusy
from notifier.notifications.scheduling import retry_outside_quiet_hours
from notifier.notifications.schemas import NotificationStatus
from notifier.preferences.links import unsubscribe_url
from notifier.preferences.suppression import suppression_reasons
from notifier.queue import DELIVER_TASK, JobInfo, jobs
from notifier.queue.retry import RetryLater, backoff_seconds
from notifier.rate_limits.gcra import Limit
from notifier.rate_limits.limiter import limit_for, take_send_slot
from notifier.services import Services
from notifier.settings import Settings
from notifier.telemetry.tracing import context_from_traceparent, tracer, tracing_enabled
from notifier.templates import catalog
from notifier.templates.pool import ToRender
from notifier.templates.rendering import (
    MessageFields,
    RenderedMessage,
    TemplateProblem,
    TemplateSource,
)

logger = logging.getLogger("notifier.delivery")


def _unsubscribe_link(row: dict[str, Any], settings: Settings) -> str | None:
    """The notification's one-click unsubscribe URL, or None when links are off."""
    return unsubscribe_url(
        settings,
        tenant_id=row["tenant_id"],
        recipient=row["recipient"],
        channel=row["channel"],
        notification_type=row["notification_type"],
    )


def _message(
    row: dict[str, Any], attempt: int, content: RenderedMessage, unsubscribe_link: str | None
) -> OutgoingMessage:
    return OutgoingMessage(
        notification_id=row["id"],
        notification_type=row["notification_type"],
        recipient=row["recipient"],
        attempt=attempt,
        event_id=row["event_id"],
        entity_id=row["entity_id"],
        target_date=row["target_date"],
        template=row["template"],
        context=row["context"],
        unsubscribe_url=unsubscribe_link,
        subject=content.subject,
        text=content.text,
        html=content.html,
        webhook=row.get("webhook_target"),
    )


# Template sources of one batch by (tenant, template, type), or why there is none.
TemplateCache = dict[tuple[str, str | None, str], TemplateSource | str]


async def _to_render(
    conn: Connection, row: dict[str, Any], unsubscribe_link: str | None, sources: TemplateCache
) -> ToRender | str:
    """What the notification's template renders from, or why there is no template.

    A missing template fails the same way on every attempt: the caller fails the
    notification permanently. ``sources`` keeps the templates found for the batch,
    looked up once each.
    """
    key = (row["tenant_id"], row["template"], row["notification_type"])
    if key not in sources:
        try:
            sources[key] = await catalog.template_for(conn, *key)
        except catalog.TemplateNotFound as exc:
            sources[key] = str(exc)
    source = sources[key]
    if isinstance(source, str):
        return source
    fields = MessageFields(
        notification_id=str(row["id"]),
        notification_type=row["notification_type"],
        recipient=row["recipient"],
        entity_id=row["entity_id"],
        target_date=row["target_date"],
        lead_time=row["lead_time"],
        channel=row["channel"],
        unsubscribe_url=unsubscribe_link,
    )
    return ToRender(row["tenant_id"], source, row["context"], fields)


def retry_delay(settings: Settings, attempt: int, retry_after: float | None) -> float:
    """Backoff for ``attempt``, never sooner than the receiver's ``Retry-After``."""
    delay = backoff_seconds(
        attempt, base=settings.retry_base_seconds, cap=settings.retry_max_seconds
    )
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, settings.retry_max_seconds)


def _too_late(row: dict[str, Any], now: datetime.datetime) -> bool:
    """Whether a reminder ahead of its target date can no longer be sent in time.

    One due at the target date itself (lead time zero) runs at or after that date by
    design, so the date passing cannot make it late.
    """
    target_date: datetime.datetime | None = row["target_date"]
    lead_time: datetime.timedelta = row["lead_time"]
    return target_date is not None and lead_time > datetime.timedelta(0) and target_date <= now


class JobGroup(NamedTuple):
    """The jobs a deliver job's batch is taken from: its tenant's (None: jobs deferred
    before migration 0011) at its priority, as the fetch groups them."""

    tenant_id: str | None
    priority: int


class SlotNeeded(NamedTuple):
    """The notification may be sent once its channel's (or its endpoint's) rate limit
    hands out a slot."""

    tenant_id: str
    # The bucket: the channel's name, or "endpoint:<id>" under an endpoint's own limit.
    channel: str
    limit: Limit


class Draft(NamedTuple):
    """One notification of a batch before its template is rendered."""

    row: dict[str, Any]
    job_id: int | None
    number: int
    channel: Channel | None
    channel_label: str
    # What its template renders from, or why this notification can never be sent.
    content: ToRender | str
    unsubscribe_link: str | None


class Attempt(NamedTuple):
    """One notification of a batch, ready to send or known to be unsendable."""

    row: dict[str, Any]
    job_id: int | None
    number: int
    channel: Channel | None
    # Label by configured channel names only: a row's channel is data and could be anything.
    channel_label: str
    # What to send, or why this notification can never be sent.
    message: OutgoingMessage | str


# The result of one send: a receipt, the channel's error, None when nothing was sent, or
# HostBusy when it waits for a slot of its host (no attempt).
SendResult = DeliveryReceipt | DeliveryError | HostBusy | None


async def deliver(
    services: Services,
    job: JobInfo,
    notification_id: str,
    tenant_id: str | None = None,
    slot_waits: int = 0,
) -> None:
    """Send a pending notification through its channel, with other due ones of its channel
    and of its job's tenant (``tenant_id``; None in jobs deferred before migration 0011).
    ``slot_waits`` counts the times the delivery already waited for a host slot.

    The rows stay locked for the whole attempt: a concurrent cancel waits and then sees
    the outcome, so nothing is both reported cancelled and sent. A crash mid-send rolls
    the transaction back; the stalled job is retried and resends with the same
    idempotency key (at-least-once), and the jobs of the batch it took along run again.
    ``slot_waits``: how often this delivery waited for a host slot before
    (:mod:`notifier.notifications.host_slots`).
    """
    notification = uuid.UUID(notification_id)
    job_id = job.id
    group = JobGroup(tenant_id, job.priority)
    try:
        outcome = await _deliver_once(
            services, notification, job_id, group, slot_taken=False, slot_waits=slot_waits
        )
        if isinstance(outcome, SlotNeeded):
            # The slot is taken in a short transaction of its own, so that the bucket row
            # every worker shares is never locked across a send. Without a free slot a
            # later job takes over the delivery, and this one is done.
            if not await take_send_slot(
                services,
                notification,
                job_id,
                tenant_id=outcome.tenant_id,
                channel=outcome.channel,
                limit=outcome.limit,
            ):
                return
            outcome = await _deliver_once(
                services, notification, job_id, group, slot_taken=True, slot_waits=slot_waits
            )
    except Exception as exc:
        await _note_unexpected_error(services, notification, exc)
        raise
    if isinstance(outcome, RetryLater):
        # Raised after _deliver_once committed, so the attempt stays recorded.
        raise outcome


async def _deliver_once(
    services: Services,
    notification_id: uuid.UUID,
    job_id: int | None,
    group: JobGroup,
    *,
    slot_taken: bool,
    slot_waits: int,
) -> RetryLater | SlotNeeded | None:
    """One delivery transaction: this job's notification and, unless its channel is rate
    limited, a batch of other due ones whose jobs wait in the job's ``group``
    (``NOTIFIER_DELIVERY_BATCH_SIZE``): a batch is one tenant's turn.

    Taking them along saves each its own fetch, transaction and finish; their sends run
    concurrently. Their jobs are settled in the same transaction: succeeded, or due again
    at their retry time; those that waited for a host slot are handed back untouched.
    Returns what becomes of this job.
    """
    settings = services.settings
    async with transaction(services.pool) as conn:
        row = await queries.lock_for_delivery(conn, notification_id)
        if row is None or row["status"] != NotificationStatus.PENDING:
            logger.info(
                "notification %s is %s; not sending",
                notification_id,
                row["status"] if row else "gone",
            )
            return None
        now = datetime.datetime.now(datetime.UTC)
        if not await _still_to_send(services, conn, [row], now):
            return None
        limit = _rate_limit(settings, row)
        if limit is not None and not slot_taken:
            return SlotNeeded(row["tenant_id"], row["rate_bucket"], limit)
        batch = [(row, job_id)]
        taken_along: list[dict[str, Any]] = []
        if limit is None and settings.delivery_batch_size > 1:
            taken_along = await queries.lock_due_deliveries(
                conn,
                task_name=DELIVER_TASK,
                channel=row["channel"],
                tenant_id=group.tenant_id,
                priority=group.priority,
                limit=settings.delivery_batch_size - 1,
            )
            still_due = await _still_to_send(services, conn, taken_along, now)
            batch += [(other, other["batch_job_id"]) for other in still_due]
        sources: TemplateCache = {}
        drafts = [await _prepare(services, conn, row, job_id, sources) for row, job_id in batch]
        attempts, results = await _render_and_send_all(services, conn, drafts)
        outcomes = [
            None if isinstance(result, HostBusy) else _outcome(services, attempt, result, now)
            for attempt, result in zip(attempts, results, strict=True)
        ]
        records = [outcome[0] for outcome in outcomes if outcome]
        await queries.record_attempts(conn, records)
        await note_endpoint_attempts(conn, [(r["endpoint_id"], r["outcome"]) for r in records])
        waiting = [
            host_slots.Waiting(attempt.row, attempt.job_id, result.origin, own=index == 0)
            for index, (attempt, result) in enumerate(zip(attempts, results, strict=True))
            if isinstance(result, HostBusy)
        ]
        if waiting:
            await host_slots.put_off(services, conn, waiting, own_waits=slot_waits)
        if taken_along:
            await _settle_jobs_taken_along(conn, taken_along, attempts[1:], outcomes[1:])
        return outcomes[0][1] if outcomes[0] else None


async def _settle_jobs_taken_along(
    conn: Connection,
    taken_along: list[dict[str, Any]],
    attempts: list[Attempt],
    outcomes: list[tuple[queries.AttemptRecord, RetryLater | None] | None],
) -> None:
    """Finish the jobs of the notifications a batch took along, but for those to retry:
    those become due again after their backoff, as a job of their own would have. Those
    without an outcome waited for a host slot: their jobs were put off already."""
    now = datetime.datetime.now(datetime.UTC)
    retry_at = {
        attempt.job_id: now + datetime.timedelta(seconds=outcome[1].delay_seconds)
        for attempt, outcome in zip(attempts, outcomes, strict=True)
        if outcome is not None and outcome[1] is not None and attempt.job_id is not None
    }
    waited = {
        attempt.job_id for attempt, outcome in zip(attempts, outcomes, strict=True) if not outcome
    }
    finished = [
        row["batch_job_id"]
        for row in taken_along
        if row["batch_job_id"] not in retry_at and row["batch_job_id"] not in waited
    ]
    await jobs.finish_jobs(conn, finished)
    await jobs.reschedule_jobs(conn, retry_at)


async def _still_to_send(
    services: Services, conn: Connection, rows: list[dict[str, Any]], now: datetime.datetime
) -> list[dict[str, Any]]:
    """Those of the (locked, pending) notifications still to be sent; the others are marked
    expired or suppressed here, or held or failed by their endpoint. Webhooks among them
    get their target (URL, signing secrets, headers)."""
    in_time = []
    for row in rows:
        if _too_late(row, now):
            await queries.set_status(
                conn,
                row["id"],
                NotificationStatus.EXPIRED,
                last_error="target date passed before delivery",
            )
        else:
            in_time.append(row)
    # After scheduling, the recipient may have opted out: never sent, no attempt made.
    reasons = await suppression_reasons(conn, in_time)
    for notification_id, reason in reasons.items():
        await queries.set_status(
            conn, notification_id, NotificationStatus.SUPPRESSED, last_error=reason
        )
        logger.info("notification %s not sent: %s", notification_id, reason)
    unsuppressed = [row for row in in_time if row["id"] not in reasons]
    return await route_webhooks(conn, services, unsuppressed)


def _rate_limit(settings: Settings, row: dict[str, Any]) -> Limit | None:
    """The limit on sending ``row`` (read by lock_for_delivery), if any."""
    override = None
    if row["rate_per_second"] is not None:
        override = (row["rate_per_second"], row["rate_burst"])
    return limit_for(settings, override, row["channel"])


async def _note_unexpected_error(
    services: Services, notification_id: uuid.UUID, exc: Exception
) -> None:
    """Show an unexpected failure on the notification; the job's own retry does the rest."""
    try:
        async with transaction(services.pool) as conn:
            await queries.note_error(conn, notification_id, f"unexpected error: {exc!r}")
    except psycopg.Error:  # PoolTimeout included
        # The database itself is the likely cause; the job is retried either way.
        logger.warning("could not record the error of notification %s", notification_id)


async def _prepare(
    services: Services,
    conn: Connection,
    row: dict[str, Any],
    job_id: int | None,
    sources: TemplateCache,
) -> Draft:
    """What ``row``'s message renders from, or why it cannot be sent."""
    attempt = row["attempts"] + 1
    channel = services.channel(row["channel"])
    label = row["channel"] if channel is not None else "unconfigured"
    if channel is None:
        unconfigured = f"channel {row['channel']!r} is not configured"
        return Draft(row, job_id, attempt, None, label, unconfigured, None)
    if (problem := channel.validate_recipient(row["recipient"])) is not None:
        return Draft(row, job_id, attempt, channel, label, f"recipient {problem}", None)
    # The same link goes to the template (to show) and the channel (email headers).
    unsubscribe_link = _unsubscribe_link(row, services.settings)
    content = await _to_render(conn, row, unsubscribe_link, sources)
    return Draft(row, job_id, attempt, channel, label, content, unsubscribe_link)


async def _render_and_send_all(
    services: Services, conn: Connection, drafts: list[Draft]
) -> tuple[list[Attempt], list[SendResult]]:
    """Render every message of the batch in the template sandboxes (one request per
    tenant) and send each as soon as its own render is done, concurrently; webhooks within
    the cap of requests in flight to their host (:mod:`notifier.notifications.host_slots`).

    A slow template of another tenant taken along in the batch does not hold this one's
    message back. The first is this job's own, already in the job's span; the others get
    a span each that continues the trace their notification was created in.
    """
    to_render = [draft.content for draft in drafts if isinstance(draft.content, ToRender)]
    renders = iter(services.renderer.render_many(to_render))
    pending = [next(renders) if isinstance(d.content, ToRender) else None for d in drafts]
    attempts: list[Attempt | None] = [None] * len(drafts)
    results: list[SendResult] = [None] * len(drafts)

    async def prepare(index: int) -> None:
        attempts[index] = await _attempt(drafts[index], pending[index])

    async def send(index: int) -> None:
        attempt = attempts[index]
        assert attempt is not None, "prepared before it is sent"
        if attempt.channel is None or isinstance(attempt.message, str):
            return
        with _span_for_batched(attempt) if index else contextlib.nullcontext():
            try:
                results[index] = await attempt.channel.send(attempt.message)
            except DeliveryError as exc:
                results[index] = exc

    settings = services.settings
    # Webhooks whose host is capped; a draft that already failed needs no slot.
    capped = {
        index: origin_of(draft.row["recipient"])
        for index, draft in enumerate(drafts)
        if settings.webhook_max_in_flight_per_host
        and draft.channel is not None
        and draft.channel.name == WebhookChannel.name
        and not isinstance(draft.content, str)
    }

    async def prepare_and_send(index: int) -> None:
        await prepare(index)
        await send(index)

    async def send_capped() -> None:
        # Rendered first, so that a host slot is held only while sending.
        await asyncio.gather(*(prepare(index) for index in capped))
        sendable = {}
        for index, origin in capped.items():
            attempt = attempts[index]
            if attempt is not None and not isinstance(attempt.message, str):
                sendable[index] = origin
        unsent = await host_slots.send_within_host_caps(
            conn,
            sendable,
            send,
            cap=settings.webhook_max_in_flight_per_host,
            budget_seconds=settings.webhook_timeout_seconds,
        )
        for index, origin in unsent.items():
            results[index] = HostBusy(origin)

    # Anything but a DeliveryError or a template problem is unexpected (the sandbox
    # unavailable included): the group cancels the other sends and the transaction rolls
    # back, as when a worker crashes mid-send; the job is retried.
    try:
        async with asyncio.TaskGroup() as group:
            for index in range(len(drafts)):
                if index not in capped:
                    group.create_task(prepare_and_send(index))
            if capped:
                group.create_task(send_capped())
    except ExceptionGroup as errors:
        raise errors.exceptions[0] from None  # as one send on its own would have raised it
    finally:
        for render in pending:
            _abandon(render)
    done = [attempt for attempt in attempts if attempt is not None]
    assert len(done) == len(drafts), "every send task made its attempt"
    return done, results


async def _attempt(draft: Draft, render: asyncio.Future[RenderedMessage] | None) -> Attempt:
    """The draft with its rendered message, or with why it cannot be sent."""
    row, job_id, number, channel, label, content, link = draft
    if render is None:
        assert isinstance(content, str)
        return Attempt(row, job_id, number, channel, label, content)
    assert isinstance(content, ToRender)
    try:
        rendered = await render
    except TemplateProblem as exc:
        # Fails the same way on every attempt (syntax, a missing variable, over budget).
        problem = f"template {content.source.name!r}: {exc}"
        return Attempt(row, job_id, number, channel, label, problem)
    return Attempt(row, job_id, number, channel, label, _message(row, number, rendered, link))


def _abandon(render: asyncio.Future[RenderedMessage] | None) -> None:
    """Let the sandbox skip a render nobody waits for any more, and mark an error nobody
    will read as read (asyncio would log it)."""
    if render is None:
        return
    if not render.done():
        render.cancel()
    elif not render.cancelled():
        render.exception()


def _span_for_batched(attempt: Attempt) -> contextlib.AbstractContextManager[Any]:
    if not tracing_enabled():
        return contextlib.nullcontext()
    row = attempt.row
    return tracer.start_as_current_span(
        "deliver",
        context=context_from_traceparent(row["traceparent"]),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "procrastinate",
            "messaging.operation.type": "process",
            "messaging.message.id": str(attempt.job_id),
            "notifier.task": DELIVER_TASK,
            "notifier.notification.id": str(row["id"]),
            "notifier.batched": True,
        },
    )


def _outcome(
    services: Services,
    attempt: Attempt,
    result: DeliveryReceipt | DeliveryError | None,
    started_at: datetime.datetime,
) -> tuple[queries.AttemptRecord, RetryLater | None]:
    """What to record of the attempt, and when to try again (None: never); counted and logged."""
    row = attempt.row
    retry: RetryLater | None = None
    status_code: int | None = None
    error: str | None = None
    duration_ms: int | None = None
    answer = b""
    if isinstance(result, DeliveryReceipt | DeliveryError):
        duration_ms, answer = result.duration_ms, result.answer
    if isinstance(attempt.message, str):
        outcome, status, error = "failed", NotificationStatus.FAILED, attempt.message
        services.metrics.count_delivery(attempt.channel_label, "failed")
        logger.warning("notification %s failed permanently: %s", row["id"], error)
    elif isinstance(result, DeliveryError):
        status_code, error = result.status_code, str(result)
        if not result.retryable or attempt.number >= services.settings.delivery_max_attempts:
            outcome = "failed"
            status = NotificationStatus.DEAD if result.retryable else NotificationStatus.FAILED
            services.metrics.count_delivery(attempt.channel_label, str(status))
            logger.warning(
                "notification %s is %s after attempt %d: %s",
                row["id"],
                status,
                attempt.number,
                error,
            )
        else:
            outcome, status = "retry", None
            delay = retry_delay(services.settings, attempt.number, result.retry_after_seconds)
            delay = retry_outside_quiet_hours(row, delay)
            retry = RetryLater(error, delay_seconds=delay)
            services.metrics.count_delivery(attempt.channel_label, "retry")
            logger.info(
                "notification %s attempt %d failed (%s); retry in %.1fs",
                row["id"],
                attempt.number,
                error,
                delay,
            )
    else:
        assert result is not None, "a sendable message was sent"
        outcome, status, status_code = "delivered", NotificationStatus.SENT, result.status_code
        lag = datetime.datetime.now(datetime.UTC) - row["send_at"]
        services.metrics.count_delivery(attempt.channel_label, "delivered", lag.total_seconds())
        logger.info("notification %s sent on attempt %d", row["id"], attempt.number)
    record = queries.AttemptRecord(
        notification_id=row["id"],
        attempt=attempt.number,
        job_id=attempt.job_id,
        channel=row["channel"],
        outcome=outcome,
        started_at=started_at,
        status_code=status_code,
        error=error,
        status=status,
        endpoint_id=row["endpoint_id"],
        duration_ms=duration_ms,
        # Kept for an endpoint's attempt log only (a bare URL has no log to show it in).
        answer=_answer_text(answer) if answer and row["endpoint_id"] else None,
    )
    return record, retry


def _answer_text(answer: bytes) -> str:
    """The start of an answer as text PostgreSQL can store (no NUL)."""
    return answer.decode(errors="replace").replace("\x00", "\ufffd")
