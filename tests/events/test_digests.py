"""Digests: a rule's events of one key collected into one notification per window, whose
template sees them as ``events``; one digest per key and window, each event in exactly one,
also when a worker is SIGKILLed while processing them."""

from __future__ import annotations

import asyncio
import datetime
import uuid
import zoneinfo
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.events import service as events_service
from notifier.notifications.localtime import next_wall_time
from notifier.services import Services
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
        pytest.param({"digest": {}}, "digest", id="neither-window-nor-until"),
        pytest.param(
            {"digest": {"window": "PT1M", "until": "09:00"}}, "digest.until", id="window-and-until"
        ),
        pytest.param({"digest": {"until": "24:00"}}, "digest.until", id="until-not-a-time"),
        pytest.param({"digest": {"until": "9am"}}, "digest.until", id="until-not-hh-mm"),
        pytest.param(
            {"digest": {"until": "09:00"}, "timezone": "Mars/Olympus"}, "timezone", id="until-zone"
        ),
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


def wall_clock_in(zone: str, ahead: datetime.timedelta, *, seconds: bool = False) -> str:
    """The time of day in ``zone`` ``ahead`` from now, as a rule's ``digest.until``."""
    local = (datetime.datetime.now(datetime.UTC) + ahead).astimezone(zoneinfo.ZoneInfo(zone))
    return local.strftime("%H:%M:%S" if seconds else "%H:%M")


@pytest.mark.serial
@pytest.mark.parametrize(
    "window",
    [
        pytest.param(lambda: {"digest": {"window": "PT60S"}}, id="rolling-window"),
        pytest.param(
            lambda: {
                "digest": {"until": wall_clock_in("Asia/Kolkata", datetime.timedelta(hours=6))},
                "timezone": "Asia/Kolkata",
            },
            id="until-a-time-of-day",
        ),
    ],
)
async def test_a_sigkilled_worker_leaves_every_event_in_exactly_one_digest(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    database_url: str,
    tmp_path: Path,
    window: Any,
) -> None:
    await digest_rule(client, **window())
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


# --- until a time of day on the recipient's clock -------------------------------------------


async def test_events_until_a_time_of_day_make_one_digest_due_then_on_the_recipients_clock(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    until = wall_clock_in("America/New_York", datetime.timedelta(hours=3))
    rule = await digest_rule(
        client,
        digest={"until": until},
        timezone="UTC",  # the fallback: the payload names each recipient's zone
        timezone_field="tz",
    )
    assert rule["digest"] == {"until": until}  # as given, without a "window": null
    before = datetime.datetime.now(datetime.UTC)
    for n in (1, 2, 3):
        event = comment(5, n)
        event["payload"]["tz"] = "America/New_York"
        response = await client.post("/api/v1/events/", json=event)
        assert response.status_code == 201, response.text
    await all_processed(db, 3)

    (digest,) = await digests(db)
    assert (digest["digest_count"], digest["status"], digest["job"]) == (3, "pending", "todo")
    new_york = zoneinfo.ZoneInfo("America/New_York")
    expected = next_wall_time(before, datetime.time.fromisoformat(until), new_york)
    assert digest["send_at"] == expected
    assert digest["send_at"].astimezone(new_york).strftime("%H:%M") == until


async def test_a_digest_goes_out_at_its_time_of_day_and_the_next_waits_for_the_next_day(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    worker: None,
    receiver: WebhookReceiver,
) -> None:
    zone = "Pacific/Auckland"
    # Far enough ahead that both events are processed before it, even on a loaded machine.
    until = wall_clock_in(zone, datetime.timedelta(seconds=12), seconds=True)
    await digest_rule(
        client,
        channel="webhook",
        recipient_field=None,
        recipient=receiver.url,
        digest={"until": until},
        timezone=zone,
    )
    for n in (1, 2):
        await client.post("/api/v1/events/", json=comment(9, n))
    await all_processed(db, 2)

    await eventually(lambda: _received(receiver, 1), timeout=40)
    await client.post("/api/v1/events/", json=comment(9, 3))
    await all_processed(db, 3)

    sent, following = await digests(db)
    assert (sent["status"], sent["digest_count"]) == ("sent", 2)
    assert (following["status"], following["digest_count"]) == ("pending", 1)
    # The same time of day, a calendar day later on Auckland's clock.
    auckland = zoneinfo.ZoneInfo(zone)
    first, second = (d["send_at"].astimezone(auckland) for d in (sent, following))
    assert first.time() == second.time() == datetime.time.fromisoformat(until)
    assert second.date() == first.date() + datetime.timedelta(days=1)


@pytest.mark.parametrize(
    ("opened_at", "until", "due"),
    [
        # Berlin springs forward on 2027-03-28 (02:00 -> 03:00): 09:00 is 07:00 UTC that day,
        # 08:00 UTC the day before.
        pytest.param(
            "2027-03-27T10:00:00+00:00", "09:00", "2027-03-28T07:00:00+00:00", id="spring"
        ),
        pytest.param(
            "2027-03-27T07:59:00+00:00", "09:00", "2027-03-27T08:00:00+00:00", id="before"
        ),
        # 02:30 does not exist that night: the digest goes at 03:30 CEST.
        pytest.param("2027-03-27T22:00:00+00:00", "02:30", "2027-03-28T01:30:00+00:00", id="gap"),
        # Berlin falls back on 2027-10-31 (03:00 -> 02:00): 02:30 happens twice; the first.
        pytest.param("2027-10-30T22:00:00+00:00", "02:30", "2027-10-31T00:30:00+00:00", id="fold"),
    ],
)
async def test_a_digest_until_a_time_of_day_across_a_dst_change(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    services: Services,
    opened_at: str,
    until: str,
    due: str,
) -> None:
    await digest_rule(client, digest={"until": until}, timezone="Europe/Berlin")
    response = await client.post("/api/v1/events/", json=comment(3, 1))
    assert response.status_code == 201, response.text

    # Processed as if at `opened_at` (no worker runs in this test: the clock is the test's).
    await events_service.process(
        services.pool,
        services.metrics,
        uuid.UUID(response.json()["id"]),
        max_notifications=10,
        now=datetime.datetime.fromisoformat(opened_at),
    )

    (digest,) = await digests(db)
    assert digest["send_at"] == datetime.datetime.fromisoformat(due)
