"""Publishing and reading events over REST."""

from __future__ import annotations

from typing import Any

import psycopg
from litestar.testing import AsyncTestClient

from tests.support import eventually


async def jobs(db: psycopg.AsyncConnection[Any], task_name: str) -> list[dict[str, Any]]:
    cursor = await db.execute(
        "SELECT id, status, args FROM procrastinate_jobs WHERE task_name = %s ORDER BY id",
        [task_name],
    )
    return list(await cursor.fetchall())


async def test_publish_stores_the_event_and_its_processing_job(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    response = await client.post(
        "/api/v1/events/", json={"type": "user.signup", "payload": {"email": "ada@example.com"}}
    )

    assert response.status_code == 201
    event = response.json()
    assert event["type"] == "user.signup"
    assert event["payload"] == {"email": "ada@example.com"}
    assert event["id"]
    assert event["created_at"]
    assert await jobs(db, "notifier.process_event") == [
        {"id": 1, "status": "todo", "args": {"event_id": event["id"]}}
    ]


async def test_published_event_is_processed_by_the_worker_into_notifications(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    rule = await client.post(
        "/api/v1/rules/",
        json={"event_type": "user.*", "channel": "log", "recipient_field": "email"},
    )
    assert rule.status_code == 201, rule.text

    published = await client.post(
        "/api/v1/events/", json={"type": "user.signup", "payload": {"email": "ada@example.com"}}
    )
    event_id = published.json()["id"]

    async def sent() -> list[dict[str, Any]]:
        response = await client.get(f"/api/v1/events/{event_id}")
        notifications = response.json()["notifications"]
        return [n for n in notifications if n["status"] == "sent"]

    (notification,) = await eventually(sent)
    assert notification["recipient"] == "ada@example.com"
    assert notification["channel"] == "log"
