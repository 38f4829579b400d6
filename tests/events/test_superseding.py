"""Keys on rules: a newer event for a key supersedes the pending reminders of an older one;
a late older event is superseded itself; a cancel rule cancels; and all of it holds with
two real worker processes deciding about one key at the same moment."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.events.queries import KeyHolder
from notifier.events.superseding import arrives_late, superseded_on_arrival
from notifier.notifications.scheduling import NotificationDraft, PlannedSend
from notifier.notifications.schemas import NotificationStatus
from tests.hostile_receiver import HostileReceiver
from tests.support import (
    assert_problem,
    eventually,
    start_worker,
    stop_workers,
    worker_environment,
)

UTC = datetime.UTC
DAY = datetime.timedelta(days=1)
NOW = datetime.datetime.now(UTC)


async def create_rule(client: AsyncTestClient[Any], **fields: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/rules/", json=fields)
    assert response.status_code == 201, response.text
    rule: dict[str, Any] = response.json()
    return rule


async def expiry_rule(client: AsyncTestClient[Any], **fields: Any) -> dict[str, Any]:
    """Reminders 7 days and 1 day before a password expires, one series per user."""
    return await create_rule(
        client,
        event_type="password.expiring",
        channel="log",
        recipient_field="email",
        date_field="expires_at",
        lead_times=["P7D", "P1D"],
        key="{user_id}",
        **fields,
    )


async def publish(
    client: AsyncTestClient[Any],
    event_type: str,
    payload: dict[str, Any],
    occurred_at: datetime.datetime | None = None,
) -> str:
    body: dict[str, Any] = {"type": event_type, "payload": payload}
    if occurred_at is not None:
        body["occurred_at"] = occurred_at.isoformat()
    response = await client.post("/api/v1/events/", json=body)
    assert response.status_code == 201, response.text
    event_id: str = response.json()["id"]
    return event_id


def expiring(user_id: int, expires_in_days: float) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "email": f"user{user_id}@example.com",
        "expires_at": (NOW + expires_in_days * DAY).isoformat(),
    }


async def processed(db: psycopg.AsyncConnection[Any], *event_ids: str, timeout: float = 20) -> None:
    async def done() -> bool:
        cursor = await db.execute(
            "SELECT count(*) AS n FROM notifier.events WHERE id = ANY(%s::uuid[]) "
            "AND processed_at IS NOT NULL",
            [list(event_ids)],
        )
        row = await cursor.fetchone()
        return row is not None and row["n"] == len(event_ids)

    await eventually(done, timeout=timeout)


async def notifications_of(db: psycopg.AsyncConnection[Any], event_id: str) -> list[dict[str, Any]]:
    cursor = await db.execute(
        """
        SELECT n.id, n.status, n.key, n.cancelled_by_event_id, n.job_id, j.status::text AS job
        FROM notifier.notifications AS n LEFT JOIN procrastinate_jobs AS j ON j.id = n.job_id
        WHERE n.event_id = %s ORDER BY n.lead_time DESC
        """,
        [event_id],
    )
    return list(await cursor.fetchall())


# --- pure decisions ---------------------------------------------------------------------


def test_an_event_is_late_only_when_strictly_older_than_the_key_holder() -> None:
    holder = KeyHolder(uuid.uuid4(), NOW)

    assert not arrives_late(None, NOW - DAY)
    assert arrives_late(holder, NOW - datetime.timedelta(microseconds=1))
    assert not arrives_late(holder, NOW)  # a tie goes to the one processed last
    assert not arrives_late(holder, NOW + DAY)


def test_only_drafts_of_late_keys_are_stored_superseded_by_the_holder() -> None:
    rule_id, holder = uuid.uuid4(), KeyHolder(uuid.uuid4(), NOW)
    pending = PlannedSend(DAY, NOW + DAY, NotificationStatus.PENDING)

    def draft(key: str | None, error: str | None = None) -> NotificationDraft:
        return NotificationDraft(
            notification_type="password.expiring",
            channel="log",
            recipient="ada@example.com",
            send=pending,
            target_date=NOW + 2 * DAY,
            rule_id=rule_id,
            key=key,
            error=error,
        )

    late, other, failed = superseded_on_arrival(
        [draft("42"), draft("43"), draft("42", error="no email")], {(rule_id, "42"): holder}
    )

    assert (late.send.status, late.cancelled_by_event_id) == (
        NotificationStatus.SUPERSEDED,
        holder.event_id,
    )
    assert late.send.send_at == pending.send_at
    assert other.send.status is NotificationStatus.PENDING
    assert failed.send.status is NotificationStatus.PENDING  # stored failed, by its error
    assert failed.cancelled_by_event_id is None


# --- rules with keys over the API -------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        pytest.param({"key": "user"}, "key", id="no-field-in-braces"),
        pytest.param({"key": "{user id}"}, "key", id="field-not-a-path"),
        pytest.param({"key": "{user_id}}"}, "key", id="stray-brace"),
        pytest.param({"key": "{a}" * 11}, "key", id="too-many-fields"),
        pytest.param({"key": "{a}" + "x" * 200}, "key", id="too-long"),
        pytest.param({"action": "cancel"}, "key", id="cancel-without-key"),
        pytest.param(
            {"action": "cancel", "key": "{id}", "channel": "log"},
            "channel",
            id="cancel-with-channel",
        ),
        pytest.param({"action": "notify", "key": "{id}"}, "channel", id="notify-without-channel"),
    ],
)
async def test_an_unusable_key_or_action_is_a_422_naming_the_field(
    client: AsyncTestClient[Any], fields: dict[str, Any], field: str
) -> None:
    body = {"event_type": "password.expiring"} | fields
    if fields.get("action", "notify") == "notify" and "channel" not in fields:
        body.setdefault("recipient_field", "email")
    response = await client.post("/api/v1/rules/", json=body)

    assert_problem(response, 422, field)


async def test_a_new_event_for_a_key_supersedes_the_pending_reminders_of_the_old_one(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    rule = await expiry_rule(client)
    old = await publish(client, "password.expiring", expiring(42, expires_in_days=10))
    await processed(db, old)
    other_user = await publish(client, "password.expiring", expiring(43, expires_in_days=10))
    await processed(db, other_user)

    new = await publish(client, "password.expiring", expiring(42, expires_in_days=30))
    await processed(db, new)

    old_ones, new_ones = await notifications_of(db, old), await notifications_of(db, new)
    assert [(n["status"], n["key"], n["job"]) for n in old_ones] == [
        ("superseded", "42", "cancelled")
    ] * 2
    assert {n["cancelled_by_event_id"] for n in old_ones} == {uuid.UUID(new)}
    assert [(n["status"], n["key"], n["job"]) for n in new_ones] == [("pending", "42", "todo")] * 2
    # Another key of the same rule is not touched.
    assert {n["status"] for n in await notifications_of(db, other_user)} == {"pending"}
    shown = await client.get(f"/api/v1/notifications/{old_ones[0]['id']}")
    assert shown.json()["status"] == "superseded"
    assert shown.json()["cancelled_by_event_id"] == new
    assert shown.json()["rule_id"] == rule["id"]


async def test_keys_belong_to_their_rule_and_tenant(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    worker: None,
    create_api_key: Any,
) -> None:
    await expiry_rule(client)
    await expiry_rule(client, name="by sms too")  # same key template, a rule of its own
    other_key = await create_api_key("acme")
    other = {"Authorization": f"Bearer {other_key}"}
    response = await client.post(
        "/api/v1/rules/",
        headers=other,
        json={
            "event_type": "password.expiring",
            "channel": "log",
            "recipient_field": "email",
            "date_field": "expires_at",
            "key": "{user_id}",
        },
    )
    assert response.status_code == 201, response.text
    theirs = await client.post(
        "/api/v1/events/",
        headers=other,
        json={"type": "password.expiring", "payload": expiring(42, expires_in_days=10)},
    )
    first = await publish(client, "password.expiring", expiring(42, expires_in_days=10))
    await processed(db, first, theirs.json()["id"])
    second = await publish(client, "password.expiring", expiring(42, expires_in_days=20))
    await processed(db, second)

    # Each of the two rules superseded its own two reminders; the other tenant's stand.
    assert [n["status"] for n in await notifications_of(db, first)] == ["superseded"] * 4
    assert [n["status"] for n in await notifications_of(db, second)] == ["pending"] * 4
    assert [n["status"] for n in await notifications_of(db, theirs.json()["id"])] == ["pending"]


async def test_a_reminder_being_sent_is_not_superseded_the_new_event_waits_for_it(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    worker: None,
    hostile: HostileReceiver,
) -> None:
    await create_rule(
        client,
        event_type="order.shipped",
        channel="webhook",
        recipient=hostile.url + "/hold",
        key="{order_id}",
    )
    first = await publish(client, "order.shipped", {"order_id": 1})
    await eventually(lambda: _arrived(hostile, 1))  # its send is in flight, its row locked

    second = await publish(client, "order.shipped", {"order_id": 1})

    async def superseding_waits() -> bool:
        cursor = await db.execute(
            "SELECT count(*) AS n FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND query LIKE %s",
            ["%WITH locked AS%"],
        )
        return (await cursor.fetchone()) == {"n": 1}

    await eventually(superseding_waits)
    hostile.release()
    await processed(db, second)

    (sent,) = await notifications_of(db, first)
    assert (sent["status"], sent["cancelled_by_event_id"]) == ("sent", None)
    await eventually(lambda: _arrived(hostile, 2))  # the new one goes out too


async def _arrived(hostile: HostileReceiver, count: int) -> bool:
    return len(hostile.snapshot()) >= count


async def test_an_older_event_arriving_late_is_superseded_itself(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    await expiry_rule(client)
    newer = await publish(
        client, "password.expiring", expiring(42, expires_in_days=30), occurred_at=NOW
    )
    await processed(db, newer)

    late = await publish(
        client,
        "password.expiring",
        expiring(42, expires_in_days=10),
        occurred_at=NOW - datetime.timedelta(hours=1),
    )
    await processed(db, late)

    assert [(n["status"], n["job_id"]) for n in await notifications_of(db, late)] == [
        ("superseded", None)
    ] * 2
    assert {n["cancelled_by_event_id"] for n in await notifications_of(db, late)} == {
        uuid.UUID(newer)
    }
    assert [n["status"] for n in await notifications_of(db, newer)] == ["pending"] * 2


async def test_a_cancel_rule_cancels_the_pending_reminders_of_its_key_and_makes_none(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    await create_rule(
        client,
        event_type="subscription.expiring",
        channel="log",
        recipient_field="email",
        date_field="expires_at",
        lead_times=["P7D", "P1D"],
        key="sub-{subscription.id}",
    )
    await create_rule(
        client, event_type="subscription.renewed", action="cancel", key="sub-{subscription.id}"
    )
    payload = {"subscription": {"id": 7}, "email": "ada@example.com"}
    reminded = await publish(
        client,
        "subscription.expiring",
        payload | {"expires_at": (NOW + 20 * DAY).isoformat()},
        occurred_at=NOW - datetime.timedelta(hours=2),
    )
    other = await publish(
        client,
        "subscription.expiring",
        {
            "subscription": {"id": 8},
            "email": "bob@example.com",
            "expires_at": (NOW + 20 * DAY).isoformat(),
        },
    )
    await processed(db, reminded, other)

    renewed = await publish(client, "subscription.renewed", {"subscription": {"id": 7}})
    await processed(db, renewed)

    assert await notifications_of(db, renewed) == []
    assert [(n["status"], n["job"]) for n in await notifications_of(db, reminded)] == [
        ("cancelled", "cancelled")
    ] * 2
    assert {n["cancelled_by_event_id"] for n in await notifications_of(db, reminded)} == {
        uuid.UUID(renewed)
    }
    assert [n["status"] for n in await notifications_of(db, other)] == ["pending"] * 2

    # An expiring event older than the renewal, arriving after it, changes nothing.
    late = await publish(
        client,
        "subscription.expiring",
        payload | {"expires_at": (NOW + 20 * DAY).isoformat()},
        occurred_at=NOW - datetime.timedelta(hours=1),
    )
    await processed(db, late)
    assert [n["status"] for n in await notifications_of(db, late)] == ["superseded"] * 2


async def test_a_cancel_rule_whose_key_is_missing_says_so_on_the_event(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    await create_rule(
        client, event_type="subscription.renewed", action="cancel", key="{subscription.id}"
    )
    renewed = await publish(client, "subscription.renewed", {"id": 7})
    await processed(db, renewed)

    event = (await client.get(f"/api/v1/events/{renewed}")).json()
    assert "subscription.id" in event["processing_error"]


async def test_the_sql_outbox_supersedes_through_the_same_rules(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    await expiry_rule(client)
    for days in (10, 30):
        await db.execute(
            "INSERT INTO notifier.outbox (type, payload) VALUES ('password.expiring', %s)",
            [psycopg.types.json.Jsonb(expiring(42, expires_in_days=days))],
        )

    async def settled() -> list[dict[str, Any]] | None:
        cursor = await db.execute(
            "SELECT status, target_date FROM notifier.notifications ORDER BY target_date, lead_time"
        )
        rows = list(await cursor.fetchall())
        return rows if len(rows) == 4 and all(r["status"] != "pending" for r in rows[:2]) else None

    rows = await eventually(settled, timeout=20)
    assert [r["status"] for r in rows] == ["superseded", "superseded", "pending", "pending"]


# --- two worker processes, one key ------------------------------------------------------


async def start_workers(database_url: str, tmp_path: Path) -> list[asyncio.subprocess.Process]:
    """Two `notifier worker` processes on the test's database's events queue."""
    # Two slots each, and event batches of two: with more, one worker could take the whole
    # publish in its first batches before the other woke, and the test would see no key
    # split between them; batches of two (a user's three events never fit one) still run
    # the batched path.
    env = worker_environment(
        database_url, NOTIFIER_WORKER_CONCURRENCY="2", NOTIFIER_EVENT_BATCH_SIZE="2"
    )
    return [await start_worker(env, tmp_path / f"worker-{index}.log") for index in range(2)]


@pytest.mark.serial
async def test_two_workers_processing_events_of_one_key_at_once_leave_the_newest_standing(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    database_url: str,
    tmp_path: Path,
) -> None:
    await expiry_rule(client)
    # Enough work for both: with 30 users, one worker processed all 90 events within half
    # a second, before the other took any.
    users = range(100)
    batch: list[dict[str, Any]] = []
    newest: dict[int, int] = {}
    # Three events per user, the newest by time first for some users and last for others,
    # in one batch: the two workers take a user's events at the same moment.
    for user in users:
        times = [NOW - datetime.timedelta(minutes=m) for m in (30, 20, 10)]
        if user % 2:
            times.reverse()
        newest[user] = len(batch) + max(range(3), key=lambda i: times[i])
        batch += [
            {
                "type": "password.expiring",
                "payload": expiring(user, 10 + i),
                "occurred_at": when.isoformat(),
            }
            for i, when in enumerate(times)
        ]
    processes = await start_workers(database_url, tmp_path)
    try:

        async def both_running() -> bool:
            cursor = await db.execute("SELECT count(*) AS n FROM procrastinate_workers")
            return (await cursor.fetchone()) == {"n": 2}

        await eventually(both_running, timeout=60)
        response = await client.post("/api/v1/events/", json=batch)
        assert response.status_code == 201, response.text
        event_ids = [event["id"] for event in response.json()]
        await processed(db, *event_ids, timeout=60)
    finally:
        await stop_workers(processes)
    worker_logs = [(tmp_path / f"worker-{i}.log").read_text() for i in range(2)]
    logs = "".join(worker_logs)
    # Which worker processed each event, from its own log line: a job's worker_id does not
    # say it for the events a batch took along (their jobs never ran on their own).
    processed_by = {
        event_id: [i for i, log in enumerate(worker_logs) if f"event {event_id} (" in log]
        for event_id in event_ids
    }
    assert all(len(workers) == 1 for workers in processed_by.values()), processed_by
    worker_of = {event_id: workers[0] for event_id, workers in processed_by.items()}

    # Both workers took events, and took events of one user between them.
    assert set(worker_of.values()) == {0, 1}, logs
    split = [
        user for user in users if len({worker_of[event_ids[3 * user + i]] for i in range(3)}) == 2
    ]
    assert split, worker_of
    for user in users:
        for i in range(3):
            index = 3 * user + i
            statuses = [
                (n["status"], n["job"]) for n in await notifications_of(db, event_ids[index])
            ]
            if index == newest[user]:
                assert statuses == [("pending", "todo")] * 2, (user, logs)
            else:
                assert statuses in (
                    [("superseded", None)] * 2,  # arrived after the newest
                    [("superseded", "cancelled")] * 2,  # superseded by the newest
                ), (user, statuses, logs)
    cursor = await db.execute(
        "SELECT key, count(*) AS n FROM notifier.notifications WHERE status = 'pending' "
        "GROUP BY key"
    )
    assert {row["key"]: row["n"] for row in await cursor.fetchall()} == {str(u): 2 for u in users}


async def test_a_cloudevent_whose_time_is_older_arrives_late_and_is_superseded_itself(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    """CloudEvents ``time`` orders a key's events as ``occurred_at`` does."""
    await expiry_rule(client)

    async def cloudevent(event_id: str, expires_in_days: float, at: datetime.datetime) -> str:
        response = await client.post(
            "/api/v1/events/",
            json={
                "specversion": "1.0",
                "id": event_id,
                "source": "https://accounts.example.com",
                "type": "password.expiring",
                "time": at.isoformat(),
                "data": expiring(42, expires_in_days),
            },
            headers={"content-type": "application/cloudevents+json"},
        )
        assert response.status_code == 201, response.text
        stored: str = response.json()["id"]
        return stored

    newer = await cloudevent("change-2", 30, NOW)
    await processed(db, newer)
    late = await cloudevent("change-1", 10, NOW - datetime.timedelta(minutes=5))
    await processed(db, late)

    assert [n["status"] for n in await notifications_of(db, late)] == ["superseded"] * 2
    assert {n["cancelled_by_event_id"] for n in await notifications_of(db, late)} == {
        uuid.UUID(newer)
    }
    assert [n["status"] for n in await notifications_of(db, newer)] == ["pending"] * 2
