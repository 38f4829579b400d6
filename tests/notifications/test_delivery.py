"""Delivering notifications: retries, permanent failures, replays and cancels.

Everything runs for real: the Litestar app, a procrastinate worker and an HTTP receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notifier.bootstrap import open_services
from notifier.channels.base import DeliveryReceipt, OutgoingMessage
from notifier.db import transaction
from notifier.notifications.scheduling import NotificationDraft, PlannedSend, create_notifications
from notifier.notifications.schemas import NotificationStatus
from notifier.services import Services
from notifier.settings import Settings
from notifier.tenancy import DEFAULT_TENANT
from notifier.worker import run_worker
from tests.support import (
    WEBHOOK_SECRET,
    ReceivedRequest,
    WebhookReceiver,
    eventually,
    parse_time,
    wait_for_status,
)

UTC = datetime.UTC


class Arrivals(list[ReceivedRequest]):
    """The receiver's request list, stamping the wall-clock time each request arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: ReceivedRequest, /) -> None:
        self.times.append(time.time())
        super().append(item)


def stamp_arrivals(receiver: WebhookReceiver) -> Arrivals:
    arrivals = Arrivals()
    with receiver.lock:
        assert not receiver.requests
        receiver.requests = arrivals
    return arrivals


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, **changes: Any) -> AsyncIterator[Services]:
    """A worker with its own services, built from ``settings`` with ``changes``."""
    async with open_services(settings.replace(**changes), name="notifier-test-custom") as services:
        task = asyncio.create_task(
            run_worker(services, install_signal_handlers=False, name="custom-worker")
        )
        try:
            yield services
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                # As generous as the worker fixture's: the stop waits for the jobs in flight
                # (up to the shutdown timeout) and then unregisters the worker.
                await asyncio.wait_for(task, timeout=30)


async def schedule(
    client: AsyncTestClient[Any],
    recipient: str,
    *,
    send_in: datetime.timedelta | None = None,
    channel: str = "webhook",
    entity_id: str = "invoice-1",
) -> dict[str, Any]:
    """Create a notification over REST: due now, or ``send_in`` from now."""
    now = datetime.datetime.now(UTC)
    if send_in is None:
        # Seven days' notice for a date three days out: overdue, so it goes now.
        target, lead_days = now + datetime.timedelta(days=3), 7
    else:
        target, lead_days = now + datetime.timedelta(days=1) + send_in, 1
    response = await client.post(
        "/api/v1/notifications/",
        json={
            "notification_type": "invoice.due",
            "entity_id": entity_id,
            "target_date": target.isoformat(),
            "lead_time_days": lead_days,
            "channel": channel,
            "recipient": recipient,
            "data": {"amount": 42},
        },
    )
    assert response.status_code == 201, response.text
    notification: dict[str, Any] = response.json()
    assert notification["status"] == "pending"
    return notification


async def get_notification(client: AsyncTestClient[Any], notification_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/notifications/{notification_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def job_of(db: psycopg.AsyncConnection[Any], notification_id: str) -> dict[str, Any]:
    cursor = await db.execute(
        """
        SELECT j.id, j.status::text AS status, j.attempts, j.scheduled_at, j.args
        FROM procrastinate_jobs j
        JOIN notifier.notifications n ON n.job_id = j.id
        WHERE n.id = %s
        """,
        [notification_id],
    )
    row = await cursor.fetchone()
    assert row is not None
    result: dict[str, Any] = row
    return result


def webhook_id(notification_id: str) -> str:
    return f"msg_{uuid.UUID(notification_id).hex}"


# --- retries ---------------------------------------------------------------------------


async def test_500_500_200_is_three_signed_attempts_with_one_webhook_id(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    receiver.script(500, 500, 200)
    notification = await schedule(client, receiver.url)

    sent = await wait_for_status(client, notification["id"], "sent")

    requests = receiver.received()
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {webhook_id(notification["id"])}
    for request in requests:
        assert request.path == "/hooks"
        assert request.headers["content-type"] == "application/json"
        document = Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)
        assert document["type"] == "invoice.due"
        assert document["data"]["notification_id"] == notification["id"]
        assert document["data"]["entity_id"] == "invoice-1"
        assert document["data"]["payload"] == {"amount": 42}
    assert sent["attempts"] == 3
    assert sent["last_error"] is None
    assert sent["sent_at"] is not None
    assert [
        (a["attempt"], a["outcome"], a["status_code"], a["error"])
        for a in sent["delivery_attempts"]
    ] == [
        (1, "retry", 500, "receiver answered 500"),
        (2, "retry", 500, "receiver answered 500"),
        (3, "delivered", 200, None),
    ]
    assert all(a["channel"] == "webhook" for a in sent["delivery_attempts"])
    job = await eventually(lambda: _finished_job(db, notification["id"]), timeout=10)
    assert (job["status"], job["attempts"]) == ("succeeded", 3)


async def _finished_job(db: psycopg.AsyncConnection[Any], notification_id: str) -> dict[str, Any]:
    job = await job_of(db, notification_id)
    return job if job["status"] not in {"todo", "doing"} else {}


async def test_signature_fails_verification_with_another_secret(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, worker: None
) -> None:
    notification = await schedule(client, receiver.url)
    await wait_for_status(client, notification["id"], "sent")

    (request,) = receiver.received()
    other_secret = "whsec_" + "QUJD" * 11 + "QQ=="
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(other_secret).verify(request.body, request.headers)
    tampered = request.body.replace(b"42", b"43")
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(WEBHOOK_SECRET).verify(tampered, request.headers)


async def test_429_with_retry_after_waits_at_least_that_long(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, worker: None
) -> None:
    arrivals = stamp_arrivals(receiver)
    receiver.script((429, {"Retry-After": "1"}), 200)
    notification = await schedule(client, receiver.url)

    sent = await wait_for_status(client, notification["id"], "sent")

    assert len(arrivals) == 2
    assert arrivals.times[1] - arrivals.times[0] >= 0.95
    assert [(a["outcome"], a["status_code"]) for a in sent["delivery_attempts"]] == [
        ("retry", 429),
        ("delivered", 200),
    ]
    first, second = sent["delivery_attempts"]
    assert parse_time(second["started_at"]) - parse_time(first["finished_at"]) >= (
        datetime.timedelta(seconds=0.95)
    )


async def test_timeout_is_retried_with_the_same_webhook_id(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, settings: Settings
) -> None:
    receiver.delay_seconds = 1.0
    notification = await schedule(client, receiver.url)

    async with running_worker(settings, webhook_timeout_seconds=0.3):
        first = await eventually(
            lambda: _attempts_so_far(client, notification["id"], at_least=1), timeout=20
        )
        receiver.delay_seconds = 0.0
        sent = await wait_for_status(client, notification["id"], "sent")

    assert first[0]["outcome"] == "retry"
    assert first[0]["status_code"] is None
    assert first[0]["error"].startswith("timed out")
    assert sent["delivery_attempts"][-1]["outcome"] == "delivered"
    requests = receiver.received()
    assert len(requests) == len(sent["delivery_attempts"]) >= 2
    assert {r.headers["webhook-id"] for r in requests} == {webhook_id(notification["id"])}


async def _attempts_so_far(
    client: AsyncTestClient[Any], notification_id: str, *, at_least: int
) -> list[dict[str, Any]]:
    attempts: list[dict[str, Any]] = (await get_notification(client, notification_id))[
        "delivery_attempts"
    ]
    return attempts if len(attempts) >= at_least else []


# --- permanent failures, dead letters and replay ---------------------------------------


@pytest.mark.parametrize(
    ("status", "error"), [(410, "receiver answered 410 Gone"), (400, "receiver answered 400")]
)
async def test_permanent_rejection_fails_after_one_attempt(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    worker: None,
    status: int,
    error: str,
) -> None:
    receiver.default_status = status
    notification = await schedule(client, receiver.url)

    failed = await wait_for_status(client, notification["id"], "failed")

    assert failed["attempts"] == 1
    assert failed["last_error"] == error
    assert failed["sent_at"] is None
    assert [(a["outcome"], a["status_code"], a["error"]) for a in failed["delivery_attempts"]] == [
        ("failed", status, error)
    ]
    # Its job is finished, not waiting for a retry: nothing will ever send it again.
    job = await eventually(lambda: _finished_job(db, notification["id"]), timeout=10)
    assert (job["status"], job["attempts"]) == ("succeeded", 1)
    assert len(receiver.received()) == 1


async def test_always_500_ends_dead_then_replay_sends_it(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    settings: Settings,
) -> None:
    receiver.default_status = 500
    notification = await schedule(client, receiver.url)

    async with running_worker(settings, delivery_max_attempts=3):
        dead = await wait_for_status(client, notification["id"], "dead")
        assert dead["attempts"] == 3
        assert dead["last_error"] == "receiver answered 500"
        assert [(a["attempt"], a["outcome"]) for a in dead["delivery_attempts"]] == [
            (1, "retry"),
            (2, "retry"),
            (3, "failed"),
        ]
        assert len(receiver.received()) == 3
        old_job = await eventually(lambda: _finished_job(db, notification["id"]), timeout=10)
        assert old_job["status"] == "succeeded"

        receiver.default_status = 200
        replay = await client.post(f"/api/v1/notifications/{notification['id']}/retry")
        assert replay.status_code == 202, replay.text
        assert replay.json()["status"] == "pending"
        assert replay.json()["attempts"] == 0

        sent = await wait_for_status(client, notification["id"], "sent")

    assert sent["attempts"] == 1
    assert sent["last_error"] is None
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in sent["delivery_attempts"]] == [
        (1, "retry", 500),
        (2, "retry", 500),
        (3, "failed", 500),
        (1, "delivered", 200),
    ]
    requests = receiver.received()
    assert len(requests) == 4
    assert {r.headers["webhook-id"] for r in requests} == {webhook_id(notification["id"])}
    new_job = await job_of(db, notification["id"])
    assert new_job["id"] != old_job["id"]


async def test_replaying_a_sent_notification_is_a_conflict(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, worker: None
) -> None:
    notification = await schedule(client, receiver.url)
    await wait_for_status(client, notification["id"], "sent")

    replay = await client.post(f"/api/v1/notifications/{notification['id']}/retry")

    assert replay.status_code == 409
    assert len(receiver.received()) == 1


async def test_poison_notification_does_not_block_the_queue(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, settings: Settings
) -> None:
    # Nothing listens on port 1: every attempt is refused.
    poison = await schedule(client, "http://127.0.0.1:1/hooks", entity_id="poison")
    good = [await schedule(client, receiver.url, entity_id=f"good-{i}") for i in range(5)]

    async with running_worker(settings, delivery_max_attempts=3, worker_concurrency=1):
        dead = await wait_for_status(client, poison["id"], "dead")
        for notification in good:
            await wait_for_status(client, notification["id"], "sent")

    assert dead["attempts"] == 3
    assert dead["last_error"] is not None
    assert dead["last_error"].startswith("request failed: ClientConnectorError: Cannot connect")
    assert sorted(r.json()["data"]["entity_id"] for r in receiver.received()) == [
        f"good-{i}" for i in range(5)
    ]


async def test_unusable_recipient_fails_without_sending(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    settings: Settings,
) -> None:
    notification = await schedule(client, "someone@example.com", channel="log")
    # A row the API would refuse (a webhook to an e-mail address), as a producer writing
    # SQL could store it; the worker is not running yet.
    await db.execute(
        "UPDATE notifier.notifications SET channel = 'webhook' WHERE id = %s",
        [notification["id"]],
    )
    other = await schedule(client, receiver.url, entity_id="other")

    async with running_worker(settings):
        failed = await wait_for_status(client, notification["id"], "failed")
        await wait_for_status(client, other["id"], "sent")

    assert failed["attempts"] == 1
    assert failed["last_error"] == "recipient must be an absolute http:// or https:// URL"
    assert [(a["outcome"], a["status_code"]) for a in failed["delivery_attempts"]] == [
        ("failed", None)
    ]
    assert len(receiver.received()) == 1


# --- expiry and scheduling ---------------------------------------------------------------


async def test_scheduled_notification_is_not_sent_before_its_send_time(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    arrivals = stamp_arrivals(receiver)
    notification = await schedule(client, receiver.url, send_in=datetime.timedelta(seconds=2))
    send_at = parse_time(notification["send_at"])
    job = await job_of(db, notification["id"])
    assert job["scheduled_at"] == send_at
    assert job["args"] == {"notification_id": notification["id"], "tenant_id": "default"}

    sent = await wait_for_status(client, notification["id"], "sent")

    assert len(arrivals) == 1
    assert arrivals.times[0] >= send_at.timestamp()
    assert parse_time(sent["sent_at"]) >= send_at


async def test_lead_time_zero_is_delivered_on_the_target_date(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, worker: None
) -> None:
    # Far enough ahead that the request itself cannot outlast it on a slow machine (a
    # POST there once took over 2 s, and the target had passed when it was stored).
    target = datetime.datetime.now(UTC) + datetime.timedelta(seconds=5)
    response = await client.post(
        "/api/v1/notifications/",
        json={
            "notification_type": "subscription.renews",
            "entity_id": "sub-1",
            "target_date": target.isoformat(),
            "lead_time_days": 0,
            "channel": "webhook",
            "recipient": receiver.url,
        },
    )
    assert response.status_code == 201, response.text
    assert parse_time(response.json()["send_at"]) == target

    sent = await wait_for_status(client, response.json()["id"], "sent")

    assert parse_time(sent["sent_at"]) >= target
    assert len(receiver.received()) == 1


async def test_target_date_passing_during_retries_expires_it(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, settings: Settings
) -> None:
    receiver.default_status = 503
    now = datetime.datetime.now(UTC)
    # One day's notice for a date five seconds out: due now, and then it keeps failing.
    response = await client.post(
        "/api/v1/notifications/",
        json={
            "notification_type": "invoice.due",
            "entity_id": "invoice-9",
            "target_date": (now + datetime.timedelta(seconds=5)).isoformat(),
            "lead_time_days": 1,
            "channel": "webhook",
            "recipient": receiver.url,
        },
    )
    assert response.status_code == 201, response.text

    # Attempts enough that it cannot run out of them before the date and its grace pass.
    async with running_worker(
        settings, delivery_max_attempts=1000, expiry_grace_seconds=2
    ) as services:
        expired = await wait_for_status(client, response.json()["id"], "expired")
        counted = services.metrics.registry.get_sample_value(
            "notifier_notifications_expired_total", {"reason": "target_passed"}
        )

    assert expired["last_error"].endswith(
        "passed more than 2 s (NOTIFIER_EXPIRY_GRACE_SECONDS) before it could be delivered"
    )
    assert counted == 1
    assert expired["attempts"] >= 1
    assert expired["sent_at"] is None
    assert {a["outcome"] for a in expired["delivery_attempts"]} == {"retry"}
    assert len(receiver.received()) == expired["attempts"]


@pytest.mark.parametrize("lead_time_days", [0, 1], ids=["lead-0", "lead-1-day"])
async def test_a_delivery_delayed_past_its_target_by_notifier_itself_is_still_sent(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, settings: Settings, lead_time_days: int
) -> None:
    """Due one second out, accepted with a 201; no worker runs until the target has
    passed (an outage, a backlog): the notification is delivered, not expired."""
    target = datetime.datetime.now(UTC) + datetime.timedelta(seconds=1)
    response = await client.post(
        "/api/v1/notifications/",
        json={
            "notification_type": "invoice.due",
            "entity_id": "invoice-10",
            "target_date": target.isoformat(),
            "lead_time_days": lead_time_days,
            "channel": "webhook",
            "recipient": receiver.url,
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "pending"
    await asyncio.sleep((target - datetime.datetime.now(UTC)).total_seconds() + 2)

    async with running_worker(settings):
        sent = await wait_for_status(client, response.json()["id"], "sent")

    assert parse_time(sent["sent_at"]) > target + datetime.timedelta(seconds=2)
    assert len(receiver.received()) == 1


async def test_expires_at_passing_before_delivery_expires_it_without_an_attempt(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, settings: Settings
) -> None:
    now = datetime.datetime.now(UTC)
    # Ample for the request to be stored pending, even on a busy machine.
    expires_at = now + datetime.timedelta(seconds=3)
    response = await client.post(
        "/api/v1/notifications/",
        json={
            "notification_type": "otp.code",
            "entity_id": "login-1",
            "target_date": now.isoformat(),
            "lead_time_days": 0,
            "expires_at": expires_at.isoformat(),
            "channel": "webhook",
            "recipient": receiver.url,
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "pending"
    assert parse_time(response.json()["expires_at"]) == expires_at
    await asyncio.sleep((expires_at - datetime.datetime.now(UTC)).total_seconds() + 0.1)

    async with running_worker(settings) as services:
        expired = await wait_for_status(client, response.json()["id"], "expired")
        counted = services.metrics.registry.get_sample_value(
            "notifier_notifications_expired_total", {"reason": "deadline"}
        )

    assert expired["last_error"] == f"its expires_at {expires_at.isoformat()} passed first"
    assert (expired["attempts"], expired["delivery_attempts"]) == (0, [])
    assert counted == 1
    assert receiver.received() == []


# --- cancelling ------------------------------------------------------------------------


async def test_cancel_before_send_time_means_never_sent(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    notification = await schedule(client, receiver.url, send_in=datetime.timedelta(seconds=1))
    send_at = parse_time(notification["send_at"])

    response = await client.delete(f"/api/v1/notifications/{notification['id']}")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["cancelled_at"] is not None
    assert (await job_of(db, notification["id"]))["status"] == "cancelled"

    # Let the send time pass, then prove the worker is alive and past it: a later
    # notification is delivered, the cancelled one still is not.
    async def send_time_passed() -> bool:
        return datetime.datetime.now(UTC) > send_at + datetime.timedelta(seconds=0.5)

    await eventually(send_time_passed, timeout=10)
    witness = await schedule(client, receiver.url, entity_id="witness")
    await wait_for_status(client, witness["id"], "sent")

    assert [r.headers["webhook-id"] for r in receiver.received()] == [webhook_id(witness["id"])]
    assert (await get_notification(client, notification["id"]))["status"] == "cancelled"
    # Cancelling again is harmless and still says cancelled.
    again = await client.delete(f"/api/v1/notifications/{notification['id']}")
    assert (again.status_code, again.json()["status"]) == (200, "cancelled")


# 50 concurrent sends to a receiver holding each 0.2 s, against a 2 s webhook timeout.
@pytest.mark.serial
async def test_cancel_racing_delivery_never_both_cancels_and_sends(
    client: AsyncTestClient[Any],
    live_api: str,
    api_headers: dict[str, str],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    receiver.delay_seconds = 0.2
    notifications = [await schedule(client, receiver.url, entity_id=f"e{i}") for i in range(50)]
    ids = [n["id"] for n in notifications]

    # Start cancelling once deliveries are under way, all at once, over real HTTP.
    await eventually(lambda: _received_any(receiver), timeout=20, interval=0.01)
    async with httpx.AsyncClient(base_url=live_api, headers=api_headers, timeout=60) as http:
        responses = await asyncio.gather(
            *(http.delete(f"/api/v1/notifications/{notification_id}") for notification_id in ids)
        )

    codes = dict(zip(ids, (r.status_code for r in responses), strict=True))
    assert set(codes.values()) <= {200, 409}, [r.text for r in responses if r.status_code >= 500]
    cancelled = {i for i, code in codes.items() if code == 200}
    conflicts = {i for i, code in codes.items() if code == 409}
    for response in responses:
        if response.status_code == 200:
            assert response.json()["status"] == "cancelled"
        else:
            assert "already sent" in response.json()["detail"]

    # Let the worker finish every job it will ever run.
    async def queue_drained() -> bool:
        cursor = await db.execute(
            "SELECT count(*) AS n FROM procrastinate_jobs "
            "WHERE task_name = 'notifier.deliver' AND status IN ('todo', 'doing')"
        )
        row = await cursor.fetchone()
        return row is not None and row["n"] == 0

    await eventually(queue_drained, timeout=60)

    by_webhook_id = {webhook_id(i): i for i in ids}
    received = [by_webhook_id[r.headers["webhook-id"]] for r in receiver.received()]
    assert len(received) == len(set(received)), "a notification was delivered twice"
    assert cancelled.isdisjoint(received)
    assert conflicts == set(received)
    assert conflicts, "no delivery was in flight or done when the cancels arrived"
    cursor = await db.execute(
        "SELECT id::text AS id, status FROM notifier.notifications WHERE id = ANY(%s::uuid[])",
        [ids],
    )
    statuses = {row["id"]: row["status"] for row in await cursor.fetchall()}
    assert {i for i, s in statuses.items() if s == "cancelled"} == cancelled
    assert {i for i, s in statuses.items() if s == "sent"} == conflicts


async def _received_any(receiver: WebhookReceiver) -> bool:
    return bool(receiver.received())


async def test_cancel_unknown_notification_is_404(client: AsyncTestClient[Any]) -> None:
    response = await client.delete(f"/api/v1/notifications/{uuid.uuid4()}")
    assert response.status_code == 404


class ExplodingChannel:
    """A channel with a bug: it raises something that is not a DeliveryError."""

    name = "exploding"
    sends_html = False

    def validate_recipient(self, recipient: str) -> str | None:
        return None

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        raise RuntimeError("channel bug")

    async def aclose(self) -> None:
        return None


async def test_unexpected_error_is_shown_on_the_notification_and_the_job_retried(
    services: Services, db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    services.channels["exploding"] = ExplodingChannel()
    target = datetime.datetime.now(UTC) + datetime.timedelta(days=1)
    draft = NotificationDraft(
        notification_type="invoice.due",
        channel="exploding",
        recipient="anyone",
        target_date=target,
        send=PlannedSend(
            datetime.timedelta(days=1), datetime.datetime.now(UTC), NotificationStatus.PENDING
        ),
    )
    async with transaction(services.pool) as conn:
        (notification,) = await create_notifications(conn, DEFAULT_TENANT, [draft])

    async def retried_with_error() -> dict[str, Any] | None:
        cursor = await db.execute(
            """
            SELECT n.status, n.last_error, j.attempts, j.status AS job_status
            FROM notifier.notifications n JOIN procrastinate_jobs j ON j.id = n.job_id
            WHERE n.id = %s
            """,
            [notification.id],
        )
        row = await cursor.fetchone()
        return row if row and row["attempts"] >= 1 and row["last_error"] else None

    row = await eventually(retried_with_error)
    assert row["status"] == "pending"
    assert row["last_error"] == "unexpected error: RuntimeError('channel bug')"
    assert row["job_status"] in {"todo", "doing"}
