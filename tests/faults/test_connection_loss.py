"""The database refusing the workers for a while (a failover, a proxy restart): they carry on.

Runs in the normal suite too: it needs no cluster of its own, since it only bars
connections to the test's own database (``ALLOW_CONNECTIONS false``) and terminates them.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import psycopg.conninfo
import psycopg.sql
from psycopg.rows import dict_row

from notifier.services import Services
from tests.faults.support import (
    DedupReceiver,
    WorkerProcesses,
    schedule_webhooks,
    size,
    summary,
    wait_drained,
    wait_until,
    webhook_id,
)
from tests.figures import Figures


async def delivered(receiver: DedupReceiver, batch: set[str]) -> bool:
    return await wait_until(lambda: batch <= receiver.unique_ids(), timeout=60)


async def test_workers_outlive_the_database_refusing_them(
    services: Services,
    database_url: str,
    dedup_receiver: DedupReceiver,
    worker_processes: WorkerProcesses,
    figure: Figures,
) -> None:
    rounds = size(10, 2)
    outage = 3.0  # longer than the workers' NOTIFIER_DATABASE_TIMEOUT_SECONDS (2)
    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    database = psycopg.sql.Identifier(str(name))
    # ALTER DATABASE cannot bar connections to the database it runs in.
    admin = await psycopg.AsyncConnection.connect(
        psycopg.conninfo.make_conninfo(database_url, dbname="postgres"), autocommit=True
    )
    dedup_receiver.hold_seconds = 0.05
    url = dedup_receiver.url + "/hooks"
    worker = worker_processes.start()
    expected: set[str] = set()
    back_after: list[float] = []
    try:
        for _ in range(rounds):
            batch = {webhook_id(i) for i in await schedule_webhooks(services, url, 10)}
            expected |= batch
            assert await delivered(dedup_receiver, batch), worker_processes.logs()
            await admin.execute(
                psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(database)
            )
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
            )
            await asyncio.sleep(outage)
            await admin.execute(
                psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(database)
            )
            cut_at = time.monotonic()
            batch = {webhook_id(i) for i in await schedule_webhooks(services, url, 1)}
            expected |= batch
            assert await delivered(dedup_receiver, batch), worker_processes.logs()
            back_after.append(time.monotonic() - cut_at)

    finally:
        await admin.execute(
            psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(database)
        )
        await admin.close()
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as db:
        await wait_drained(db)
    assert worker.poll() is None, worker_processes.logs()  # the same process, never restarted
    assert dedup_receiver.unique_ids() == expected
    figure(
        f"{rounds} times the database refused the worker for {outage:.0f}s: the same process "
        f"delivered all {len(expected)} notifications; first delivery after the database "
        f"came back {summary(back_after)}"
    )
