"""Digests: a rule's events of one key collected into one notification per window, whose
template sees them as ``events``; one digest per key and window, each event in exactly one,
also when a worker is SIGKILLed while processing them."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from tests.support import (
    WebhookReceiver,
    assert_problem,
    eventually,
    kill_worker,
    start_worker,
    stop_workers,
    worker_environment,
)


async def digest_rule(client: AsyncTestClient[Any], **fields: Any) -> dict[str, Any]:
    body = {
        "event_type": "comment.added",
        "channel": "log",
        "recipient_field": "email",
        "key": "{post_id}",
        "digest": {"window": "PT60S"},
    } | fields
    response = await client.post("/api/v1/rules/", json=body)
    assert response.status_code == 201, response.text
    rule: dict[str, Any] = response.json()
    return rule


def comment(post_id: int, n: int) -> dict[str, Any]:
    return {
        "type": "comment.added",
        "payload": {"post_id": post_id, "n": n, "email": "ada@example.com"},
    }


async def all_processed(db: psycopg.AsyncConnection[Any], count: int, timeout: float = 30) -> None:
    async def done() -> bool:
        cursor = await db.execute(
            "SELECT count(*) AS n FROM notifier.events WHERE processed_at IS NOT NULL"
        )
        return (await cursor.fetchone()) == {"n": count}

    await eventually(done, timeout=timeout)


async def digests(db: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    cursor = await db.execute(
        """
        SELECT n.id, n.key, n.status, n.digest_count, n.digest_open, n.context, n.send_at,
               n.created_at, j.status::text AS job
        FROM notifier.notifications AS n LEFT JOIN procrastinate_jobs AS j ON j.id = n.job_id
        ORDER BY n.key, n.created_at
        """
    )
    return list(await cursor.fetchall())


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({"key": None}, "key", id="no-key"),
        pytest.param({"date_field": "due"}, "date_field", id="with-date-field"),
        pytest.param({"digest": {"window": "PT0S"}}, "digest.window", id="window-zero"),
        pytest.param({"digest": {"window": "P8D"}}, "digest.window", id="window-over-a-week"),
        pytest.param({"digest": {"window": "soon"}}, "digest.window", id="window-not-a-duration"),
    ],
)
async def test_an_unusable_digest_is_a_422_naming_the_field(
    client: AsyncTestClient[Any], fields: dict[str, Any], field: str
) -> None:
    body = {
        "event_type": "comment.added",
        "channel": "log",
        "recipient_field": "email",
        "key": "{post_id}",
        "digest": {"window": "PT60S"},
    } | fields
    response = await client.post("/api/v1/rules/", json=body)

    assert_problem(response, 422, field)


async def test_events_of_one_key_in_a_window_make_one_digest(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    await digest_rule(client)
    published = []
    for post_id, n in [(1, 1), (1, 2), (2, 1), (1, 3)]:
        response = await client.post("/api/v1/events/", json=comment(post_id, n))
        assert response.status_code == 201, response.text
        published.append(response.json()["id"])
        await all_processed(db, len(published))  # in order, so the list order is known

    first, second = await digests(db)
    assert (first["key"], first["digest_count"], first["digest_open"]) == ("1", 3, True)
    assert [e["payload"]["n"] for e in first["context"]["events"]] == [1, 2, 3]
    assert [e["id"] for e in first["context"]["events"]] == [published[i] for i in (0, 1, 3)]
    assert (first["status"], first["job"]) == ("pending", "todo")
    assert (second["key"], second["digest_count"]) == ("2", 1)


async def test_a_digest_goes_out_when_its_window_ends_and_the_next_event_opens_another(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    worker: None,
    receiver: WebhookReceiver,
) -> None:
    template = await client.put(
        "/api/v1/templates/comments",
        json={
            "subject": "{{ events | length }} new comments",
            "text_body": "{% for e in events %}#{{ e.payload.n }} {% endfor %}",
        },
    )
    assert template.status_code == 201, template.text
    await digest_rule(
        client,
        channel="webhook",
        recipient_field=None,
        recipient=receiver.url,
        template="comments",
        digest={"window": "PT2S"},
    )
    for n in (1, 2):
        await client.post("/api/v1/events/", json=comment(7, n))
    await all_processed(db, 2)

    await eventually(lambda: _received(receiver, 1), timeout=20)
    (sent,) = receiver.received()
    assert sent.json()["data"]["subject"] == "2 new comments"
    assert sorted(sent.json()["data"]["text"].split()) == ["#1", "#2"]  # in processing order

    await client.post("/api/v1/events/", json=comment(7, 3))
    await all_processed(db, 3)
    earlier, later = await digests(db)
    assert (earlier["status"], earlier["digest_count"]) == ("sent", 2)
    assert (later["status"], later["digest_count"], later["digest_open"]) == ("pending", 1, True)


async def _received(receiver: WebhookReceiver, count: int) -> bool:
    return len(receiver.received()) >= count


@pytest.mark.serial
async def test_a_sigkilled_worker_leaves_every_event_in_exactly_one_digest(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    database_url: str,
    tmp_path: Path,
) -> None:
    await digest_rule(client)
    batch = [comment(post_id, n) for n in range(40) for post_id in (1, 2, 3)]
    response = await client.post("/api/v1/events/", json=batch)
    assert response.status_code == 201, response.text
    ids_of_key = {
        str(post_id): [e["id"] for e in response.json() if e["payload"]["post_id"] == post_id]
        for post_id in (1, 2, 3)
    }
    env = worker_environment(
        database_url, NOTIFIER_WORKER_CONCURRENCY="4", NOTIFIER_STALLED_WORKER_SECONDS="2"
    )

    async def start(name: str) -> asyncio.subprocess.Process:
        return await start_worker(env, tmp_path / f"{name}.log")

    async def processed_count() -> int:
        cursor = await db.execute(
            "SELECT count(*) AS n FROM notifier.events WHERE processed_at IS NOT NULL"
        )
        row = await cursor.fetchone()
        return int(row["n"]) if row else 0

    first = await start("killed")
    try:
        await eventually(lambda: _at_least(processed_count, 10), timeout=60, interval=0.01)
    finally:
        await kill_worker(first)
    killed_after = await processed_count()
    second = await start("recovering")
    try:
        await all_processed(db, len(batch), timeout=90)
    finally:
        await stop_workers([second])
    logs = "".join((tmp_path / f"{name}.log").read_text() for name in ("killed", "recovering"))

    assert killed_after < len(batch), "the kill came after the work was done"
    found = await digests(db)
    # One open digest per key, holding each of the key's events exactly once.
    assert sorted(d["key"] for d in found) == ["1", "2", "3"], logs
    for digest in found:
        ids = [e["id"] for e in digest["context"]["events"]]
        assert Counter(ids) == Counter(ids_of_key[digest["key"]]), logs
        assert digest["digest_count"] == len(ids)
        assert (digest["status"], digest["job"]) == ("pending", "todo")


async def _at_least(count: Any, wanted: int) -> bool:
    return int(await count()) >= wanted
