"""Listening workers are woken once per transaction for jobs due now, never for later ones."""

from __future__ import annotations

import datetime
from typing import Any

import psycopg
from litestar.testing import AsyncTestClient

WAKE_UP = '{"type": "job_inserted"}'


async def wake_ups_during(
    database_url: str, client: AsyncTestClient[Any], body: dict[str, Any]
) -> list[str]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute('LISTEN "procrastinate_queue_v1#deliveries"')
        response = await client.post("/api/v1/notifications/", json=body)
        assert response.status_code == 201, response.text
        return [n.payload async for n in listener.notifies(timeout=0.5)]


def notification(target: datetime.datetime) -> dict[str, Any]:
    return {
        "notification_type": "invoice.due",
        "entity_id": "invoice-1",
        "target_date": target.isoformat(),
        "lead_time_days": 7,
        "email": "ada@example.com",
    }


async def test_a_notification_due_now_wakes_the_delivery_workers(
    client: AsyncTestClient[Any], database_url: str
) -> None:
    overdue = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
        days=3
    )  # 7 days' notice: due now

    assert await wake_ups_during(database_url, client, notification(overdue)) == [WAKE_UP]


async def test_a_notification_due_later_wakes_nobody(
    client: AsyncTestClient[Any], database_url: str
) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)

    assert await wake_ups_during(database_url, client, notification(later)) == []


async def test_reminders_that_process_event_makes_due_now_wake_the_delivery_workers(
    client: AsyncTestClient[Any], database_url: str, worker: None
) -> None:
    """process_event stamps "now" inside its transaction, after the database's now()."""
    await client.post(
        "/api/v1/rules/",
        json={"event_type": "user.signup", "channel": "log", "recipient_field": "email"},
    )
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute('LISTEN "procrastinate_queue_v1#deliveries"')
        await client.post(
            "/api/v1/events/", json={"type": "user.signup", "payload": {"email": "a@b.c"}}
        )
        wake_ups = [n.payload async for n in listener.notifies(timeout=3.0)]

    assert wake_ups == [WAKE_UP]
