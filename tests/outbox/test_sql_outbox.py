"""Publishing with plain SQL: an INSERT into notifier.outbox in the producer's own transaction."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from notifier import outbox
from tests.support import WebhookReceiver, eventually, wait_until_jobs_ran


@pytest.fixture
def producer_url(database_url: str) -> Iterator[str]:
    """A login role in the notifier_producer group, connected to this test's database."""
    name = f"producer_{conninfo_to_dict(database_url)['dbname']}_{secrets.token_hex(3)}"
    password = outbox.create_producer(database_url, name)
    yield make_conninfo(database_url, user=name, password=password)
    outbox.drop_producer(database_url, name)


async def count(db: psycopg.AsyncConnection[Any], query: str) -> int:
    cursor = await db.execute(query)
    row = await cursor.fetchone()
    assert row is not None
    return int(next(iter(row.values())))


async def test_a_one_line_insert_publishes_an_event_like_rest(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    await client.post(
        "/api/v1/rules/",
        json={"event_type": "user.signup", "channel": "log", "recipient_field": "email"},
    )

    await db.execute(
        """INSERT INTO notifier.outbox (type, payload) VALUES ('user.signup', '{"email": "ada@example.com"}')"""
    )

    async def processed() -> list[dict[str, Any]]:
        events = (await client.get("/api/v1/events/")).json()
        return [e for e in events if e["processed_at"] is not None]

    (event,) = await eventually(processed)
    assert event["type"] == "user.signup"
    assert event["producer"] == "sql"

    async def sent() -> list[tuple[str, str]]:
        detail = (await client.get(f"/api/v1/events/{event['id']}")).json()
        return [
            (n["recipient"], n["status"]) for n in detail["notifications"] if n["status"] == "sent"
        ]

    assert await eventually(sent) == [("ada@example.com", "sent")]
    assert await count(db, "SELECT count(*) FROM notifier.outbox") == 0, "rows pass through"


async def test_producer_role_commit_delivers_and_rollback_delivers_nothing(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    producer_url: str,
    worker: None,
) -> None:
    await client.post(
        "/api/v1/rules/",
        json={"event_type": "order.created", "channel": "webhook", "recipient": receiver.url},
    )
    # The producer's own business table, in the same database for this test.
    await db.execute("CREATE TABLE public.orders (id int PRIMARY KEY, total numeric NOT NULL)")
    producer_name = conninfo_to_dict(producer_url)["user"]
    await db.execute(f'GRANT INSERT ON public.orders TO "{producer_name}"')

    async with await psycopg.AsyncConnection.connect(producer_url) as producer:
        async with producer.transaction():
            await producer.execute("INSERT INTO public.orders VALUES (1, 10)")
            await producer.execute(
                """INSERT INTO notifier.outbox (type, payload) VALUES ('order.created', '{"order_id": 1}')"""
            )
        # The producer's transaction fails after its outbox insert: nothing may be published.
        async with producer.transaction(force_rollback=True):
            await producer.execute(
                """INSERT INTO notifier.outbox (type, payload) VALUES ('order.created', '{"order_id": 2}')"""
            )
            await producer.execute("INSERT INTO public.orders VALUES (2, 20)")

    async def received() -> list[Any]:
        return receiver.received()

    (request,) = await eventually(received)
    assert request.json()["data"]["payload"] == {"order_id": 1}
    await wait_until_jobs_ran(db)  # a wrongly enqueued second event has been through too
    assert [r.json()["data"]["payload"] for r in receiver.received()] == [{"order_id": 1}]
    assert await count(db, "SELECT count(*) FROM notifier.events") == 1


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM notifier.events",
        "SELECT * FROM notifier.notifications",
        "SELECT * FROM notifier.outbox",
        "SELECT * FROM notifier.routing_rules",
        "SELECT * FROM procrastinate_jobs",
        "INSERT INTO notifier.events (type) VALUES ('x')",
        "DELETE FROM notifier.outbox",
        "UPDATE notifier.outbox SET type = 'x'",
        "INSERT INTO procrastinate_jobs (queue_name, task_name, args) VALUES ('events', 'x', '{}')",
        "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('events', 'notifier.process_event', 0, NULL, NULL, "
        "'{}'::jsonb, NULL)::procrastinate_job_to_defer_v1])",
    ],
)
async def test_producer_role_may_do_nothing_but_insert_into_the_outbox(
    producer_url: str, statement: str
) -> None:
    async with await psycopg.AsyncConnection.connect(producer_url) as producer:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await producer.execute(statement)


async def test_a_repeated_idempotency_key_is_skipped_without_aborting_the_transaction(
    db: psycopg.AsyncConnection[Any], producer_url: str
) -> None:
    insert = (
        "INSERT INTO notifier.outbox (type, payload, source, idempotency_key) "
        "VALUES ('invoice.paid', '{}', 'billing', 'inv-42')"
    )
    async with await psycopg.AsyncConnection.connect(producer_url) as producer:
        async with producer.transaction():
            await producer.execute(insert)
            await producer.execute(insert)
        async with producer.transaction():
            await producer.execute(insert)
            await producer.execute("INSERT INTO notifier.outbox (type) VALUES ('still.works')")

    assert await count(db, "SELECT count(*) FROM notifier.events WHERE external_id = 'inv-42'") == 1
    assert await count(db, "SELECT count(*) FROM notifier.events WHERE type = 'still.works'") == 1
    assert await count(db, "SELECT count(*) FROM procrastinate_jobs") == 2


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("INSERT INTO notifier.outbox (payload) VALUES ('{}')", "type must be"),
        ("INSERT INTO notifier.outbox (type) VALUES ('has space')", "type must be"),
        (
            "INSERT INTO notifier.outbox (type, payload) VALUES ('a.b', '[1, 2]')",
            "payload must be a JSON object, got array",
        ),
        (
            "INSERT INTO notifier.outbox (type, payload) VALUES ('a.b', '\"text\"')",
            "payload must be a JSON object, got string",
        ),
        (
            "INSERT INTO notifier.outbox (type, payload) VALUES ('a.b', NULL)",
            "payload must be a JSON object",
        ),
        ("INSERT INTO notifier.outbox (type, traceparent) VALUES ('a.b', 'nope')", "traceparent"),
        (
            "INSERT INTO notifier.outbox (type, payload) "
            "VALUES ('a.b', (repeat('{\"a\": ', 65) || '1' || repeat('}', 65))::jsonb)",
            "must not nest deeper than 64 levels",
        ),
    ],
)
async def test_a_bad_row_is_rejected_at_insert_with_a_clear_error(
    producer_url: str, statement: str, message: str
) -> None:
    async with await psycopg.AsyncConnection.connect(producer_url) as producer:
        with pytest.raises(psycopg.errors.CheckViolation, match=message):
            await producer.execute(statement)


async def test_a_payload_nested_as_deep_as_the_api_allows_is_accepted(
    db: psycopg.AsyncConnection[Any],
) -> None:
    await db.execute(
        "INSERT INTO notifier.outbox (type, payload) "
        "VALUES ('a.b', (repeat('{\"a\": ', 64) || '1' || repeat('}', 64))::jsonb)"
    )

    assert await count(db, "SELECT count(*) FROM notifier.events") == 1


async def test_outbox_carries_traceparent_and_occurred_at_onto_the_event(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await db.execute(
        "INSERT INTO notifier.outbox (type, occurred_at, traceparent) VALUES ('a.b', '2026-01-02T03:04:05Z', %s)",
        [traceparent],
    )

    (event,) = (await client.get("/api/v1/events/")).json()
    assert event["occurred_at"] == "2026-01-02T03:04:05Z"
    cursor = await db.execute("SELECT traceparent FROM notifier.events")
    assert await cursor.fetchone() == {"traceparent": traceparent}


async def test_ten_thousand_rows_in_one_transaction_wake_listening_workers_once(
    db: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute("LISTEN procrastinate_any_queue_v1")
        await db.execute(
            "INSERT INTO notifier.outbox (type, payload) "
            "SELECT 'bulk.created', jsonb_build_object('n', n) FROM generate_series(1, 10000) AS n"
        )
        wake_ups = [n.payload async for n in listener.notifies(timeout=1.0)]

    assert wake_ups == ['{"type": "job_inserted"}']
    assert await count(db, "SELECT count(*) FROM notifier.events") == 10_000
    assert (
        await count(db, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'") == 10_000
    )


async def test_a_multi_row_insert_is_processed_completely(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    await client.post(
        "/api/v1/rules/",
        json={"event_type": "bulk.*", "channel": "log", "recipient_field": "email"},
    )
    await db.execute(
        "INSERT INTO notifier.outbox (type, payload) "
        "SELECT 'bulk.created', jsonb_build_object('email', 'user' || n || '@example.com') "
        "FROM generate_series(1, 200) AS n"
    )

    async def all_sent() -> bool:
        return (
            await count(db, "SELECT count(*) FROM notifier.notifications WHERE status = 'sent'")
            == 200
        )

    await eventually(all_sent, timeout=120)
    assert await count(db, "SELECT count(*) FROM notifier.events WHERE processed_at IS NULL") == 0


async def test_the_versioned_procrastinate_defer_function_the_trigger_needs_exists(
    db: psycopg.AsyncConnection[Any],
) -> None:
    """procrastinate upgrades may rename procrastinate_defer_jobs_v1: fail here, loudly, first."""
    cursor = await db.execute(
        "SELECT to_regprocedure('procrastinate_defer_jobs_v1(procrastinate_job_to_defer_v1[])') AS fn"
    )
    assert await cursor.fetchone() == {
        "fn": "procrastinate_defer_jobs_v1(procrastinate_job_to_defer_v1[])"
    }

    await db.execute("DROP FUNCTION procrastinate_defer_jobs_v1(procrastinate_job_to_defer_v1[])")
    with pytest.raises(psycopg.errors.UndefinedFunction, match="procrastinate_defer_jobs_v1"):
        await db.execute("INSERT INTO notifier.outbox (type) VALUES ('a.b')")
