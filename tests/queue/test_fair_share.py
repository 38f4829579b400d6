"""Due jobs are shared out by tenant (migration 0011): one tenant's backlog cannot hold up
another tenant's due work by more than a turn of each tenant (docs/architecture.md).

The fetch is called directly here, as in tests/queue/test_fetch_job.py; the last tests run a real
worker and a real receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections.abc import Iterable
from typing import Any

import psycopg
from litestar.testing import AsyncTestClient
from psycopg.rows import dict_row

from notifier import migrate
from notifier.notifications.scheduling import NotificationDraft, PlannedSend, create_notifications
from notifier.notifications.schemas import NotificationStatus
from notifier.queue import EVENTS_QUEUE
from notifier.services import Services
from notifier.settings import Settings
from notifier.worker import run_worker
from tests.conftest import CreateApiKey
from tests.notifications.test_batches import jobs_started
from tests.notifications.test_delivery import running_worker, webhook_id
from tests.support import WebhookReceiver, bearer, eventually

UTC = datetime.UTC


async def defer_many(
    db: psycopg.AsyncConnection[Any],
    count: int,
    *,
    tenant: str | None,
    due: str | None = None,
    name: str | None = None,
    queue: str = "deliveries",
    priority: int = 0,
) -> None:
    """Insert ``count`` waiting jobs of ``tenant`` (None: arguments without one), named
    after the tenant unless ``name`` is given; ``due`` is an SQL expression for scheduled_at."""
    args = {} if tenant is None else {"tenant_id": tenant}
    await db.execute(
        f"""
        INSERT INTO procrastinate_jobs (queue_name, task_name, priority, args, scheduled_at)
        SELECT %s, %s, %s, %s::jsonb || jsonb_build_object('n', n), {due or "NULL"}
        FROM generate_series(1, %s) AS n
        """.encode(),
        [queue, name or f"job of {tenant}", priority, json.dumps(args), count],
    )


async def fetch(db: psycopg.AsyncConnection[Any], queues: list[str] | None = None) -> str | None:
    """The task name of the job notifier's fetch hands out (marking it doing), or None."""
    cursor = await db.execute(
        "SELECT task_name FROM notifier.fetch_job(%s::varchar[], NULL)", [queues]
    )
    row = await cursor.fetchone()
    assert row is not None
    name: str | None = row["task_name"]
    return name


async def fetch_all(db: psycopg.AsyncConnection[Any], count: int) -> list[str | None]:
    return [await fetch(db) for _ in range(count)]


async def test_one_tenants_single_due_job_goes_before_another_tenants_thousands(
    db: psycopg.AsyncConnection[Any],
) -> None:
    # B's jobs are older and due earlier: oldest-first would hand out all of them first.
    await defer_many(db, 3000, tenant="b", due="now() - interval '1 minute'")
    await defer_many(db, 1, tenant="a", due="now() - interval '1 second'")

    assert "job of a" in await fetch_all(db, 2)


async def test_the_same_holds_for_jobs_to_run_now(db: psycopg.AsyncConnection[Any]) -> None:
    """Events are processed by jobs to run now (the REST publish, the outbox trigger)."""
    await defer_many(db, 3000, tenant="b", queue="events")
    await defer_many(db, 1, tenant="a", queue="events")

    assert "job of a" in [await fetch(db, ["events"]) for _ in range(2)]


async def test_tenants_with_due_work_take_turns(db: psycopg.AsyncConnection[Any]) -> None:
    await defer_many(db, 5, tenant="b", due="now() - interval '1 hour'")
    await defer_many(db, 2, tenant="a", due="now() - interval '1 minute'")
    await defer_many(db, 1, tenant="c")

    fetched = await fetch_all(db, 9)

    # Every tenant once, then every tenant still waiting once, and so on.
    assert set(fetched[:3]) == {"job of a", "job of b", "job of c"}
    assert set(fetched[3:5]) == {"job of a", "job of b"}
    assert fetched[5:] == ["job of b", "job of b", "job of b", None]


async def test_jobs_naming_no_tenant_are_a_tenant_of_their_own_and_still_run(
    db: psycopg.AsyncConnection[Any],
) -> None:
    """Jobs deferred before migration 0011 carry no tenant."""
    await defer_many(db, 100, tenant=None, due="now() - interval '1 minute'")
    await defer_many(db, 1, tenant="a")

    fetched = await fetch_all(db, 102)

    assert "job of a" in fetched[:2]
    assert fetched.count("job of None") == 100
    assert fetched[-1] is None


async def test_priority_goes_before_turns(db: psycopg.AsyncConnection[Any]) -> None:
    await defer_many(db, 2, tenant="b", priority=5)
    await defer_many(db, 1, tenant="a")

    assert await fetch_all(db, 4) == ["job of b", "job of b", "job of a", None]


async def test_the_queue_filter_holds_between_tenants(db: psycopg.AsyncConnection[Any]) -> None:
    await defer_many(db, 1, tenant="b", queue="events")
    await defer_many(db, 1, tenant="a", queue="deliveries")

    assert await fetch(db, ["deliveries"]) == "job of a"
    assert await fetch(db, ["deliveries"]) is None
    assert await fetch(db, ["events"]) == "job of b"


async def test_jobs_due_later_are_not_fetched_however_the_tenants_mix(
    db: psycopg.AsyncConnection[Any],
) -> None:
    await defer_many(db, 3, tenant="b", due="now() + interval '1 hour'")
    await defer_many(db, 1, tenant="a", due="now() - interval '1 second'")

    assert await fetch_all(db, 2) == ["job of a", None]


# --- keeping each tenant's due time right while jobs come and go ------------------------


async def test_a_job_committed_while_its_tenant_was_being_drained_is_found(
    db: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """A fetch that finds a tenant's jobs all taken moves the tenant's due time on to its
    next job; a transaction still adding one must not be overtaken by that."""
    await defer_many(db, 1, tenant="a")
    assert await fetch(db, ["events"]) is None  # the tenant's group is known, and due
    async with await psycopg.AsyncConnection.connect(database_url) as producer:
        await producer.execute(
            """
            INSERT INTO procrastinate_jobs (queue_name, task_name, args)
            VALUES ('deliveries', 'job of a', '{"tenant_id": "a"}')
            """
        )
        assert await fetch(db) == "job of a"
        assert await fetch(db) is None  # the second is not committed yet
        await producer.commit()

    assert await fetch(db) == "job of a"


async def test_a_job_put_back_to_wait_is_found_again(db: psycopg.AsyncConnection[Any]) -> None:
    """procrastinate's retry moves a running job back to waiting, by an UPDATE."""
    await defer_many(db, 1, tenant="a")
    assert await fetch(db) == "job of a"
    assert await fetch(db) is None  # the tenant has nothing waiting now

    await db.execute(
        "SELECT procrastinate_retry_job_v2(id, now(), NULL, NULL, NULL) "
        "FROM procrastinate_jobs WHERE status = 'doing'"
    )

    assert await fetch(db) == "job of a"


async def test_a_job_scheduled_sooner_than_its_tenants_others_is_found_when_due(
    db: psycopg.AsyncConnection[Any],
) -> None:
    await defer_many(db, 1, tenant="a", due="now() + interval '1 day'")
    assert await fetch(db) is None

    await defer_many(db, 1, tenant="a", due="now() - interval '1 second'", name="sooner")

    assert await fetch_all(db, 2) == ["sooner", None]


async def test_jobs_waiting_before_the_upgrade_are_fetched_after_it(database_url: str) -> None:
    migrate.downgrade(database_url, "0010")
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(
            """
            INSERT INTO procrastinate_jobs (queue_name, task_name, args, scheduled_at)
            VALUES ('deliveries', 'old', '{}', now() - interval '1 minute'),
                   ('deliveries', 'later', '{}', now() + interval '1 day')
            """
        )
    migrate.upgrade(database_url)
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        assert await fetch_all(conn, 2) == ["old", None]


# --- cost ----------------------------------------------------------------------------------


async def rows_read(db: psycopg.AsyncConnection[Any], table: str) -> int:
    """Rows of ``table`` read so far by this backend, flushed or not (see test_fetch_job)."""
    cursor = await db.execute(
        """
        SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0) AS read
        FROM pg_stat_xact_user_tables WHERE relname = %s
        """,
        [table],
    )
    row = await cursor.fetchone()
    assert row is not None
    read: int = row["read"]
    return read


async def rows_read_by_a_fetch(
    db: psycopg.AsyncConnection[Any], tables: Iterable[str]
) -> dict[str, int]:
    """Rows of each table one fetch reads (rolled back), and that it fetched a job of "a"."""
    async with db.transaction(force_rollback=True):
        before = {table: await rows_read(db, table) for table in tables}
        assert await fetch(db) == "job of a"
        return {table: await rows_read(db, table) - before[table] for table in tables}


async def future_jobs_of_many_tenants(db: psycopg.AsyncConnection[Any], tenants: int) -> None:
    """100,000 jobs due in a month or later, of ``tenants`` tenants; their groups known."""
    await db.execute(
        """
        INSERT INTO procrastinate_jobs (queue_name, task_name, args, scheduled_at)
        SELECT 'deliveries', 'reminder', jsonb_build_object('tenant_id', 't' || n %% %s),
               now() + interval '30 days' + n * interval '1 s'
        FROM generate_series(1, 100000) AS n
        """,
        [tenants],
    )
    # A fetch for another queue takes the new tenants' arrivals into their groups, as the
    # fetches between a defer and a later fetch do.
    assert await fetch(db, ["events"]) is None


TABLES = ("procrastinate_jobs", "job_groups")


async def test_a_fetch_reads_a_handful_of_rows_with_100k_future_jobs_of_1000_tenants(
    db: psycopg.AsyncConnection[Any],
) -> None:
    await future_jobs_of_many_tenants(db, 1000)
    await defer_many(db, 1, tenant="a", due="now() - interval '1 second'")
    assert await fetch(db, ["events"]) is None
    await db.execute("ANALYZE procrastinate_jobs, notifier.job_groups")

    read = await rows_read_by_a_fetch(db, TABLES)

    # The due job, and the row of the only tenant with due work: the 1,000 others, each
    # with 100 jobs due in a month, are not read.
    assert read["procrastinate_jobs"] < 10, read
    assert read["job_groups"] < 10, read


async def test_a_fetch_reads_a_handful_of_jobs_with_100_tenants_due(
    db: psycopg.AsyncConnection[Any],
) -> None:
    """What grows is the rows of job_groups read: one per tenant with due work."""
    await future_jobs_of_many_tenants(db, 1000)
    for tenant in range(100):
        await defer_many(db, 10, tenant=f"busy-{tenant}", due="now() - interval '1 minute'")
    # Due first, so first in line among the tenants never served.
    await defer_many(db, 1, tenant="a", due="now() - interval '1 hour'")
    assert await fetch(db, ["events"]) is None
    await db.execute("ANALYZE procrastinate_jobs, notifier.job_groups")

    read = await rows_read_by_a_fetch(db, TABLES)

    assert read["procrastinate_jobs"] < 10, read
    assert 101 <= read["job_groups"] < 101 + 10, read


# --- batches and a real worker -----------------------------------------------------------


async def add_tenants(db: psycopg.AsyncConnection[Any], *tenants: str) -> None:
    for tenant in tenants:
        await db.execute("INSERT INTO notifier.tenants (id) VALUES (%s)", [tenant])


async def create_due_webhooks(
    services: Services, tenant: str, url: str, count: int, due: datetime.datetime
) -> list[str]:
    """``count`` notifications of ``tenant`` due at ``due``, with their jobs, as processing an
    event makes them."""
    drafts = [
        NotificationDraft(
            notification_type="invoice.due",
            channel="webhook",
            recipient=url,
            send=PlannedSend(datetime.timedelta(0), due, NotificationStatus.PENDING),
            target_date=None,
            entity_id=f"{tenant}-{n}",
        )
        for n in range(count)
    ]
    async with services.pool.connection() as conn, conn.transaction():
        created = await create_notifications(conn, tenant, drafts)
    return [str(notification.id) for notification in created]


async def test_every_deliver_job_names_its_tenant(
    services: Services, db: psycopg.AsyncConnection[Any], receiver: WebhookReceiver
) -> None:
    await add_tenants(db, "tenant-a")
    [notification_id] = await create_due_webhooks(
        services, "tenant-a", receiver.url, 1, datetime.datetime.now(UTC)
    )
    cursor = await db.execute(
        """
        SELECT j.args FROM procrastinate_jobs j
        JOIN notifier.notifications n ON n.job_id = j.id WHERE n.id = %s
        """,
        [notification_id],
    )
    assert await cursor.fetchone() == {
        "args": {"notification_id": notification_id, "tenant_id": "tenant-a"}
    }


async def sent(db: psycopg.AsyncConnection[Any], ids: list[str]) -> bool:
    cursor = await db.execute(
        "SELECT count(*) AS sent FROM notifier.notifications WHERE id = ANY(%s) AND status = 'sent'",
        [ids],
    )
    row = await cursor.fetchone()
    assert row is not None
    return bool(row["sent"] == len(ids))


async def test_a_batch_takes_along_only_its_own_tenants_notifications(
    services: Services,
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    await add_tenants(db, "tenant-a", "tenant-b")
    due = datetime.datetime.now(UTC) - datetime.timedelta(seconds=1)
    b_ids = await create_due_webhooks(services, "tenant-b", receiver.url, 10, due)
    a_ids = await create_due_webhooks(services, "tenant-a", receiver.url, 1, due)

    async with running_worker(settings, worker_concurrency=1, delivery_batch_size=50):
        await eventually(lambda: sent(db, a_ids + b_ids), timeout=20)

    # One job per tenant, each sending its own tenant's notifications: with room for all
    # eleven, the first batch did not fill up with the other tenant's.
    assert await jobs_started(db) == 2
    assert len(receiver.received()) == 11


BURST = 2000


async def test_a_tenants_notification_arrives_before_most_of_another_tenants_burst(
    services: Services,
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    await add_tenants(db, "tenant-a", "tenant-b")
    due = datetime.datetime.now(UTC) - datetime.timedelta(seconds=1)
    # B's burst first, all due at the same instant as A's single one: oldest-first
    # delivery would send A's last.
    b_ids = await create_due_webhooks(services, "tenant-b", receiver.url, BURST, due)
    [a_id] = await create_due_webhooks(services, "tenant-a", receiver.url, 1, due)

    # The batches already fetched when A's fell due go first: up to worker concurrency (10)
    # times the batch size. At 50 that is a quarter of the burst; at the default (200) the
    # whole of it, and the burst would have to be four times larger (a slow test) to show
    # the same thing.
    async with running_worker(settings, delivery_batch_size=50):
        await eventually(lambda: sent(db, [a_id]), timeout=60)

    arrived = [request.headers["webhook-id"] for request in receiver.received()]
    before_a = arrived.index(webhook_id(a_id))
    assert set(arrived[:before_a]) <= {webhook_id(b) for b in b_ids}
    assert before_a < BURST // 4, f"{before_a} of B's {BURST} arrived before A's"


# --- every producer puts the tenant on its jobs --------------------------------------------


async def test_events_published_over_rest_and_their_notifications_name_the_tenant(
    client: AsyncTestClient[Any],
    services: Services,
    db: psycopg.AsyncConnection[Any],
    create_api_key: CreateApiKey,
) -> None:
    acme = bearer(await create_api_key("acme"))
    rule = {"event_type": "user.signup", "channel": "log", "recipient_field": "email"}
    assert (await client.post("/api/v1/rules/", json=rule, headers=acme)).status_code == 201
    event = {"type": "user.signup", "payload": {"email": "ada@example.com"}}
    assert (await client.post("/api/v1/events/", json=event, headers=acme)).status_code == 201

    async def deliver_jobs() -> list[dict[str, Any]]:
        cursor = await db.execute(
            "SELECT args->>'tenant_id' AS tenant_id FROM procrastinate_jobs "
            "WHERE task_name = 'notifier.deliver'"
        )
        return await cursor.fetchall()

    worker = asyncio.create_task(
        run_worker(services, queues=[EVENTS_QUEUE], install_signal_handlers=False, name="events")
    )
    try:
        assert await eventually(deliver_jobs) == [{"tenant_id": "acme"}]
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(worker, timeout=10)
    cursor = await db.execute(
        "SELECT args->>'tenant_id' AS tenant_id FROM procrastinate_jobs "
        "WHERE task_name = 'notifier.process_event'"
    )
    assert await cursor.fetchall() == [{"tenant_id": "acme"}]


async def test_deliver_jobs_that_name_no_tenant_still_deliver_in_one_batch(
    services: Services,
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    """As jobs deferred before migration 0011 do."""
    await add_tenants(db, "tenant-a")
    due = datetime.datetime.now(UTC) - datetime.timedelta(seconds=1)
    ids = await create_due_webhooks(services, "tenant-a", receiver.url, 3, due)
    await db.execute("UPDATE procrastinate_jobs SET args = args - 'tenant_id'")

    async with running_worker(settings, worker_concurrency=1, delivery_batch_size=50):
        await eventually(lambda: sent(db, ids), timeout=20)

    assert await jobs_started(db) == 1
    assert len(receiver.received()) == 3
