"""The worker process's loop around procrastinate's worker: stopping and outliving the database."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from notifier.services import Services
from notifier.worker import run_worker
from tests.support import eventually


async def test_a_worker_cancelled_while_the_database_goes_away_stops(
    services: Services, database_url: str
) -> None:
    """Cancelled, procrastinate's worker stops gracefully; when the database goes away
    during that stop, its last write (unregistering the worker) fails and procrastinate
    raises that failure instead of the cancellation. The worker still stops: it does not
    take the failure for an outage to wait out and start again."""
    task = asyncio.create_task(
        run_worker(services, install_signal_handlers=False, name="cancelled-worker")
    )
    database = sql.Identifier(str(conninfo_to_dict(database_url)["dbname"]))
    admin_url = make_conninfo(database_url, dbname="postgres")
    async with (
        await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin,
        await psycopg.AsyncConnection.connect(database_url) as holder,
    ):

        async def registered() -> bool:
            cursor = await holder.execute("SELECT count(*) FROM procrastinate_workers")
            found = await cursor.fetchone()
            await holder.rollback()
            return found is not None and found[0] == 1

        await eventually(registered)
        # Hold the worker's row: its unregistering waits here until the database goes away.
        await holder.execute("SELECT id FROM procrastinate_workers FOR UPDATE")
        try:
            task.cancel()
            await asyncio.sleep(0.5)  # the stop has begun and waits for the row
            assert not task.done()
            await admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(database)
            )
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> %s",
                [conninfo_to_dict(database_url)["dbname"], holder.info.backend_pid],
            )
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=20)
        finally:
            await admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(database)
            )
            if not task.done():
                task.cancel()
    assert task.cancelled()
