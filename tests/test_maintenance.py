"""Housekeeping: jobs of killed workers are recovered, finished jobs and old keys pruned."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from litestar.testing import AsyncTestClient

from notifier.bootstrap import open_services
from notifier.channels.base import OutgoingMessage
from notifier.channels.webhook import WebhookChannel
from notifier.maintenance import run_maintenance
from notifier.queue import DELIVER_TASK, MAINTENANCE_QUEUE, MAINTENANCE_TASK, JobInfo
from notifier.services import Services
from notifier.settings import Settings, parse_networks
from notifier.worker import run_worker
from tests.support import LOOPBACK_NETWORKS, WEBHOOK_SECRET, WebhookReceiver, eventually

UTC = datetime.UTC


async def rows(db: psycopg.AsyncConnection[Any], sql: str, *params: Any) -> list[dict[str, Any]]:
    cursor = await db.execute(sql, list(params))
    return list(await cursor.fetchall())


async def job(db: psycopg.AsyncConnection[Any], job_id: int) -> dict[str, Any]:
    (row,) = await rows(
        db,
        "SELECT id, status::text AS status, attempts, worker_id FROM procrastinate_jobs "
        "WHERE id = %s",
        job_id,
    )
    return row


def maintenance_job() -> JobInfo:
    """What a worker would tell ``run_maintenance`` of its job."""
    return JobInfo(
        id=0, task_name=MAINTENANCE_TASK, queue=MAINTENANCE_QUEUE, priority=0, attempts=0, args={}
    )


async def schedule_due_now(client: AsyncTestClient[Any], recipient: str) -> dict[str, Any]:
    now = datetime.datetime.now(UTC)
    response = await client.post(
        "/api/v1/notifications/",
        json={
            "notification_type": "invoice.due",
            "entity_id": "invoice-1",
            "target_date": (now + datetime.timedelta(days=3)).isoformat(),
            "lead_time_days": 7,
            "channel": "webhook",
            "recipient": recipient,
        },
    )
    assert response.status_code == 201, response.text
    notification: dict[str, Any] = response.json()
    return notification


async def job_id_of(db: psycopg.AsyncConnection[Any], notification_id: str) -> int:
    (row,) = await rows(
        db, "SELECT job_id FROM notifier.notifications WHERE id = %s", notification_id
    )
    job_id: int = row["job_id"]
    return job_id


async def kill_worker_during(db: psycopg.AsyncConnection[Any], job_id: int) -> int:
    """Arrange what a worker killed mid-job leaves: its job 'doing', its heartbeat old."""
    (dead,) = await rows(
        db,
        "INSERT INTO procrastinate_workers (last_heartbeat) "
        "VALUES (now() - interval '1 hour') RETURNING id",
    )
    await db.execute(
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE id = %s",
        [dead["id"], job_id],
    )
    dead_id: int = dead["id"]
    return dead_id


@contextlib.asynccontextmanager
async def worker_running(services: Services) -> AsyncIterator[None]:
    task = asyncio.create_task(
        run_worker(services, install_signal_handlers=False, name="maintenance-test-worker")
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)


async def notification(client: AsyncTestClient[Any], notification_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/notifications/{notification_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_sent(client: AsyncTestClient[Any], notification_id: str) -> dict[str, Any]:
    async def sent() -> dict[str, Any] | None:
        body = await notification(client, notification_id)
        return body if body["status"] == "sent" else None

    result: dict[str, Any] = await eventually(sent, timeout=20)
    return result


# --- stalled jobs ----------------------------------------------------------------------


async def test_job_of_a_killed_worker_is_requeued_and_delivered_once(
    client: AsyncTestClient[Any],
    services: Services,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    created = await schedule_due_now(client, receiver.url)
    job_id = await job_id_of(db, created["id"])
    await kill_worker_during(db, job_id)

    await run_maintenance(services, maintenance_job(), timestamp=int(time.time()))

    requeued = await job(db, job_id)
    assert (requeued["status"], requeued["attempts"]) == ("todo", 1)
    assert receiver.received() == []

    async with worker_running(services):
        sent = await wait_sent(client, created["id"])

    (request,) = receiver.received()
    assert request.headers["webhook-id"] == f"msg_{uuid.UUID(created['id']).hex}"
    assert request.json()["data"]["notification_id"] == created["id"]
    assert [(a["attempt"], a["outcome"]) for a in sent["delivery_attempts"]] == [(1, "delivered")]
    assert (await job(db, job_id))["status"] == "succeeded"


async def test_maintenance_deferred_as_a_job_recovers_the_stalled_job(
    client: AsyncTestClient[Any],
    services: Services,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    created = await schedule_due_now(client, receiver.url)
    job_id = await job_id_of(db, created["id"])
    await kill_worker_during(db, job_id)
    maintenance_id = await services.queue.configure_task(MAINTENANCE_TASK).defer_async(
        timestamp=int(time.time())
    )

    async with worker_running(services):
        await wait_sent(client, created["id"])

        async def maintenance_finished() -> str | None:
            status: str = (await job(db, maintenance_id))["status"]
            return status if status not in {"todo", "doing"} else None

        assert await eventually(maintenance_finished) == "succeeded"

    assert len(receiver.received()) == 1
    # The worker's own periodic run (deferred when it starts) may run alongside: whoever
    # comes second finds nothing left to requeue, and no maintenance job fails for it. (A
    # periodic run deferred at a minute boundary just before the worker stopped may still
    # wait, never having run: that is no failure.)
    assert (
        await rows(
            db,
            "SELECT status::text AS status FROM procrastinate_jobs WHERE task_name = %s "
            "AND status NOT IN ('succeeded', 'todo')",
            MAINTENANCE_TASK,
        )
        == []
    )


async def test_crash_after_sending_resends_with_the_same_webhook_id(
    client: AsyncTestClient[Any],
    services: Services,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    """A worker that dies between the POST and its commit: at-least-once, deduplicable."""
    created = await schedule_due_now(client, receiver.url)
    job_id = await job_id_of(db, created["id"])
    await kill_worker_during(db, job_id)
    # What the killed worker got out before dying (its transaction never committed).
    channel = WebhookChannel(
        secret=WEBHOOK_SECRET,
        timeout_seconds=5,
        user_agent="dying-worker",
        allowed_networks=parse_networks(LOOPBACK_NETWORKS),
    )
    try:
        await channel.send(
            OutgoingMessage(
                notification_id=uuid.UUID(created["id"]),
                notification_type="invoice.due",
                recipient=receiver.url,
                attempt=1,
            )
        )
    finally:
        await channel.aclose()

    await run_maintenance(services, maintenance_job(), timestamp=int(time.time()))
    async with worker_running(services):
        sent = await wait_sent(client, created["id"])

    first, second = receiver.received()
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.headers["webhook-id"] == f"msg_{uuid.UUID(created['id']).hex}"
    assert first.headers["user-agent"] == "dying-worker"
    assert second.headers["user-agent"].startswith("notifier-webhooks/")
    assert sent["attempts"] == 1


async def test_concurrent_maintenance_runs_requeue_a_stalled_job_once(
    client: AsyncTestClient[Any],
    services: Services,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    created = await schedule_due_now(client, receiver.url)
    job_id = await job_id_of(db, created["id"])
    await kill_worker_during(db, job_id)

    await asyncio.gather(
        *(
            run_maintenance(services, maintenance_job(), timestamp=int(time.time()))
            for _ in range(3)
        )
    )

    assert (await job(db, job_id))["status"] == "todo"
    assert (await job(db, job_id))["attempts"] == 1


async def test_jobs_of_live_workers_are_left_alone(
    client: AsyncTestClient[Any],
    services: Services,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    created = await schedule_due_now(client, receiver.url)
    job_id = await job_id_of(db, created["id"])
    (alive,) = await rows(
        db, "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now()) RETURNING id"
    )
    await db.execute(
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE id = %s",
        [alive["id"], job_id],
    )

    await run_maintenance(services, maintenance_job(), timestamp=int(time.time()))

    assert await job(db, job_id) == {
        "id": job_id,
        "status": "doing",
        "attempts": 0,
        "worker_id": alive["id"],
    }


async def test_a_live_worker_with_a_short_stalled_timeout_is_not_taken_for_dead(
    client: AsyncTestClient[Any],
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    receiver.delay_seconds = 3.0  # a slow send, longer than the stalled timeout
    created = await schedule_due_now(client, receiver.url)
    job_id = await job_id_of(db, created["id"])
    fast = settings.replace(stalled_worker_seconds=1.0, webhook_timeout_seconds=10.0)

    async with open_services(fast, name="notifier-test-fast") as services, worker_running(services):
        await eventually(lambda: _received(receiver), timeout=20)
        started = time.monotonic()

        async def stalled_timeout_passed() -> bool:
            return time.monotonic() - started > 2.0

        await eventually(stalled_timeout_passed)
        await run_maintenance(services, maintenance_job(), timestamp=int(time.time()))
        assert (await job(db, job_id))["status"] == "doing"
        sent = await wait_sent(client, created["id"])

    assert len(receiver.received()) == 1
    assert sent["attempts"] == 1
    assert (await job(db, job_id))["attempts"] == 1


async def _received(receiver: WebhookReceiver) -> bool:
    return bool(receiver.received())


async def test_the_worker_schedules_maintenance_periodically(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    async with worker_running(services):

        async def ran() -> list[dict[str, Any]]:
            return await rows(
                db,
                "SELECT args, status::text AS status FROM procrastinate_jobs "
                "WHERE task_name = %s AND status = 'succeeded'",
                MAINTENANCE_TASK,
            )

        (maintenance,) = await eventually(ran)

    timestamp = maintenance["args"]["timestamp"]
    assert isinstance(timestamp, int)
    assert timestamp % 60 == 0  # every minute, on the minute
    assert time.time() - 11 * 60 < timestamp <= time.time()


# --- pruning ---------------------------------------------------------------------------


async def test_old_finished_jobs_are_pruned_failed_and_waiting_ones_kept(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    deliver = services.queue.configure_task(DELIVER_TASK)
    ids = {
        name: await deliver.defer_async(notification_id=str(uuid.uuid4()))
        for name in (
            "old_succeeded",
            "new_succeeded",
            "old_cancelled",
            "old_failed",
            "old_aborted",
            "old_todo",
        )
    }
    # The worker runs them all (unknown notifications: succeeded), then we set the rest.
    await run_worker(services, wait=False, install_signal_handlers=False, name="drain")
    for name, status in (
        ("old_cancelled", "cancelled"),
        ("old_failed", "failed"),
        ("old_aborted", "aborted"),
        ("old_todo", "todo"),
    ):
        await db.execute(
            "UPDATE procrastinate_jobs SET status = %s WHERE id = %s", [status, ids[name]]
        )
    old = [ids[n] for n in ids if n.startswith("old_")]
    await db.execute(
        "UPDATE procrastinate_events SET at = now() - interval '100 hours' WHERE job_id = ANY(%s)",
        [old],
    )
    # Make sure no fresher event of the old jobs survives (e.g. the status updates above).
    await db.execute(
        "DELETE FROM procrastinate_events WHERE job_id = ANY(%s) "
        "AND at > now() - interval '99 hours'",
        [old],
    )

    await run_maintenance(services, maintenance_job(), timestamp=int(time.time()))

    remaining = await rows(
        db, "SELECT id FROM procrastinate_jobs WHERE id = ANY(%s) ORDER BY id", list(ids.values())
    )
    assert {r["id"] for r in remaining} == {
        ids["new_succeeded"],
        ids["old_failed"],
        ids["old_todo"],
    }


async def test_expired_idempotency_keys_are_pruned(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    await db.execute(
        """
        INSERT INTO notifier.idempotency_keys (scope, key, request_hash, created_at)
        VALUES ('POST /api/v1/events', 'old', 'h', now() - interval '25 hours'),
               ('POST /api/v1/events', 'new', 'h', now() - interval '23 hours')
        """
    )

    await run_maintenance(services, maintenance_job(), timestamp=int(time.time()))

    assert await rows(db, "SELECT key FROM notifier.idempotency_keys") == [{"key": "new"}]


async def test_reminder_keys_are_pruned_once_old_and_nothing_of_the_key_is_pending(
    services: Services,
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    worker: None,
) -> None:
    rule = await client.post(
        "/api/v1/rules/",
        json={
            "event_type": "password.expiring",
            "channel": "log",
            "recipient_field": "email",
            "date_field": "expires_at",
            "lead_times": ["P1D"],
            "key": "{user_id}",
        },
    )
    assert rule.status_code == 201, rule.text
    expires_at = (datetime.datetime.now(UTC) + datetime.timedelta(days=10)).isoformat()

    async def expiring(*users: str) -> None:
        for user in users:
            response = await client.post(
                "/api/v1/events/",
                json={
                    "type": "password.expiring",
                    "payload": {
                        "user_id": user,
                        "email": "a@example.com",
                        "expires_at": expires_at,
                    },
                },
            )
            assert response.status_code == 201, response.text

        async def processed() -> bool:
            cursor = await db.execute(
                "SELECT count(*) AS n FROM notifier.events WHERE processed_at IS NULL"
            )
            return (await cursor.fetchone()) == {"n": 0}

        await eventually(processed, timeout=20)

    await expiring("done", "pending", "recent", "renewed")
    # "done" and "renewed" have nothing pending; "recent" was written lately.
    await db.execute(
        "UPDATE notifier.notifications SET status = 'sent' WHERE key IN ('done', 'renewed')"
    )
    await db.execute(
        "UPDATE notifier.reminder_keys SET held_at = now() - interval '31 days' "
        "WHERE key <> 'recent'"
    )
    await db.execute("UPDATE notifier.notifications SET status = 'sent' WHERE key = 'recent'")
    await expiring("renewed")  # a new event writes its key again: it starts a new retention

    await run_maintenance(services, maintenance_job(), timestamp=int(time.time()))

    kept = await rows(db, "SELECT key FROM notifier.reminder_keys ORDER BY key")
    assert [row["key"] for row in kept] == ["pending", "recent", "renewed"]
