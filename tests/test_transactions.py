"""Rows and their procrastinate jobs commit together or not at all (the outbox invariant)."""

from __future__ import annotations

import datetime
import uuid
from typing import Any
from unittest import mock

import psycopg
import pytest

from notifier.db import Connection, transaction
from notifier.events.cloudevents import NewEvent
from notifier.events.queries import TenantEvent, publish_events
from notifier.events.schemas import Event
from notifier.notifications.scheduling import NotificationDraft, PlannedSend, create_notifications
from notifier.notifications.schemas import NotificationStatus
from notifier.queue import DELIVER_TASK, PROCESS_EVENT_TASK
from notifier.services import Services
from notifier.tenancy import DEFAULT_TENANT
from notifier.worker import run_worker

UTC = datetime.UTC


class Abort(Exception):
    """Raised inside a transaction to roll it back."""


async def rows(db: psycopg.AsyncConnection[Any], sql: str, *params: Any) -> list[dict[str, Any]]:
    cursor = await db.execute(sql, list(params))
    return list(await cursor.fetchall())


async def jobs(db: psycopg.AsyncConnection[Any], task_name: str) -> list[dict[str, Any]]:
    return await rows(
        db,
        "SELECT id, status::text AS status, args, scheduled_at, queue_name "
        "FROM procrastinate_jobs WHERE task_name = %s ORDER BY id",
        task_name,
    )


def draft(status: NotificationStatus, send_at: datetime.datetime) -> NotificationDraft:
    return NotificationDraft(
        notification_type="invoice.due",
        channel="log",
        recipient="ada@example.com",
        send=PlannedSend(datetime.timedelta(days=1), send_at, status),
        target_date=send_at + datetime.timedelta(days=1),
        entity_id="invoice-1",
        context={"amount": 42},
    )


# --- events ----------------------------------------------------------------------------


async def publish(conn: Connection, event: NewEvent) -> Event:
    """Store one event of the default tenant with its job, as the API does."""
    [published] = await publish_events(conn, [TenantEvent(DEFAULT_TENANT, event)])
    assert published.is_new
    return published.event


async def publish_then_abort(services: Services, event_type: str) -> None:
    """Store an event and its job, see both inside the transaction, then roll it back."""
    async with transaction(services.pool) as conn:
        event = await publish(conn, NewEvent(type=event_type, payload={"a": 1}))
        cursor = await conn.execute(
            "SELECT args FROM procrastinate_jobs WHERE task_name = %s", [PROCESS_EVENT_TASK]
        )
        assert await cursor.fetchall() == [
            {"args": {"event_id": str(event.id), "tenant_id": DEFAULT_TENANT}}
        ]
        cursor = await conn.execute("SELECT id FROM notifier.events WHERE id = %s", [event.id])
        assert await cursor.fetchone() == {"id": event.id}
        raise Abort


async def test_rolled_back_event_leaves_neither_row_nor_job(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    with pytest.raises(Abort):
        await publish_then_abort(services, "user.signup")

    assert await rows(db, "SELECT id FROM notifier.events") == []
    assert await jobs(db, PROCESS_EVENT_TASK) == []
    assert await rows(db, "SELECT id FROM procrastinate_jobs") == []


async def test_committed_event_leaves_both_row_and_job(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    async with transaction(services.pool) as conn:
        event = await publish(conn, NewEvent(type="user.signup", payload={"a": 1}))

    assert await rows(db, "SELECT id, type, payload FROM notifier.events") == [
        {"id": event.id, "type": "user.signup", "payload": {"a": 1}}
    ]
    assert await jobs(db, PROCESS_EVENT_TASK) == [
        {
            "id": mock.ANY,
            "status": "todo",
            "args": {"event_id": str(event.id), "tenant_id": DEFAULT_TENANT},
            "scheduled_at": None,
            "queue_name": "events",
        }
    ]


async def test_only_the_committed_event_is_ever_processed(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    await db.execute(
        "INSERT INTO notifier.routing_rules (event_type, channel, recipient) "
        "VALUES ('user.*', 'log', 'ops@example.com')"
    )
    with pytest.raises(Abort):
        await publish_then_abort(services, "user.gone")
    async with transaction(services.pool) as conn:
        committed = await publish(conn, NewEvent(type="user.signup"))

    # Once for process_event, once more for the deliver job it creates.
    for _ in range(2):
        await run_worker(services, wait=False, install_signal_handlers=False, name="drain")

    assert await rows(db, "SELECT id, processed_at IS NOT NULL AS done FROM notifier.events") == [
        {"id": committed.id, "done": True}
    ]
    assert await rows(db, "SELECT event_id, status FROM notifier.notifications") == [
        {"event_id": committed.id, "status": "sent"}
    ]


async def test_a_failing_statement_after_the_defer_rolls_back_the_job(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    async def publish_then_fail() -> None:
        async with transaction(services.pool) as conn:
            await publish(conn, NewEvent(type="user.signup"))
            await conn.execute("INSERT INTO notifier.events (type) VALUES ('')")

    with pytest.raises(psycopg.errors.CheckViolation):
        await publish_then_fail()

    assert await rows(db, "SELECT id FROM notifier.events") == []
    assert await rows(db, "SELECT id FROM procrastinate_jobs") == []


# --- notifications ---------------------------------------------------------------------


async def test_rolled_back_notifications_leave_neither_rows_nor_jobs(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    send_at = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)

    async def create_then_abort() -> None:
        async with transaction(services.pool) as conn:
            drafts = [
                draft(NotificationStatus.PENDING, send_at),
                draft(NotificationStatus.SKIPPED, send_at),
            ]
            created = await create_notifications(conn, DEFAULT_TENANT, drafts)
            assert [n.status for n in created] == ["pending", "skipped"]
            cursor = await conn.execute(
                "SELECT count(*) AS n FROM procrastinate_jobs WHERE task_name = %s", [DELIVER_TASK]
            )
            assert await cursor.fetchone() == {"n": 1}
            raise Abort

    with pytest.raises(Abort):
        await create_then_abort()

    assert await rows(db, "SELECT id FROM notifier.notifications") == []
    assert await jobs(db, DELIVER_TASK) == []


async def test_committed_notifications_leave_rows_and_jobs_for_the_pending_ones(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    send_at = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
    async with transaction(services.pool) as conn:
        pending, skipped = await create_notifications(
            conn,
            DEFAULT_TENANT,
            [
                draft(NotificationStatus.PENDING, send_at),
                draft(NotificationStatus.SKIPPED, send_at),
            ],
        )

    stored = await rows(
        db,
        "SELECT id, status, job_id, send_at, context FROM notifier.notifications ORDER BY status",
    )
    (job,) = await jobs(db, DELIVER_TASK)
    assert stored == [
        {
            "id": pending.id,
            "status": "pending",
            "job_id": job["id"],
            "send_at": send_at,
            "context": {"amount": 42},
        },
        {
            "id": skipped.id,
            "status": "skipped",
            "job_id": None,
            "send_at": send_at,
            "context": {"amount": 42},
        },
    ]
    assert job == {
        "id": job["id"],
        "status": "todo",
        "args": {"notification_id": str(pending.id), "tenant_id": DEFAULT_TENANT},
        "scheduled_at": send_at,
        "queue_name": "deliveries",
    }


async def test_failed_draft_is_stored_failed_with_its_error_and_no_job(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    now = datetime.datetime.now(UTC)
    broken = draft(NotificationStatus.PENDING, now)
    broken.error = "payload has no field 'email'"
    async with transaction(services.pool) as conn:
        (created,) = await create_notifications(conn, DEFAULT_TENANT, [broken])

    assert (created.status, created.last_error) == ("failed", "payload has no field 'email'")
    assert await jobs(db, DELIVER_TASK) == []


async def test_unknown_notification_id_in_a_deliver_job_is_harmless(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    job_id = await services.queue.configure_task(DELIVER_TASK).defer_async(
        notification_id=str(uuid.uuid4())
    )

    await run_worker(services, wait=False, install_signal_handlers=False, name="drain")

    assert await rows(
        db, "SELECT status::text AS status FROM procrastinate_jobs WHERE id = %s", job_id
    ) == [{"status": "succeeded"}]
