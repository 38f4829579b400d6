"""The rate limit holds across three real workers sharing nothing but PostgreSQL."""

from __future__ import annotations

import contextlib
import datetime
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.db import transaction
from notifier.notifications.scheduling import NotificationDraft, PlannedSend, create_notifications
from notifier.notifications.schemas import NotificationStatus
from notifier.rate_limits.gcra import MIN_PER_SECOND
from notifier.services import Services
from notifier.settings import Settings
from tests.notifications.test_delivery import (
    job_of,
    running_worker,
    schedule,
    stamp_arrivals,
)
from tests.support import WebhookReceiver, eventually, wait_for_status

# Measures a rate over three workers: see the `serial` marker.
pytestmark = pytest.mark.serial

PER_SECOND = 5
NOTIFICATIONS = 30


async def schedule_due_now(services: Services, url: str, count: int) -> None:
    """``count`` webhook notifications due now, committed in one transaction."""
    now = datetime.datetime.now(datetime.UTC)
    due = PlannedSend(datetime.timedelta(0), now, NotificationStatus.PENDING)
    drafts = [
        NotificationDraft(
            notification_type="invoice.due",
            entity_id=f"invoice-{n}",
            channel="webhook",
            recipient=url,
            send=due,
            target_date=None,
        )
        for n in range(count)
    ]
    async with transaction(services.pool) as conn:
        await create_notifications(conn, "default", drafts)


def most_in_any_window(times: list[float], seconds: float) -> int:
    """The largest number of ``times`` inside any half-open window ``seconds`` long."""
    ordered = sorted(times)
    return max(
        sum(1 for t in ordered[i:] if t < start + seconds) for i, start in enumerate(ordered)
    )


async def test_three_workers_never_exceed_five_per_second_and_send_everything(
    settings: Settings,
    services: Services,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    arrivals = stamp_arrivals(receiver)
    await schedule_due_now(services, receiver.url, NOTIFICATIONS)

    async with contextlib.AsyncExitStack() as stack:
        for _ in range(3):
            await stack.enter_async_context(
                running_worker(settings, rate_limit_webhook_per_second=float(PER_SECOND))
            )

        async def all_sent() -> bool:
            cursor = await db.execute(
                "SELECT count(*) AS n FROM notifier.notifications WHERE status = 'sent'"
            )
            row = await cursor.fetchone()
            return row is not None and row["n"] == NOTIFICATIONS

        await eventually(all_sent, timeout=30, interval=0.2)

    times = list(arrivals.times)
    assert len(times) == NOTIFICATIONS
    # Sends are spaced 1/5 s apart by the shared bucket (burst 1). Arrivals at the receiver
    # can bunch by the HTTP round trip's jitter, which can let one extra into a window.
    assert most_in_any_window(times, 1.0) <= PER_SECOND + 1
    # Thirty sends at five a second take at least 29 intervals, however many workers.
    assert max(times) - min(times) >= (NOTIFICATIONS - 1) / PER_SECOND - 0.2
    # Waiting for a slot is not a delivery attempt: each notification took exactly one,
    # made by the job the notification names (the one that took over after any waits).
    cursor = await db.execute(
        """
        SELECT count(*) AS n, count(*) FILTER (WHERE a.job_id = n.job_id) AS by_current_job
        FROM notifier.delivery_attempts a JOIN notifier.notifications n ON n.id = a.notification_id
        """
    )
    row = await cursor.fetchone()
    assert row == {"n": NOTIFICATIONS, "by_current_job": NOTIFICATIONS}


async def test_a_notification_waiting_for_its_slot_can_still_be_cancelled(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    limit = await client.put("/api/v1/rate-limits/webhook", json={"per_second": 0.2})
    assert limit.status_code == 200, limit.text
    first = await schedule(client, receiver.url, entity_id="invoice-1")
    await wait_for_status(client, first["id"], "sent")
    second = await schedule(client, receiver.url, entity_id="invoice-2")

    async def handed_over() -> bool:
        # Due now, the notification's job is replaced by one scheduled for its slot, ~5 s on.
        job = await job_of(db, second["id"])
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)
        return bool(job["status"] == "todo" and job["scheduled_at"] > later)

    await eventually(handed_over)
    cancelled = await client.delete(f"/api/v1/notifications/{second['id']}")

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert (await job_of(db, second["id"]))["status"] == "cancelled"
    assert len(receiver.received()) == 1


async def test_deliveries_proceed_under_the_slowest_rate_a_tenant_may_set(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    """A rate of 1e-12 per second was accepted and then made every delivery of the channel
    fail with OverflowError; the slowest rate now allowed sends, then spaces the next."""
    limit = await client.put("/api/v1/rate-limits/webhook", json={"per_second": MIN_PER_SECOND})
    assert limit.status_code == 200, limit.text
    first = await schedule(client, receiver.url, entity_id="invoice-1")
    sent = await wait_for_status(client, first["id"], "sent")
    second = await schedule(client, receiver.url, entity_id="invoice-2")

    async def handed_over() -> bool:
        # The next slot is one interval (1,000 s) after the first send.
        job = await job_of(db, second["id"])
        sent_at = datetime.datetime.fromisoformat(sent["sent_at"])
        slot = sent_at + datetime.timedelta(seconds=1 / MIN_PER_SECOND)
        return bool(
            job["status"] == "todo" and abs((job["scheduled_at"] - slot).total_seconds()) < 5
        )

    await eventually(handed_over)
    assert len(receiver.received()) == 1
    waiting = (await client.get(f"/api/v1/notifications/{second['id']}")).json()
    assert (waiting["status"], waiting["delivery_attempts"]) == ("pending", [])
