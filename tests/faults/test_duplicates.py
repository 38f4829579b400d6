"""Duplicate submissions at once: one event, one job, one answer (REST and the SQL outbox)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import httpx
import psycopg

from tests.faults.support import rows, size
from tests.figures import Figures


async def process_event_jobs(db: psycopg.AsyncConnection[Any]) -> int:
    found = await rows(
        db,
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE task_name = 'notifier.process_event'",
    )
    return int(found[0]["n"])


async def test_concurrent_publishes_with_one_idempotency_key_make_one_event(
    db: psycopg.AsyncConnection[Any], live_api: str, api_headers: dict[str, str], figure: Figures
) -> None:
    concurrent = size(50, 50)
    body = {"type": "user.signup", "payload": {"email": "ada@example.com"}}
    headers = {"Idempotency-Key": "signup-storm"}
    # One connection per request, all opened first, so the requests really overlap.
    limits = httpx.Limits(max_connections=concurrent)
    async with httpx.AsyncClient(
        base_url=live_api, headers=api_headers, timeout=60, limits=limits
    ) as http:
        responses = await asyncio.gather(
            *(http.post("/api/v1/events/", json=body, headers=headers) for _ in range(concurrent))
        )

    statuses = {response.status_code for response in responses}
    answers = {response.content for response in responses}
    assert statuses == {201}, [r.text for r in responses if r.status_code != 201]
    assert len(answers) == 1  # byte for byte the same answer
    assert len(await rows(db, "SELECT id FROM notifier.events")) == 1
    assert await process_event_jobs(db) == 1
    figure(
        f"{concurrent} concurrent POST /events with one Idempotency-Key: statuses {statuses}, "
        f"{len(answers)} distinct body, 1 event, 1 job"
    )


async def test_concurrent_notification_requests_with_one_key_schedule_one(
    db: psycopg.AsyncConnection[Any], live_api: str, api_headers: dict[str, str], figure: Figures
) -> None:
    concurrent = size(50, 50)
    target = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    body = {
        "notification_type": "contract.renewal",
        "entity_id": "contract-17",
        "target_date": target.isoformat(),
        "email": "ada@example.com",
    }
    headers = {"Idempotency-Key": "renewal-17"}
    limits = httpx.Limits(max_connections=concurrent)
    async with httpx.AsyncClient(
        base_url=live_api, headers=api_headers, timeout=60, limits=limits
    ) as http:
        responses = await asyncio.gather(
            *(
                http.post("/api/v1/notifications/", json=body, headers=headers)
                for _ in range(concurrent)
            )
        )

    assert {response.status_code for response in responses} == {201}
    assert len({response.content for response in responses}) == 1
    assert len(await rows(db, "SELECT id FROM notifier.notifications")) == 1
    deliver_jobs = await rows(
        db, "SELECT id FROM procrastinate_jobs WHERE task_name = 'notifier.deliver'"
    )
    assert len(deliver_jobs) == 1
    figure(
        f"{concurrent} concurrent POST /notifications with one Idempotency-Key: "
        "1 notification, 1 deliver job, 1 distinct answer"
    )


async def test_concurrent_outbox_inserts_with_one_key_make_one_event(
    database_url: str, db: psycopg.AsyncConnection[Any], figure: Figures
) -> None:
    concurrent = size(50, 20)

    async def produce() -> None:
        conn = await psycopg.AsyncConnection.connect(database_url)
        async with conn, conn.transaction():
            await conn.execute(
                "INSERT INTO notifier.outbox (type, payload, source, idempotency_key) "
                "VALUES ('invoice.paid', '{\"invoice\": 7}', 'billing', 'invoice-7-paid')"
            )
            # Keep the transaction open a moment: the others insert the same key
            # meanwhile and wait on this one's commit.
            await asyncio.sleep(0.2)

    results = await asyncio.gather(*(produce() for _ in range(concurrent)), return_exceptions=True)

    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []  # a repeated key is skipped, never an error for the producer
    events = await rows(db, "SELECT id, producer FROM notifier.events")
    assert len(events) == 1, events
    assert await process_event_jobs(db) == 1
    assert await rows(db, "SELECT id FROM notifier.outbox") == []
    figure(
        f"{concurrent} concurrent outbox transactions with one source+idempotency_key: "
        f"all {concurrent} committed, 1 event, 1 job"
    )
