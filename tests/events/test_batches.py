"""A process_event job takes other due events of its tenant along (NOTIFIER_EVENT_BATCH_SIZE).

The events are published while no worker runs; then a worker running one job at a time
starts, so the first job fetched is the one that takes the others along. Failures are made
by real triggers in the test's database, raising for one event's rows.
"""

from __future__ import annotations

import datetime
import functools
import uuid
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.trace import SpanKind

from notifier.events import service
from notifier.services import Services
from notifier.settings import Settings
from notifier.telemetry import tracing
from notifier.telemetry.tracing import current_traceparent
from tests.events.test_superseding import expiring, expiry_rule, notifications_of, processed
from tests.events.test_superseding import publish as publish_at
from tests.notifications.test_delivery import running_worker
from tests.support import WebhookReceiver, eventually
from tests.telemetry.test_spans import recording_provider

UTC = datetime.UTC
HOUR = datetime.timedelta(hours=1)


async def started_jobs(db: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """How often each event's process_event job was fetched and run by a worker."""
    cursor = await db.execute(
        """
        SELECT j.args->>'event_id' AS event_id, count(e.id) AS started
        FROM procrastinate_jobs j
        LEFT JOIN procrastinate_events e ON e.job_id = j.id AND e.type = 'started'
        WHERE j.task_name = 'notifier.process_event'
        GROUP BY 1
        """
    )
    return {row["event_id"]: row["started"] for row in await cursor.fetchall()}


async def job_statuses(db: psycopg.AsyncConnection[Any]) -> dict[str, str]:
    cursor = await db.execute(
        """
        SELECT args->>'event_id' AS event_id, status::text FROM procrastinate_jobs
        WHERE task_name = 'notifier.process_event'
        """
    )
    return {row["event_id"]: row["status"] for row in await cursor.fetchall()}


async def signup_rule(client: AsyncTestClient[Any], channel: str = "log", **fields: Any) -> None:
    body = {"event_type": "user.signup", "channel": channel, "recipient_field": "email"}
    response = await client.post("/api/v1/rules/", json=body | fields)
    assert response.status_code == 201, response.text


async def publish(client: AsyncTestClient[Any], payload: dict[str, Any]) -> str:
    response = await client.post(
        "/api/v1/events/", json={"type": "user.signup", "payload": payload}
    )
    assert response.status_code == 201, response.text
    event_id: str = response.json()["id"]
    return event_id


async def sent_to(db: psycopg.AsyncConnection[Any], event_id: str) -> list[str]:
    cursor = await db.execute(
        "SELECT recipient FROM notifier.notifications WHERE event_id = %s AND status = 'sent'",
        [event_id],
    )
    return [row["recipient"] for row in await cursor.fetchall()]


async def test_one_job_processes_a_batch_of_rest_events_and_finishes_the_jobs_taken_along(
    client: AsyncTestClient[Any], settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    await signup_rule(client)
    ids = [await publish(client, {"email": f"user{n}@example.com"}) for n in range(12)]

    async with running_worker(settings, worker_concurrency=1, event_batch_size=50):
        await processed(db, *ids)
        for n, event_id in enumerate(ids):
            assert await eventually(functools.partial(sent_to, db, event_id)) == [
                f"user{n}@example.com"
            ]

    assert await started_jobs(db) == {ids[0]: 1} | dict.fromkeys(ids[1:], 0)
    assert set((await job_statuses(db)).values()) == {"succeeded"}
    # Each event made its one notification, each with a deliver job of its own.
    cursor = await db.execute(
        "SELECT event_id::text, count(*) AS n, count(job_id) AS jobs "
        "FROM notifier.notifications GROUP BY 1"
    )
    assert {
        row["event_id"]: (row["n"], row["jobs"]) for row in await cursor.fetchall()
    } == dict.fromkeys(ids, (1, 1))


async def test_a_batch_deletes_its_jobs_by_default(
    client: AsyncTestClient[Any], settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    """NOTIFIER_KEEP_SUCCEEDED_JOBS off (the default; the tests' settings keep them): the
    batch's own process_event job and the ones it took along leave no row and no event."""
    await signup_rule(client)
    ids = [await publish(client, {"email": f"user{n}@example.com"}) for n in range(6)]

    async with running_worker(
        settings, worker_concurrency=1, event_batch_size=50, keep_succeeded_jobs=False
    ):
        await processed(db, *ids)

        async def no_job_left() -> bool:
            return await job_statuses(db) == {}

        await eventually(no_job_left, timeout=10)

    cursor = await db.execute(
        "SELECT count(*) AS n FROM procrastinate_events e"
        " LEFT JOIN procrastinate_jobs j ON j.id = e.job_id WHERE j.id IS NULL"
    )
    assert await cursor.fetchone() == {"n": 0}
    cursor = await db.execute(
        "SELECT count(*) AS n FROM notifier.notifications WHERE event_id = ANY(%s::uuid[])",
        [ids],
    )
    assert await cursor.fetchone() == {"n": 6}


async def test_batches_are_bounded_by_the_batch_size(
    client: AsyncTestClient[Any], settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    await signup_rule(client)
    ids = [await publish(client, {"email": f"user{n}@example.com"}) for n in range(7)]

    async with running_worker(settings, worker_concurrency=1, event_batch_size=3):
        await processed(db, *ids)

    started = await started_jobs(db)
    # Jobs 1, 4 and 7 ran, each taking along the two after it (7 had none left).
    assert [started[event_id] for event_id in ids] == [1, 0, 0, 1, 0, 0, 1]


async def test_batch_size_one_processes_each_event_in_its_own_job(
    client: AsyncTestClient[Any], settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    await signup_rule(client)
    ids = [await publish(client, {"email": f"user{n}@example.com"}) for n in range(4)]

    async with running_worker(settings, worker_concurrency=1, event_batch_size=1):
        await processed(db, *ids)

    assert await started_jobs(db) == dict.fromkeys(ids, 1)


async def test_outbox_rows_of_one_transaction_are_processed_in_one_batch_and_delivered(
    client: AsyncTestClient[Any],
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    await client.post(
        "/api/v1/rules/",
        json={"event_type": "bulk.*", "channel": "webhook", "recipient": receiver.url},
    )
    await db.execute(
        """
        INSERT INTO notifier.outbox (type, payload)
        SELECT 'bulk.created', jsonb_build_object('n', n) FROM generate_series(1, 20) AS n
        """
    )

    async with running_worker(settings, worker_concurrency=1, event_batch_size=50) as services:

        async def all_arrived() -> bool:
            return len(receiver.received()) == 20

        await eventually(all_arrived, timeout=30)
        events_counted = services.metrics.registry.get_sample_value(
            "notifier_events_received_total", {"type": "bulk.created", "producer": "sql"}
        )

    assert sorted(r.json()["data"]["payload"]["n"] for r in receiver.received()) == list(
        range(1, 21)
    )
    assert sorted((await started_jobs(db)).values()) == [0] * 19 + [1]
    # Events from the outbox are first seen by the worker: each counted once.
    assert events_counted == 20


async def test_an_event_failing_in_a_batch_is_left_out_and_retried_on_its_own(
    client: AsyncTestClient[Any], settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    """Its writes are undone to a savepoint; the others of the batch commit."""
    await signup_rule(client, key="{user_id}")
    await db.execute(
        """
        CREATE FUNCTION public.poisoned_key() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.key = 'poison' THEN RAISE 'poisoned key'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER poisoned_key BEFORE INSERT OR UPDATE ON notifier.reminder_keys
            FOR EACH ROW EXECUTE FUNCTION public.poisoned_key();
        """
    )
    users = ["1", "2", "poison", "4"]
    ids = [await publish(client, {"user_id": u, "email": f"{u}@example.com"}) for u in users]
    good = [event_id for user, event_id in zip(users, ids, strict=True) if user != "poison"]
    poisoned = ids[2]

    async with running_worker(settings, worker_concurrency=1, event_batch_size=50):
        await processed(db, *good)
        # The poisoned event's own job ran, failed and waits for its retry.
        await eventually(functools.partial(_started, db, poisoned))
        cursor = await db.execute(
            "SELECT processed_at FROM notifier.events WHERE id = %s", [poisoned]
        )
        assert await cursor.fetchone() == {"processed_at": None}
        started = await started_jobs(db)
        assert (started[ids[0]], started[ids[1]], started[ids[3]]) == (1, 0, 0)
        assert await notifications_of(db, poisoned) == []

        await db.execute("DROP TRIGGER poisoned_key ON notifier.reminder_keys")
        await processed(db, poisoned)

    statuses = await job_statuses(db)
    assert set(statuses.values()) == {"succeeded"}
    assert [n["key"] for n in await notifications_of(db, poisoned)] == ["poison"]


async def _started(db: psycopg.AsyncConnection[Any], event_id: str) -> bool:
    return (await started_jobs(db)).get(event_id, 0) >= 1


async def test_a_batch_whose_notifications_cannot_be_stored_falls_back_to_one_event_per_job(
    client: AsyncTestClient[Any], settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    """The one statement storing the batch's notifications fails for one event's row: each
    job then processes its own event alone, so only that event's job fails and retries."""
    await signup_rule(client)
    await db.execute(
        """
        CREATE FUNCTION public.poisoned_recipient() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.recipient = 'poison@example.com' THEN RAISE 'poisoned recipient'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER poisoned_recipient BEFORE INSERT ON notifier.notifications
            FOR EACH ROW EXECUTE FUNCTION public.poisoned_recipient();
        """
    )
    emails = ["a@example.com", "poison@example.com", "c@example.com", "d@example.com"]
    ids = [await publish(client, {"email": email}) for email in emails]
    good = [ids[0], ids[2], ids[3]]

    async with running_worker(settings, worker_concurrency=1, event_batch_size=50):
        await processed(db, *good)
        await eventually(functools.partial(_started, db, ids[1]))
        cursor = await db.execute(
            "SELECT processed_at FROM notifier.events WHERE id = %s", [ids[1]]
        )
        assert await cursor.fetchone() == {"processed_at": None}

        await db.execute("DROP TRIGGER poisoned_recipient ON notifier.notifications")
        await processed(db, ids[1])
        for event_id, email in zip(ids, emails, strict=True):
            assert await eventually(functools.partial(sent_to, db, event_id)) == [email]


@pytest.mark.parametrize("older_first", [True, False], ids=["older-first", "newer-first"])
async def test_a_newer_event_of_a_key_supersedes_an_older_one_in_the_same_batch(
    client: AsyncTestClient[Any],
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    older_first: bool,
) -> None:
    """Older first: its reminders are stored before the newer event supersedes them (and
    their jobs are cancelled); newer first: the older one's are stored superseded."""
    await expiry_rule(client)
    t0 = datetime.datetime.now(UTC) - HOUR
    times = [t0, t0 + HOUR / 2] if older_first else [t0 + HOUR / 2, t0]
    first, second = [
        await publish_at(client, "password.expiring", expiring(1, 30), occurred_at=at)
        for at in times
    ]
    older, newer = (first, second) if older_first else (second, first)

    async with running_worker(settings, worker_concurrency=1, event_batch_size=50):
        await processed(db, first, second)

    assert await started_jobs(db) == {first: 1, second: 0}
    older_ones = await notifications_of(db, older)
    assert [(n["status"], n["cancelled_by_event_id"]) for n in older_ones] == [
        ("superseded", uuid.UUID(newer))
    ] * 2
    assert {n["job"] for n in older_ones} <= {None, "cancelled"}
    assert [(n["status"], n["job"]) for n in await notifications_of(db, newer)] == [
        ("pending", "todo")
    ] * 2


async def test_events_of_one_key_in_one_batch_join_one_digest(
    client: AsyncTestClient[Any], settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    response = await client.post(
        "/api/v1/rules/",
        json={
            "event_type": "comment.added",
            "channel": "log",
            "recipient_field": "email",
            "key": "{post_id}",
            "digest": {"window": "PT60S"},
        },
    )
    assert response.status_code == 201, response.text
    ids = []
    for post_id, n in [(1, 1), (1, 2), (2, 1), (1, 3)]:
        payload = {"post_id": post_id, "n": n, "email": "ada@example.com"}
        response = await client.post(
            "/api/v1/events/", json={"type": "comment.added", "payload": payload}
        )
        ids.append(response.json()["id"])

    async with running_worker(settings, worker_concurrency=1, event_batch_size=50):
        await processed(db, *ids)

    assert sorted((await started_jobs(db)).values()) == [0, 0, 0, 1]
    cursor = await db.execute(
        """
        SELECT key, digest_count, digest_open, context FROM notifier.notifications
        WHERE status = 'pending' ORDER BY key
        """
    )
    first, second = await cursor.fetchall()
    assert (first["key"], first["digest_count"], first["digest_open"]) == ("1", 3, True)
    assert [e["id"] for e in first["context"]["events"]] == [ids[0], ids[1], ids[3]]
    assert (second["key"], second["digest_count"]) == ("2", 1)


async def test_each_event_taken_along_is_traced_in_its_own_trace(
    services: Services, db: psycopg.AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their jobs never run, so the batch starts each one's span, continuing the trace its
    producer named; each notification's deliver job continues that trace in turn."""
    provider, exporter = recording_provider()
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("notifier"))
    monkeypatch.setattr(tracing, "tracing_enabled", lambda: True)
    origins = {}
    for n in range(3):
        with provider.get_tracer("tests").start_as_current_span(f"producer {n}") as origin:
            origins[n] = (origin.get_span_context(), current_traceparent())
    await db.execute(
        "INSERT INTO notifier.routing_rules (event_type, channel, recipient) "
        "VALUES ('bulk.*', 'log', 'ops@example.com')"
    )
    await db.execute(
        """
        INSERT INTO notifier.outbox (type, payload, traceparent)
        SELECT 'bulk.created', jsonb_build_object('n', n), tp
        FROM unnest(%s::text[]) WITH ORDINALITY AS t (tp, n)
        """,
        [[origins[n][1] for n in range(3)]],
    )
    cursor = await db.execute(
        "SELECT id, (payload->>'n')::int - 1 AS n FROM notifier.events ORDER BY payload->>'n'"
    )
    events = {row["n"]: row["id"] for row in await cursor.fetchall()}

    await service.process(
        services.pool,
        services.metrics,
        events[0],
        max_notifications=10,
        group=service.JobGroup("default", 0),
        batch_size=10,
    )

    spans = [span for span in exporter.get_finished_spans() if span.name == "process_event"]
    assert len(spans) == 2, "one per event taken along; the job's own span is the worker's"
    by_event = {dict(span.attributes or {})["notifier.event.id"]: span for span in spans}
    for n in (1, 2):
        span = by_event[str(events[n])]
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is not None
        assert span.parent.span_id == origins[n][0].span_id
        assert dict(span.attributes or {})["notifier.batched"] is True
        cursor = await db.execute(
            "SELECT traceparent FROM notifier.notifications WHERE event_id = %s", [events[n]]
        )
        row = await cursor.fetchone()
        assert row is not None
        assert row["traceparent"].split("-")[1] == format(origins[n][0].trace_id, "032x")
        assert row["traceparent"].split("-")[2] == format(span.context.span_id, "016x")
