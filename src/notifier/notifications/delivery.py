"""Delivering due notifications: lock a batch, decide, render, send through the channels,
settle. The ``deliver`` task (:mod:`notifier.notifications.tasks`) runs :func:`deliver`.

What is decided, from the rows alone, lives in :mod:`notifier.notifications.decisions`;
this module reads and writes the rows and jobs, renders, sends, counts and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import uuid
from typing import Any, NamedTuple

import msgspec
import psycopg

from notifier.channels.base import Channel, DeliveryError, DeliveryReceipt, OutgoingMessage
from notifier.channels.egress import origin_of
from notifier.channels.log import LogChannel
from notifier.channels.webhook import WebhookChannel
from notifier.db import Connection, transaction
from notifier.endpoints.delivery import note_endpoint_attempts, route_webhooks
from notifier.notifications import host_slots, queries
from notifier.notifications.decisions import (
    QuietWindow,
    RetryPolicy,
    Verdict,
    expiry_at_delivery,
    judge_attempt,
    settle_jobs_taken_along,
)
from notifier.notifications.host_slots import HostBusy
from notifier.notifications.queries import DeliveryRow, LockedDelivery
from notifier.notifications.scheduling import defer_delivery
from notifier.notifications.schemas import AttemptOutcome, NotificationStatus
from notifier.preferences.links import unsubscribe_url
from notifier.preferences.suppression import suppression_reasons
from notifier.queue import DELIVER_TASK, DELIVERIES_QUEUE, jobs
from notifier.queue.retry import RetryLater
from notifier.rate_limits.gcra import Limit
from notifier.rate_limits.limiter import limit_in_force, take_send_slot
from notifier.services import Services
from notifier.settings import Settings
from notifier.telemetry.tracing import consumer_span
from notifier.templates import catalog
from notifier.templates.messages import (
    MessageFields,
    RenderedMessage,
    TemplateProblem,
    TemplateSource,
)
from notifier.templates.pool import ToRender

logger = logging.getLogger("notifier.delivery")


class JobGroup(NamedTuple):
    """The jobs a deliver job's batch is taken from: its tenant's (None: jobs deferred
    before migration 0011) at its priority, as the fetch groups them, behind ``after`` (the
    deliver job's own place in the group) when given."""

    tenant_id: str | None
    priority: int
    after: jobs.JobPosition | None = None


class Draft(NamedTuple):
    """One notification of a batch before its template is rendered."""

    row: DeliveryRow
    job_id: int | None
    number: int
    channel: Channel | None
    channel_label: str
    # What its template renders from, or why this notification can never be sent.
    content: ToRender | str
    unsubscribe_link: str | None


class Attempt(NamedTuple):
    """One notification of a batch, ready to send or known to be unsendable."""

    row: DeliveryRow
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

# Template sources of one batch by (tenant, template, type, with the HTML part), or why
# there is none.
TemplateCache = dict[tuple[str, str | None, str, bool], TemplateSource | str]


async def deliver(
    services: Services,
    notification_id: uuid.UUID,
    *,
    job_id: int | None,
    group: JobGroup,
    slot_waits: int = 0,
) -> None:
    """Send a pending notification through its channel, with other due ones of its channel
    whose jobs wait in ``group``; ``job_id`` is the job running this delivery.
    ``slot_waits`` counts the times the delivery already waited for a host slot
    (:mod:`notifier.notifications.host_slots`).

    The rows stay locked for the whole attempt: a concurrent cancel waits and then sees
    what came of it, so nothing is both reported cancelled and sent. A crash mid-send rolls
    the transaction back; the stalled job is retried and resends with the same
    idempotency key (at-least-once), and the jobs of the batch it took along run again.
    Raises :class:`RetryLater` after committing an attempt to retry, so that the job runs
    again then.
    """
    try:
        retry = await _deliver(services, notification_id, job_id, group, slot_waits)
    except Exception as exc:
        await _note_unexpected_error(services, notification_id, exc)
        raise
    if retry is not None:
        raise retry


async def _deliver(
    services: Services,
    notification_id: uuid.UUID,
    job_id: int | None,
    group: JobGroup,
    slot_waits: int,
) -> RetryLater | None:
    """Deliver in one transaction; when the notification's channel is rate limited, take a
    send slot first, in a transaction of its own. Returns the retry of this job, if any."""
    async with transaction(services.pool) as conn:
        row = await _lock_pending(conn, notification_id)
        if row is None:
            return None
        limit = limit_in_force(services.settings, row.channel, row.rate_limit).limit
        if limit is None:
            # Whether it is still to be sent is looked at with the batch's, in one go.
            return await _send_batch(services, conn, LockedDelivery(row, job_id), group, slot_waits)
        now = datetime.datetime.now(datetime.UTC)
        if not await _still_to_send(services, conn, [LockedDelivery(row, None)], now):
            return None
        if not await _take_slot_or_hand_over(conn, row, job_id, limit):
            return None
    # The slot's transaction has committed: the bucket row every worker shares is never
    # locked across a send. The notification may have been cancelled meanwhile: look again.
    async with transaction(services.pool) as conn:
        row = await _lock_pending(conn, notification_id)
        if row is None:
            return None
        # A rate-limited delivery sends its own notification only: each takes its slot.
        return await _send_batch(services, conn, LockedDelivery(row, job_id), None, slot_waits)


async def _lock_pending(conn: Connection, notification_id: uuid.UUID) -> DeliveryRow | None:
    """The job's notification, locked, if it is still pending."""
    row = await queries.lock_for_delivery(conn, notification_id)
    if row is None or row.status != NotificationStatus.PENDING:
        status = row.status if row else "gone"
        logger.info("notification %s is %s; not sending", notification_id, status)
        return None
    return row


async def _take_slot_or_hand_over(
    conn: Connection, row: DeliveryRow, job_id: int | None, limit: Limit
) -> bool:
    """Whether the (locked) notification may be sent now, under ``limit``.

    Without a free slot, a new deliver job is deferred for the slot the bucket hands out and
    becomes the notification's job (for cancel), in the same transaction; this run then
    ends. Waiting for a slot is no delivery attempt, and a new job rather than a retry of
    this one keeps procrastinate's run count, which bounds unexpected failures, free of
    waits. A slot taken for a notification that is then cancelled is lost, which errs on
    the side of the provider's quota.
    """
    slot = await take_send_slot(conn, row.tenant_id, row.rate_bucket or row.channel, limit)
    if slot is None:
        return True
    new_job = await defer_delivery(conn, row.id, slot, tenant_id=row.tenant_id)
    await queries.hand_over_job(conn, row.id, job_id, new_job)
    return False


async def _send_batch(
    services: Services,
    conn: Connection,
    own: LockedDelivery,
    group: JobGroup | None,
    slot_waits: int,
) -> RetryLater | None:
    """Send the job's own (locked, pending) notification and, with a ``group``, a batch of
    other due ones of its channel whose jobs wait there (:func:`batch_size`): a batch is one
    tenant's turn. Those no longer to be sent (expired, suppressed, held) are settled first,
    the job's own included.

    Taking them along saves each its own fetch, transaction and finish; their sends run
    concurrently. Their jobs are settled in the same transaction: succeeded, or due again
    at their retry time; those that waited for a host slot are handed back untouched.
    """
    now = datetime.datetime.now(datetime.UTC)
    taken_along: list[LockedDelivery] = []
    size = batch_size(services, own.notification.channel)
    if group is not None and size > 1:
        taken_along = await queries.lock_due_deliveries(
            conn,
            task_name=DELIVER_TASK,
            channel=own.notification.channel,
            tenant_id=group.tenant_id,
            priority=group.priority,
            limit=size - 1,
            after=group.after,
        )
    # One look for the whole batch (expiry, suppression, endpoints): a statement each, not
    # one each for the job's own notification and again for the others.
    batch = await _still_to_send(services, conn, [own, *taken_along], now)
    # The job's own comes first if it is still to be sent; the others are all taken along.
    with_own = bool(batch) and batch[0].notification.id == own.notification.id
    sources: TemplateCache = {}
    drafts = [await _prepare(services, conn, locked, sources) for locked in batch]
    attempts, results = await _render_and_send_all(services, conn, drafts)
    # One clock reading and policy for the batch's verdicts: its sends are all done.
    policy = RetryPolicy.from_settings(services.settings)
    judged_at = datetime.datetime.now(datetime.UTC)
    verdicts = [
        None
        if isinstance(result, HostBusy)
        else _judge(services, attempt, result, policy=policy, now=judged_at)
        for attempt, result in zip(attempts, results, strict=True)
    ]
    records = [
        _attempt_record(attempt, verdict, result, started_at=now)
        for attempt, verdict, result in zip(attempts, verdicts, results, strict=True)
        if verdict is not None
    ]
    await queries.record_attempts(conn, records)
    await note_endpoint_attempts(conn, [(r.endpoint_id, r.outcome) for r in records])
    waiting = [
        host_slots.Waiting(attempt.row, attempt.job_id, result.origin, own=with_own and index == 0)
        for index, (attempt, result) in enumerate(zip(attempts, results, strict=True))
        if isinstance(result, HostBusy)
    ]
    if waiting:
        await host_slots.put_off(services, conn, waiting, own_waits=slot_waits)
    others = 1 if with_own else 0
    if taken_along:
        settlement = settle_jobs_taken_along(
            [locked.job_id for locked in taken_along if locked.job_id is not None],
            {
                attempt.job_id: verdict
                for attempt, verdict in zip(attempts[others:], verdicts[others:], strict=True)
                if attempt.job_id is not None
            },
            datetime.datetime.now(datetime.UTC),
        )
        await jobs.finish_jobs(
            conn, settlement.finished, delete=not services.settings.keep_succeeded_jobs
        )
        await jobs.reschedule_jobs(conn, settlement.due_again)
    own_verdict = verdicts[0] if with_own else None
    if own_verdict is None or own_verdict.retry_in_seconds is None:
        return None
    # Raised by the task after this transaction committed, so the attempt stays recorded.
    return RetryLater(own_verdict.error or "", delay_seconds=own_verdict.retry_in_seconds)


def batch_size(services: Services, channel_name: str) -> int:
    """How many notifications of ``channel_name`` one deliver job sends at most.

    Webhooks and logs: ``NOTIFIER_DELIVERY_BATCH_SIZE``. A webhook batch holds at most
    :data:`~notifier.notifications.host_slots.MAX_SLOTS_PER_BATCH` host slots (advisory
    locks) however large it is. Email and SMS send each message on a connection of its own,
    at most a few per process (``MAX_CONNECTIONS`` of each channel): a batch larger than
    ``NOTIFIER_DELIVERY_CONNECTION_BATCH_SIZE`` would only keep its rows and jobs locked
    longer while its messages wait for a connection.
    """
    settings = services.settings
    channel = services.channel(channel_name)
    if isinstance(channel, WebhookChannel | LogChannel):
        return settings.delivery_batch_size
    return min(settings.delivery_batch_size, settings.delivery_connection_batch_size)


async def _still_to_send(
    services: Services, conn: Connection, batch: list[LockedDelivery], now: datetime.datetime
) -> list[LockedDelivery]:
    """Those of the (locked, pending) notifications still to be sent; the others are marked
    expired (saying why, counted) or suppressed here, or held or failed by their endpoint.
    Webhooks among them get their target (URL, signing secrets, headers)."""
    grace = datetime.timedelta(seconds=services.settings.expiry_grace_seconds)
    in_time = []
    for locked in batch:
        row = locked.notification
        expiry = expiry_at_delivery(
            target_date=row.target_date,
            lead_time=row.lead_time,
            accepted_at=row.created_at or now,
            expires_at=row.expires_at,
            now=now,
            grace=grace,
        )
        if expiry is not None:
            expiry_reason, why = expiry
            await queries.set_status(conn, row.id, NotificationStatus.EXPIRED, last_error=why)
            services.metrics.count_expired([expiry_reason])
            logger.warning("notification %s expired: %s", row.id, why)
        else:
            in_time.append(locked)
    # After scheduling, the recipient may have opted out: never sent, no attempt made.
    reasons = await suppression_reasons(conn, [locked.notification for locked in in_time])
    for notification_id, reason in reasons.items():
        await queries.set_status(
            conn, notification_id, NotificationStatus.SUPPRESSED, last_error=reason
        )
        logger.info("notification %s not sent: %s", notification_id, reason)
    unsuppressed = [locked for locked in in_time if locked.notification.id not in reasons]
    return await route_webhooks(conn, services, unsuppressed)


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


def unsubscribe_link(row: DeliveryRow, settings: Settings) -> str | None:
    """The notification's one-click unsubscribe URL, or None when links are off."""
    return unsubscribe_url(
        settings,
        tenant_id=row.tenant_id,
        recipient=row.recipient,
        channel=row.channel,
        notification_type=row.notification_type,
    )


def outgoing_message(
    row: DeliveryRow, attempt: int, content: RenderedMessage, unsubscribe_link: str | None
) -> OutgoingMessage:
    """What the channel sends for attempt number ``attempt`` of ``row``."""
    return OutgoingMessage(
        notification_id=row.id,
        notification_type=row.notification_type,
        recipient=row.recipient,
        attempt=attempt,
        event_id=row.event_id,
        entity_id=row.entity_id,
        target_date=row.target_date,
        template=row.template,
        context=row.context,
        unsubscribe_url=unsubscribe_link,
        subject=content.subject,
        text=content.text,
        html=content.html,
        webhook=row.webhook,
    )


async def _to_render(
    conn: Connection,
    row: DeliveryRow,
    unsubscribe_link: str | None,
    sources: TemplateCache,
    *,
    html: bool,
) -> ToRender | str:
    """What the notification's template renders from, or why there is no template;
    without its HTML part unless ``html`` (the channel sends it).

    A missing template fails the same way on every attempt: the caller fails the
    notification permanently. ``sources`` keeps the templates found for the batch,
    looked up once each.
    """
    key = (row.tenant_id, row.template, row.notification_type, html)
    if key not in sources:
        try:
            found = await catalog.template_for(conn, *key[:3])
        except catalog.TemplateNotFound as exc:
            sources[key] = str(exc)
        else:
            # Rendered for nothing otherwise (webhooks, SMS), and a broken HTML part would
            # fail a message that never carries it.
            sources[key] = found if html else msgspec.structs.replace(found, html_body=None)
    source = sources[key]
    if isinstance(source, str):
        return source
    fields = MessageFields(
        notification_id=str(row.id),
        notification_type=row.notification_type,
        recipient=row.recipient,
        entity_id=row.entity_id,
        target_date=row.target_date,
        lead_time=row.lead_time,
        channel=row.channel,
        unsubscribe_url=unsubscribe_link,
    )
    return ToRender(row.tenant_id, source, row.context, fields)


async def _prepare(
    services: Services, conn: Connection, locked: LockedDelivery, sources: TemplateCache
) -> Draft:
    """What the notification's message renders from, or why it cannot be sent."""
    row, job_id = locked.notification, locked.job_id
    attempt = row.attempts + 1
    channel = services.channel(row.channel)
    label = row.channel if channel is not None else "unconfigured"
    if channel is None:
        unconfigured = f"channel {row.channel!r} is not configured"
        return Draft(row, job_id, attempt, None, label, unconfigured, None)
    if (problem := channel.validate_recipient(row.recipient)) is not None:
        return Draft(row, job_id, attempt, channel, label, f"recipient {problem}", None)
    # The same link goes to the template (to show) and the channel (email headers).
    link = unsubscribe_link(row, services.settings)
    content = await _to_render(conn, row, link, sources, html=channel.sends_html)
    return Draft(row, job_id, attempt, channel, label, content, link)


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
        with span_for_batched(attempt) if index else contextlib.nullcontext():
            try:
                results[index] = await attempt.channel.send(attempt.message)
            except DeliveryError as exc:
                results[index] = exc

    settings = services.settings
    # Webhooks whose host is capped; a draft that already failed needs no slot. A batch's
    # webhooks mostly share a URL: each parsed once.
    origins: dict[str, str] = {}
    capped: dict[int, str] = {}
    for index, draft in enumerate(drafts):
        if (
            settings.webhook_max_in_flight_per_host
            and draft.channel is not None
            and draft.channel.name == WebhookChannel.name
            and not isinstance(draft.content, str)
        ):
            url = draft.row.recipient
            if url not in origins:
                origins[url] = origin_of(url)
            capped[index] = origins[url]

    async def prepare_and_send(index: int) -> None:
        await prepare(index)
        await send(index)

    async def send_capped() -> None:
        # Rendered first, so that a host slot is held only while sending.
        await _renders_done([pending[index] for index in capped])
        for index in capped:
            attempts[index] = _attempt_rendered(drafts[index], pending[index])
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
    if render is not None:
        with contextlib.suppress(Exception):
            await render  # what it raised, _attempt_rendered raises or reports
    return _attempt_rendered(draft, render)


async def _renders_done(renders: list[asyncio.Future[RenderedMessage] | None]) -> None:
    """Wait until every render is done, as futures: a task per notification cost more."""
    waiting = [render for render in renders if render is not None and not render.done()]
    if waiting:
        await asyncio.wait(waiting)


def _attempt_rendered(draft: Draft, render: asyncio.Future[RenderedMessage] | None) -> Attempt:
    """:func:`_attempt` once the render, if any, is done; raises what the render raised
    but a template's problem."""
    row, job_id, number, channel, label, content, link = draft
    if render is None:
        assert isinstance(content, str)
        return Attempt(row, job_id, number, channel, label, content)
    assert isinstance(content, ToRender)
    try:
        rendered = render.result()
    except TemplateProblem as exc:
        # Fails the same way on every attempt (syntax, a missing variable, over budget).
        problem = f"template {content.source.name!r}: {exc}"
        return Attempt(row, job_id, number, channel, label, problem)
    message = outgoing_message(row, number, rendered, link)
    return Attempt(row, job_id, number, channel, label, message)


def _abandon(render: asyncio.Future[RenderedMessage] | None) -> None:
    """Let the sandbox skip a render nobody waits for any more, and mark an error nobody
    will read as read (asyncio would log it)."""
    if render is None:
        return
    if not render.done():
        render.cancel()
    elif not render.cancelled():
        render.exception()


def span_for_batched(attempt: Attempt) -> contextlib.AbstractContextManager[Any]:
    """The span of a notification taken along in a batch: its own job never runs, so the
    batch starts the span the job would have had, in the trace the notification was
    created in."""
    return consumer_span(
        DELIVER_TASK,
        job_id=attempt.job_id,
        queue=DELIVERIES_QUEUE,
        traceparent=attempt.row.traceparent,
        acting_on={"notification_id": attempt.row.id},
        batched=True,
    )


def _judge(
    services: Services,
    attempt: Attempt,
    result: DeliveryReceipt | DeliveryError | None,
    *,
    policy: RetryPolicy,
    now: datetime.datetime,
) -> Verdict:
    """The verdict on one attempt at ``now``, counted and logged."""
    row = attempt.row
    if isinstance(attempt.message, str):
        sent: DeliveryReceipt | DeliveryError | str = attempt.message
    else:
        assert result is not None, "a sendable message was sent"
        sent = result
    verdict = judge_attempt(
        sent,
        attempt=attempt.number,
        policy=policy,
        window=QuietWindow(row.quiet_hours, row.timezone),
        now=now,
    )
    lag = (
        (now - row.send_at).total_seconds() if verdict.outcome is AttemptOutcome.DELIVERED else None
    )
    services.metrics.count_delivery(attempt.channel_label, verdict.counted_as, lag)
    if isinstance(attempt.message, str):
        logger.warning("notification %s failed permanently: %s", row.id, verdict.error)
    elif verdict.outcome is AttemptOutcome.FAILED:
        logger.warning(
            "notification %s is %s after attempt %d: %s",
            row.id,
            verdict.status,
            attempt.number,
            verdict.error,
        )
    elif verdict.outcome is AttemptOutcome.RETRY:
        logger.info(
            "notification %s attempt %d failed (%s); retry in %.1fs",
            row.id,
            attempt.number,
            verdict.error,
            verdict.retry_in_seconds,
        )
    else:
        logger.info("notification %s sent on attempt %d", row.id, attempt.number)
    return verdict


def _attempt_record(
    attempt: Attempt, verdict: Verdict, result: SendResult, *, started_at: datetime.datetime
) -> queries.AttemptRecord:
    """What :func:`queries.record_attempts` writes of the attempt."""
    duration_ms, answer = None, b""
    if isinstance(result, DeliveryReceipt | DeliveryError):
        duration_ms, answer = result.duration_ms, result.answer
    return queries.AttemptRecord(
        endpoint_id=attempt.row.endpoint_id,
        duration_ms=duration_ms,
        # Kept for an endpoint's attempt log only (a bare URL has no log to show it in).
        answer=_answer_text(answer) if answer and attempt.row.endpoint_id else None,
        notification_id=attempt.row.id,
        attempt=attempt.number,
        job_id=attempt.job_id,
        channel=attempt.row.channel,
        outcome=verdict.outcome,
        started_at=started_at,
        status_code=verdict.status_code,
        error=verdict.error,
        status=verdict.status,
    )


def _answer_text(answer: bytes) -> str:
    """The start of an answer as text PostgreSQL can store (no NUL)."""
    return answer.decode(errors="replace").replace("\x00", "\ufffd")
