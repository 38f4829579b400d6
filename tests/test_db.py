"""The pool: connections checked on checkout only after idling, and one-statement use cases."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import PoolTimeout

from notifier.db import create_fetch_pool, create_pool, single_statement, transaction
from notifier.settings import Settings


async def kill_backend(database_url: str, pid: int) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", [pid])


async def test_a_connection_back_moments_ago_is_not_checked_an_idle_one_is(
    settings: Settings,
) -> None:
    pool = create_pool(settings.replace(database_pool_min_size=1, database_pool_max_size=1))
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            first = conn.info.backend_pid
        await kill_backend(settings.database_url, first)
        await asyncio.sleep(0.2)  # the backend's goodbye arrives; still under the 1 s

        # Back in the pool moments ago: no round trip, but what the server sent is read:
        # a terminated backend said so, and the pool replaces it before the use case.
        async with pool.connection() as conn:
            second = conn.info.backend_pid
            await conn.execute("SELECT 1")
        assert second != first
        await kill_backend(settings.database_url, second)
        await asyncio.sleep(1.2)  # idle longer than the check's threshold (1 s)

        # Idle a while: checked with a round trip, found dead and replaced.
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
            assert conn.info.backend_pid not in {first, second}
    finally:
        await pool.close()


async def test_a_transaction_begun_on_a_connection_broken_moments_ago_takes_another(
    settings: Settings,
) -> None:
    """A backend terminated while its connection sat in the pool: whichever look finds it
    (the checkout's read of what arrived, or BEGIN failing), the use case gets a fresh
    connection instead of an error, and nothing ran on the old one."""
    pool = create_pool(settings.replace(database_pool_min_size=1, database_pool_max_size=2))
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            first = conn.info.backend_pid
        await kill_backend(settings.database_url, first)
        async with transaction(pool) as conn:
            await conn.execute("INSERT INTO notifier.tenants (id) VALUES ('after-kill')")
            assert conn.info.backend_pid != first
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) AS n FROM notifier.tenants WHERE id = 'after-kill'"
            )
            assert await cursor.fetchone() == {"n": 1}
    finally:
        await pool.close()


async def test_a_use_case_answers_at_once_once_the_pool_failed_to_connect(
    settings: Settings,
) -> None:
    """The database gone (every connection terminated, new ones refused): the first use case
    may wait for the pool's timeout, the next ones give up within a fraction of a second."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = settings.replace(
        database_url=f"postgresql://postgres@127.0.0.1:{port}/notifier",
        database_pool_min_size=1,
        database_timeout_seconds=5.0,
    )
    pool = create_pool(unreachable)
    await pool.open(wait=False)
    try:
        waits = []
        for _ in range(5):
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                async with transaction(pool):
                    pass
            waits.append(time.monotonic() - started)
    finally:
        await pool.close()

    assert max(waits) < 1.0, waits


async def test_a_workers_fetch_connection_is_back_at_once_after_a_long_outage(
    settings: Settings,
) -> None:
    """The database refused connections for longer than the first few reconnect tries: once
    it takes them again, the next fetch connects at once instead of waiting for a try
    scheduled, with doubling delays, while it was away."""
    timeout = 2.0
    pool = create_fetch_pool(settings.replace(database_timeout_seconds=timeout))
    await pool.open(wait=True)
    database = sql.Identifier(str(conninfo_to_dict(settings.database_url)["dbname"]))
    admin_url = make_conninfo(settings.database_url, dbname="postgres")
    try:
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(database)
            )
            try:
                async with pool.connection() as conn:
                    await kill_backend(admin_url, conn.info.backend_pid)
                    with pytest.raises(psycopg.OperationalError):
                        await conn.execute("SELECT 1")
                # Refused tries at about 0, 1 and 3 s; psycopg_pool's default series would
                # try next at about 7 s, after this fetch's wait of 2 s has run out.
                await asyncio.sleep(2 * timeout)
            finally:
                await admin.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(database)
                )
        started = time.monotonic()
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        assert time.monotonic() - started < timeout / 2
    finally:
        await pool.close()


async def test_a_single_statement_commits_by_itself_and_the_connection_goes_back_as_it_was(
    settings: Settings,
) -> None:
    pool = create_pool(settings.replace(database_pool_min_size=1, database_pool_max_size=1))
    await pool.open(wait=True)
    try:
        async with single_statement(pool) as conn:
            await conn.execute("INSERT INTO notifier.tenants (id) VALUES ('single')")
            # No transaction left open: the row is already there for everyone.
            assert conn.info.transaction_status == TransactionStatus.IDLE
        async with await psycopg.AsyncConnection.connect(settings.database_url) as other:
            cursor = await other.execute("SELECT id FROM notifier.tenants WHERE id = 'single'")
            assert await cursor.fetchone() == ("single",)

        async with pool.connection() as conn:
            assert conn.autocommit is False  # the next use case gets its transaction
    finally:
        await pool.close()


async def test_both_pools_read_json_as_json_loads_did(settings: Settings) -> None:
    """msgspec reads the pools' json and jsonb; what it refuses (a number beyond a double's
    range, which json and jsonb hold) json.loads still reads, as before."""
    document = (
        '{"big": 123456789012345678901234567890, "huge": 1e400, "x": 1.5, "s": "é\\n",'
        ' "dup": 1, "dup": 2, "nested": [{"a": null, "b": true}]}'
    )
    for pool in (create_pool(settings), create_fetch_pool(settings)):
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                cursor = await conn.execute(
                    """
                    SELECT %(d)s::json AS json, %(d)s::json::text AS json_text,
                           %(d)s::jsonb AS jsonb, %(d)s::jsonb::text AS jsonb_text
                    """,
                    {"d": document},
                )
                row = await cursor.fetchone()
        finally:
            await pool.close()
        assert row is not None
        assert row["json"] == json.loads(row["json_text"])
        assert row["json"]["huge"] == math.inf  # json.loads's reading of 1e400
        assert row["jsonb"] == json.loads(row["jsonb_text"])
        assert row["jsonb"]["big"] == 123456789012345678901234567890
