"""A deliver job takes other due notifications of its channel along (NOTIFIER_DELIVERY_BATCH_SIZE).

The worker here runs one job at a time, so the first job fetched is the only one that can
take the others; every job it takes along is settled in its transaction.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.trace import SpanKind

from notifier.bootstrap import open_services
from notifier.notifications import delivery
from notifier.settings import Settings
from notifier.telemetry import tracing
from notifier.telemetry.tracing import current_traceparent
from tests.notifications.rows import delivery_row
from tests.notifications.test_delivery import job_of, running_worker, schedule, webhook_id
from tests.preferences.test_api import opt_out
from tests.support import WebhookReceiver, eventually, wait_for_status
from tests.telemetry.test_spans import recording_provider


async def jobs_started(db: psycopg.AsyncConnection[Any]) -> int:
    """How many deliver jobs a worker fetched and ran itself."""
    cursor = await db.execute(
        """
        SELECT count(*) AS started FROM procrastinate_events e
        JOIN procrastinate_jobs j ON j.id = e.job_id
        WHERE e.type = 'started' AND j.task_name = 'notifier.deliver'
        """
    )
    row = await cursor.fetchone()
    assert row is not None
    started: int = row["started"]
    return started


async def schedule_many(client: AsyncTestClient[Any], url: str, count: int) -> list[str]:
    return [(await schedule(client, url, entity_id=f"invoice-{n}"))["id"] for n in range(count)]


async def deliver_all(
    client: AsyncTestClient[Any], settings: Settings, ids: list[str], *, batch_size: int
) -> None:
    """Run a worker of concurrency 1 with ``batch_size`` until every one is sent."""
    async with running_worker(settings, worker_concurrency=1, delivery_batch_size=batch_size):
        for notification_id in ids:
            await wait_for_status(client, notification_id, "sent")


async def test_one_job_delivers_a_batch_and_settles_the_jobs_it_took_along(
    client: AsyncTestClient[Any],
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    ids = await schedule_many(client, receiver.url, 12)

    await deliver_all(client, settings, ids, batch_size=50)

    assert await jobs_started(db) == 1
    # Each notification arrived once, each attempt on record under its own job.
    assert sorted(r.headers["webhook-id"] for r in receiver.received()) == sorted(
        webhook_id(notification_id) for notification_id in ids
    )
    for notification_id in ids:
        job = await job_of(db, notification_id)
        assert job["status"] == "succeeded"
        detail = (await client.get(f"/api/v1/notifications/{notification_id}")).json()
        assert [a["outcome"] for a in detail["delivery_attempts"]] == ["delivered"]
    cursor = await db.execute(
        """
        SELECT count(*) AS mismatched FROM notifier.delivery_attempts a
        JOIN notifier.notifications n ON n.id = a.notification_id
        WHERE a.job_id IS DISTINCT FROM n.job_id
        """
    )
    assert await cursor.fetchone() == {"mismatched": 0}


async def test_a_batch_deletes_every_job_by_default_and_keeps_each_attempts_job_id(
    client: AsyncTestClient[Any],
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    """NOTIFIER_KEEP_SUCCEEDED_JOBS off (the default; the tests' settings keep them): the
    batch's own job and the jobs it took along leave no row and no event; what they did is
    on record in the attempts, each under its job's id."""
    ids = await schedule_many(client, receiver.url, 12)
    cursor = await db.execute("SELECT id::text, job_id FROM notifier.notifications")
    job_ids = {row["id"]: row["job_id"] for row in await cursor.fetchall()}

    async with running_worker(
        settings, worker_concurrency=1, delivery_batch_size=50, keep_succeeded_jobs=False
    ):
        for notification_id in ids:
            await wait_for_status(client, notification_id, "sent")

        async def no_job_left() -> bool:
            cursor = await db.execute(
                "SELECT count(*) AS n FROM procrastinate_jobs WHERE id = ANY(%s)",
                [list(job_ids.values())],
            )
            return await cursor.fetchone() == {"n": 0}

        # The worker deletes its own job once the task returned, after the batch committed.
        await eventually(no_job_left, timeout=10)

    cursor = await db.execute(
        "SELECT count(*) AS n FROM procrastinate_events WHERE job_id = ANY(%s)",
        [list(job_ids.values())],
    )
    assert await cursor.fetchone() == {"n": 0}
    cursor = await db.execute(
        "SELECT notification_id::text, job_id, outcome FROM notifier.delivery_attempts"
    )
    assert {
        row["notification_id"]: (row["job_id"], row["outcome"]) for row in await cursor.fetchall()
    } == {notification_id: (job_ids[notification_id], "delivered") for notification_id in ids}
    assert len(receiver.received()) == 12


async def test_batches_are_bounded_by_the_batch_size(
    client: AsyncTestClient[Any],
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    ids = await schedule_many(client, receiver.url, 7)

    await deliver_all(client, settings, ids, batch_size=3)

    assert await jobs_started(db) == 3  # 3 + 3 + 1
    assert len(receiver.received()) == 7


async def test_batch_size_one_sends_each_in_its_own_job(
    client: AsyncTestClient[Any],
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    ids = await schedule_many(client, receiver.url, 4)

    await deliver_all(client, settings, ids, batch_size=1)

    assert await jobs_started(db) == 4


async def test_notifications_not_yet_due_or_cancelled_are_not_taken_along(
    client: AsyncTestClient[Any],
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    due = await schedule(client, receiver.url, entity_id="due")
    later = await schedule(
        client, receiver.url, entity_id="later", send_in=datetime.timedelta(hours=1)
    )
    cancelled = await schedule(client, receiver.url, entity_id="cancelled")
    assert (await client.delete(f"/api/v1/notifications/{cancelled['id']}")).status_code == 200

    async with running_worker(settings, worker_concurrency=1, delivery_batch_size=50):
        await wait_for_status(client, due["id"], "sent")

    assert [r.headers["webhook-id"] for r in receiver.received()] == [webhook_id(due["id"])]
    assert (await job_of(db, later["id"]))["status"] == "todo"
    assert (await client.get(f"/api/v1/notifications/{later['id']}")).json()["status"] == "pending"
    assert (await job_of(db, cancelled["id"]))["status"] == "cancelled"


async def test_a_retry_in_a_batch_makes_that_notifications_job_due_again_later(
    client: AsyncTestClient[Any],
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    ids = await schedule_many(client, receiver.url, 3)
    receiver.script(503)  # whichever request comes first

    async with running_worker(
        settings,
        worker_concurrency=1,
        delivery_batch_size=50,
        retry_base_seconds=60.0,
        retry_max_seconds=600.0,
    ):

        async def retrying() -> list[dict[str, Any]] | None:
            found = [
                (await client.get(f"/api/v1/notifications/{notification_id}")).json()
                for notification_id in ids
            ]
            statuses = sorted(n["status"] for n in found)
            # The reads are not one snapshot: wait until each shows its attempt, or one read
            # before the batch committed and two after would pass for the end state.
            attempted = all(n["delivery_attempts"] for n in found)
            return found if statuses == ["pending", "sent", "sent"] and attempted else None

        found = await eventually(retrying)

    pending = next(n for n in found if n["status"] == "pending")
    assert [a["outcome"] for a in pending["delivery_attempts"]] == ["retry"]
    job = await job_of(db, pending["id"])
    assert job["status"] == "todo"
    # Equal jitter: at least half the 60 s base from the attempt.
    assert job["scheduled_at"] > datetime.datetime.now(datetime.UTC) + datetime.timedelta(
        seconds=20
    )
    assert len(receiver.received()) == 3


async def test_an_opted_out_recipient_in_a_batch_is_suppressed(
    client: AsyncTestClient[Any],
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    wanted = await schedule(client, receiver.url + "/wanted", entity_id="wanted")
    unwanted = await schedule(client, receiver.url + "/unwanted", entity_id="unwanted")
    await opt_out(client, recipient=receiver.url + "/unwanted", channel="webhook")

    async with running_worker(settings, worker_concurrency=1, delivery_batch_size=50):
        await wait_for_status(client, wanted["id"], "sent")
        await wait_for_status(client, unwanted["id"], "suppressed")

    assert await jobs_started(db) == 1
    assert [r.headers["webhook-id"] for r in receiver.received()] == [webhook_id(wanted["id"])]
    assert (await job_of(db, unwanted["id"]))["status"] == "succeeded"


async def test_rate_limited_notifications_go_one_job_each(
    client: AsyncTestClient[Any],
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    limited = await client.put(
        "/api/v1/rate-limits/webhook", json={"per_second": 1000, "burst": 100}
    )
    assert limited.status_code == 200, limited.text
    ids = await schedule_many(client, receiver.url, 4)

    await deliver_all(client, settings, ids, batch_size=50)

    assert await jobs_started(db) == 4


def test_a_notification_taken_along_is_traced_in_its_own_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its job never runs, so the batch starts its span, continuing the trace it was
    created in (the job tracing middleware does that for the job's own notification)."""
    provider, exporter = recording_provider()
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("notifier"))
    monkeypatch.setattr(tracing, "tracing_enabled", lambda: True)
    with provider.get_tracer("tests").start_as_current_span(
        "POST /api/v1/notifications/"
    ) as origin:
        traceparent = current_traceparent()
    notification_id = uuid.uuid4()
    taken_along = delivery.Attempt(
        row=delivery_row(id=notification_id, traceparent=traceparent),
        job_id=42,
        number=1,
        channel=None,
        channel_label="webhook",
        message="not sent in this test",
    )

    with delivery.span_for_batched(taken_along):
        pass

    (span,) = [span for span in exporter.get_finished_spans() if span.name == "deliver"]
    assert span.kind is SpanKind.CONSUMER
    assert span.context.trace_id == origin.get_span_context().trace_id
    assert span.parent is not None
    assert span.parent.span_id == origin.get_span_context().span_id
    attributes = dict(span.attributes or {})
    assert attributes["notifier.notification.id"] == str(notification_id)
    assert attributes["messaging.message.id"] == "42"
    assert attributes["notifier.batched"] is True


async def test_the_jobs_own_notification_opted_out_still_sends_the_batch(
    client: AsyncTestClient[Any],
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    # The job's own notification and the batch are looked at together: the own one
    # suppressed, the others are sent all the same, in the same job.
    unwanted = await schedule(client, receiver.url + "/unwanted", entity_id="unwanted")
    wanted = [
        await schedule(client, receiver.url + "/wanted", entity_id=f"wanted-{n}") for n in range(2)
    ]
    await opt_out(client, recipient=receiver.url + "/unwanted", channel="webhook")

    async with running_worker(settings, worker_concurrency=1, delivery_batch_size=50):
        for notification in wanted:
            await wait_for_status(client, notification["id"], "sent")
        await wait_for_status(client, unwanted["id"], "suppressed")

    assert await jobs_started(db) == 1
    assert sorted(r.headers["webhook-id"] for r in receiver.received()) == sorted(
        webhook_id(n["id"]) for n in wanted
    )
    assert (await job_of(db, unwanted["id"]))["status"] == "succeeded"


async def test_email_and_sms_batches_are_bounded_by_the_connection_batch_size(
    settings: Settings,
) -> None:
    bounded = settings.replace(delivery_batch_size=200, delivery_connection_batch_size=20)
    async with open_services(bounded, name="notifier-test") as services:
        assert delivery.batch_size(services, "webhook") == 200
        assert delivery.batch_size(services, "log") == 200
        assert delivery.batch_size(services, "email") == 20
        assert delivery.batch_size(services, "sms") == 20
