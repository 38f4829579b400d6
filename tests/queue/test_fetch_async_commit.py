"""Workers fetch jobs with asynchronous commit; everything that must survive a crash stays durable.

What a crash of PostgreSQL can lose is the last fraction of a second of asynchronously
committed fetches. A lost fetch puts its job back to ``todo``. These tests pin down both
halves of why that is safe: which connections commit how, and that a job run again after
its work was already committed does nothing a second time.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import psycopg
from litestar.testing import AsyncTestClient

from notifier.bootstrap import open_services
from notifier.db import transaction
from notifier.maintenance import run_maintenance
from notifier.queue.connector import QueueConnector
from notifier.services import Services
from notifier.settings import Settings
from tests.support import WebhookReceiver, eventually
from tests.test_maintenance import (
    job,
    job_id_of,
    kill_worker_during,
    maintenance_job,
    rows,
    schedule_due_now,
    wait_sent,
    worker_running,
)


async def synchronous_commit(conn: psycopg.AsyncConnection[Any]) -> str:
    cursor = await conn.execute("SELECT current_setting('synchronous_commit') AS value")
    row = await cursor.fetchone()
    assert row is not None
    value: str = row["value"]
    return value


async def test_fetches_commit_asynchronously_and_business_transactions_durably(
    services: Services,
) -> None:
    connector = services.queue.connector
    assert isinstance(connector, QueueConnector)
    assert connector.fetch_pool is not None
    async with connector.fetch_pool.connection() as fetch_conn:
        assert await synchronous_commit(fetch_conn) == "off"
    async with transaction(services.pool) as business_conn:
        assert await synchronous_commit(business_conn) == "on"
    # Finishing and retrying jobs go through the queue's pool: the same durable one.
    queue_pool: object = connector.pool
    assert queue_pool is services.pool


async def test_a_worker_fetches_on_its_asynchronous_connection(
    client: AsyncTestClient[Any],
    services: Services,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    created = await schedule_due_now(client, receiver.url)
    async with worker_running(services):
        await wait_sent(client, created["id"])

        # The worker keeps fetching on that one connection (and, finding nothing, looking
        # when the next job falls due: notifier.queue.jobs.NEXT_DUE_SQL). The heartbeat
        # runs there too, so the connection's last query is a fetch only most of the time.
        async def fetching_connections() -> list[dict[str, Any]]:
            return await rows(
                db,
                "SELECT application_name, query FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND (query LIKE '%%notifier.fetch_job%%' OR query LIKE '%%job_group_arrivals%%')",
            )

        fetching = await eventually(fetching_connections)
    assert {row["application_name"] for row in fetching} == {"notifier-test-fetch"}


async def test_the_api_has_no_fetch_connection_and_async_fetch_can_be_turned_off(
    settings: Settings,
) -> None:
    async with open_services(settings, runs_jobs=False) as api_services:
        assert isinstance(api_services.queue.connector, QueueConnector)
        assert api_services.queue.connector.fetch_pool is None
    durable = settings.replace(worker_fetch_async_commit=False)
    async with open_services(durable) as worker_services:
        assert isinstance(worker_services.queue.connector, QueueConnector)
        assert worker_services.queue.connector.fetch_pool is None


async def test_a_job_run_again_after_its_notification_was_sent_sends_nothing(
    client: AsyncTestClient[Any],
    services: Services,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    """The worst a lost bookkeeping commit can do: the job is found 'doing' or 'todo' again
    after its delivery committed. Recovery re-runs it; deliver sees 'sent' and stops."""
    created = await schedule_due_now(client, receiver.url)
    job_id = await job_id_of(db, created["id"])
    async with worker_running(services):
        await wait_sent(client, created["id"])

    async def finished() -> bool:
        status: str = (await job(db, job_id))["status"]
        return status == "succeeded"

    await eventually(finished)
    # As if the finish was lost and the worker died: 'doing' under a dead worker.
    await kill_worker_during(db, job_id)
    await run_maintenance(services, maintenance_job(), timestamp=int(time.time()))
    assert (await job(db, job_id))["status"] == "todo"

    async with worker_running(services):
        await eventually(finished)

    assert len(receiver.received()) == 1
    (notification,) = await rows(
        db,
        "SELECT status, attempts, sent_at FROM notifier.notifications WHERE id = %s",
        created["id"],
    )
    assert (notification["status"], notification["attempts"]) == ("sent", 1)
    assert notification["sent_at"] <= datetime.datetime.now(datetime.UTC)


async def test_a_worker_whose_fetch_connection_was_killed_goes_on_fetching(
    client: AsyncTestClient[Any],
    services: Services,
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
) -> None:
    """The fetch connection is not checked before each use; a broken one is replaced."""
    async with worker_running(services):
        first = await schedule_due_now(client, receiver.url)
        await wait_sent(client, first["id"])
        killed = await rows(
            db,
            "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'notifier-test-fetch'",
        )
        assert [row["done"] for row in killed] == [True]

        second = await schedule_due_now(client, receiver.url)
        await wait_sent(client, second["id"])

    assert len(receiver.received()) == 2
