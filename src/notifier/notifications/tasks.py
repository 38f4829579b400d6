"""The ``deliver`` task: send one notification, once, and record what happened."""

from __future__ import annotations

import datetime
import logging
import uuid
from typing import Any

import procrastinate
import psycopg

from notifier.channels.base import DeliveryError, OutgoingMessage
from notifier.db import Connection, transaction
from notifier.notifications import queries
from notifier.notifications.scheduling import retry_outside_quiet_hours
from notifier.notifications.schemas import NotificationStatus
from notifier.preferences.links import unsubscribe_url
from notifier.preferences.suppression import suppression_reason
from notifier.queue import DELIVER_TASK, DELIVERIES_QUEUE, RetryLater, backoff_seconds
from notifier.rate_limits.limiter import take_send_slot
from notifier.services import Services, services_from_context
from notifier.settings import Settings
from notifier.templates import catalog
from notifier.templates.rendering import RenderedMessage, TemplateProblem, template_context

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
    )


async def _render(
    conn: Connection, row: dict[str, Any], unsubscribe_link: str | None
) -> RenderedMessage | str:
    """The notification's rendered template, or why it cannot render.

    A template that is missing, does not compile or uses a variable the payload lacks
    fails the same way on every attempt: the caller fails the notification permanently.
    """
    try:
        source = await catalog.template_for(
            conn, row["tenant_id"], row["template"], row["notification_type"]
        )
    except catalog.TemplateNotFound as exc:
        return str(exc)
    context = template_context(
        row["context"],
        notification_id=str(row["id"]),
        notification_type=row["notification_type"],
        recipient=row["recipient"],
        entity_id=row["entity_id"],
        target_date=row["target_date"],
        lead_time=row["lead_time"],
        channel=row["channel"],
        unsubscribe_url=unsubscribe_link,
    )
    try:
        return catalog.renderer().render(source, context)
    except TemplateProblem as exc:
        return f"template {source.name!r}: {exc}"


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


async def deliver(context: procrastinate.JobContext, notification_id: str) -> None:
    """Send a pending notification through its channel.

    The row stays locked for the whole attempt: a concurrent cancel waits and then sees
    the outcome, so nothing is both reported cancelled and sent. A crash mid-send rolls
    the transaction back; the stalled job is retried and resends with the same
    idempotency key (at-least-once).
    """
    services = services_from_context(context)
    notification = uuid.UUID(notification_id)
    try:
        # The channel's rate limit, in a short transaction of its own. Without a free slot
        # a later job takes over the delivery, and this one is done.
        if not await take_send_slot(services, notification, context.job.id):
            return
        retry = await _deliver_once(services, notification, context.job.id)
    except Exception as exc:
        await _note_unexpected_error(services, notification, exc)
        raise
    if retry is not None:
        # Raised after _deliver_once committed, so the attempt stays recorded.
        raise retry


async def _deliver_once(
    services: Services, notification_id: uuid.UUID, job_id: int | None
) -> RetryLater | None:
    async with transaction(services.pool) as conn:
        row = await queries.lock_notification(conn, notification_id, tenant_id=None)
        if row is None or row["status"] != NotificationStatus.PENDING:
            logger.info(
                "notification %s is %s; not sending",
                notification_id,
                row["status"] if row else "gone",
            )
            return None
        now = datetime.datetime.now(datetime.UTC)
        if _too_late(row, now):
            await queries.set_status(
                conn,
                row["id"],
                NotificationStatus.EXPIRED,
                last_error="target date passed before delivery",
            )
            return None
        # After scheduling, the recipient may have opted out: never sent, no attempt made.
        if (reason := await suppression_reason(conn, row)) is not None:
            await queries.set_status(
                conn, row["id"], NotificationStatus.SUPPRESSED, last_error=reason
            )
            logger.info("notification %s not sent: %s", row["id"], reason)
            return None
        return await _attempt(services, conn, row, job_id, now)


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


async def _attempt(
    services: Services,
    conn: Connection,
    row: dict[str, Any],
    job_id: int | None,
    started_at: datetime.datetime,
) -> RetryLater | None:
    attempt = row["attempts"] + 1
    record = {
        "notification_id": row["id"],
        "attempt": attempt,
        "job_id": job_id,
        "channel": row["channel"],
        "started_at": started_at,
    }
    channel = services.channel(row["channel"])
    # Label by configured channel names only: a row's channel is data and could be anything.
    channel_label = row["channel"] if channel is not None else "unconfigured"
    # The same link goes to the template (to show) and the channel (email headers).
    unsubscribe_link = _unsubscribe_link(row, services.settings)
    # The rendered message, or why this notification can never be sent.
    rendered: RenderedMessage | str
    if channel is None:
        rendered = f"channel {row['channel']!r} is not configured"
    elif (problem := channel.validate_recipient(row["recipient"])) is not None:
        rendered = f"recipient {problem}"
    else:
        rendered = await _render(conn, row, unsubscribe_link)
    if channel is None or isinstance(rendered, str):
        error = str(rendered)  # without a channel nothing was rendered: always the reason
        await queries.record_attempt(conn, **record, outcome="failed", error=error)
        await queries.set_status(conn, row["id"], NotificationStatus.FAILED)
        services.metrics.count_delivery(channel_label, "failed")
        logger.warning("notification %s failed permanently: %s", row["id"], error)
        return None

    try:
        receipt = await channel.send(_message(row, attempt, rendered, unsubscribe_link))
    except DeliveryError as exc:
        error = str(exc)
        status_code = exc.status_code
        if not exc.retryable or attempt >= services.settings.delivery_max_attempts:
            final = NotificationStatus.DEAD if exc.retryable else NotificationStatus.FAILED
            await queries.record_attempt(
                conn, **record, outcome="failed", status_code=status_code, error=error
            )
            await queries.set_status(conn, row["id"], final)
            services.metrics.count_delivery(channel_label, str(final))
            logger.warning(
                "notification %s is %s after attempt %d: %s", row["id"], final, attempt, error
            )
            return None
        await queries.record_attempt(
            conn, **record, outcome="retry", status_code=status_code, error=error
        )
        delay = retry_delay(services.settings, attempt, exc.retry_after_seconds)
        delay = retry_outside_quiet_hours(row, delay)
        services.metrics.count_delivery(channel_label, "retry")
        logger.info(
            "notification %s attempt %d failed (%s); retry in %.1fs",
            row["id"],
            attempt,
            error,
            delay,
        )
        return RetryLater(error, delay_seconds=delay)

    await queries.record_attempt(
        conn, **record, outcome="delivered", status_code=receipt.status_code, error=None
    )
    await queries.set_status(conn, row["id"], NotificationStatus.SENT)
    lag = datetime.datetime.now(datetime.UTC) - row["send_at"]
    services.metrics.count_delivery(channel_label, "delivered", lag.total_seconds())
    logger.info("notification %s sent on attempt %d", row["id"], attempt)
    return None


def register(queue: procrastinate.App, retry: procrastinate.BaseRetryStrategy) -> None:
    """Add this module's tasks to ``queue``."""
    queue.task(name=DELIVER_TASK, queue=DELIVERIES_QUEUE, pass_context=True, retry=retry)(deliver)
