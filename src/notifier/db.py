"""The connection pool and the one way use cases open a transaction."""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

from opentelemetry.instrumentation.utils import suppress_instrumentation
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from notifier.settings import Settings

Connection: TypeAlias = AsyncConnection[DictRow]
Pool: TypeAlias = AsyncConnectionPool[Connection]


def connect_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of every psycopg connection notifier opens (pools, CLI, migrations).

    With ``database_prepared_statements`` off, psycopg never prepares a statement: through
    a transaction pooler, one prepared on a shared server connection would collide with
    another client's (``DuplicatePreparedStatement "_pg3_0"``) or be missing for the next
    transaction (``InvalidSqlStatementName``).
    """
    return {} if settings.database_prepared_statements else {"prepare_threshold": None}


def create_pool(settings: Settings, *, name: str = "notifier") -> Pool:
    """Build (but do not open) the process's connection pool."""
    checker = IdleConnectionCheck()
    return AsyncConnectionPool(
        settings.database_url,
        connection_class=AsyncConnection[DictRow],
        kwargs={"row_factory": dict_row, "application_name": name, **connect_options(settings)},
        min_size=settings.database_pool_min_size,
        max_size=settings.database_pool_max_size,
        timeout=settings.database_timeout_seconds,
        # Replace connections that died while idle (database restart, failover).
        check=checker.check,
        reset=checker.returned,
        # While the database is away the pool retries with a doubling delay (1 s, 2 s, 4 s,
        # ...), so after a long outage it could notice the database back only minutes
        # later. Giving up each series after this long keeps the gaps short: the next
        # request that wants a connection starts a new series with an immediate try.
        reconnect_timeout=settings.database_timeout_seconds,
        open=False,
        name=name,
    )


class IdleConnectionCheck:
    """The pool's liveness check on checkout, for connections that sat idle a while.

    A check is one more round trip each time a use case takes a connection; under load that
    is every request and every job. A connection that came back to the pool working less
    than ``idle_seconds`` ago is handed out unchecked: a database restart takes longer
    than that, so such a connection lost during one is rare, and the use case that gets it
    fails like any other caught by the restart (503, or the job retried); the pool then
    discards it. The check is kept out of traces (it is one empty query).
    """

    def __init__(self, idle_seconds: float = 1.0) -> None:
        self.idle_seconds = idle_seconds
        self._returned_at: weakref.WeakKeyDictionary[Connection, float] = (
            weakref.WeakKeyDictionary()
        )

    async def check(self, conn: Connection) -> None:
        """Check ``conn`` unless it was in use moments ago."""
        returned_at = self._returned_at.get(conn)
        if returned_at is not None and time.monotonic() - returned_at < self.idle_seconds:
            return
        with suppress_instrumentation():
            await AsyncConnectionPool.check_connection(conn)

    async def returned(self, conn: Connection) -> None:
        """Note when ``conn`` came back to the pool in good order (psycopg_pool's reset)."""
        self._returned_at[conn] = time.monotonic()


async def _asynchronous_commit(conn: Connection) -> None:
    # A session setting rather than a startup option, so that it also passes through
    # poolers that refuse unknown startup parameters.
    await conn.execute("SET synchronous_commit = off")


def create_fetch_pool(settings: Settings, *, name: str = "notifier") -> Pool:
    """Build (but do not open) the pool a worker fetches its jobs on.

    One connection is enough: a worker fetches one job after the other. It is in
    autocommit mode with ``synchronous_commit = off``, so a fetch does not wait for the WAL
    flush. Nothing else uses it. It is not checked on every use: the fetch retries on a
    broken connection instead (:class:`notifier.queue.QueueConnector`).
    """
    return AsyncConnectionPool(
        settings.database_url,
        connection_class=AsyncConnection[DictRow],
        kwargs={
            "row_factory": dict_row,
            "application_name": f"{name}-fetch",
            "autocommit": True,
            **connect_options(settings),
        },
        configure=_asynchronous_commit,
        min_size=1,
        max_size=1,
        timeout=settings.database_timeout_seconds,
        open=False,
        name=f"{name}-fetch",
    )


@asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Connection]:
    """One use case, one transaction: committed on normal exit, rolled back on error."""
    async with pool.connection() as conn, conn.transaction():
        yield conn


@asynccontextmanager
async def single_statement(pool: Pool) -> AsyncIterator[Connection]:
    """For a use case that is one statement: a connection in autocommit mode.

    The statement is its own transaction, committed when it returns: one round trip where
    ``transaction`` takes three (BEGIN, the statement, COMMIT).
    """
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            yield conn
        finally:
            await conn.set_autocommit(False)
