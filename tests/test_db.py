"""The pool: connections checked on checkout only after idling, and one-statement use cases."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from notifier.db import create_pool, single_statement
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

        # Back in the pool moments ago: handed out unchecked, so the use case meets the
        # dead connection, as one caught by a restart would; the pool then discards it.
        with pytest.raises(psycopg.OperationalError):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")

        async with pool.connection() as conn:
            second = conn.info.backend_pid
            await conn.execute("SELECT 1")
        assert second != first
        await kill_backend(settings.database_url, second)
        await asyncio.sleep(1.2)  # idle longer than the check's threshold (1 s)

        # Idle a while: checked, found dead and replaced before the use case gets it.
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
            assert conn.info.backend_pid not in {first, second}
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
