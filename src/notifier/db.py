"""The connection pool and the one way use cases open a transaction."""

from __future__ import annotations

import contextvars
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeAlias

import msgspec
import psycopg
from opentelemetry.instrumentation.utils import suppress_instrumentation
from psycopg import AsyncConnection
from psycopg.pq import ConnStatus
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from notifier.settings import Settings

Connection: TypeAlias = AsyncConnection[DictRow]
Pool: TypeAlias = AsyncConnectionPool[Connection]

logger = logging.getLogger("notifier.db")

# A use case waits for a connection this long at a time (up to the pool's timeout in all):
# between two waits it looks whether the pool failed to connect since a use case last got
# one, and if so gives up at once (503) instead of waiting out the timeout.
CONNECTION_WAIT_SLICE_SECONDS = 0.25
# Tries to begin a transaction: a connection found broken at BEGIN (its backend terminated,
# the database restarted) is replaced; nothing was done on it yet, so trying again is safe.
BEGIN_TRIES = 3


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
        configure=_read_json_with_msgspec,
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
        """Check ``conn`` unless it was in use moments ago; even then, read what the server
        has sent already (no round trip): a terminated backend says so before it closes."""
        returned_at = self._returned_at.get(conn)
        if returned_at is not None and time.monotonic() - returned_at < self.idle_seconds:
            _closed_by_server(conn)
            return
        with suppress_instrumentation():
            await AsyncConnectionPool.check_connection(conn)

    async def returned(self, conn: Connection) -> None:
        """Note when ``conn`` came back to the pool in good order (psycopg_pool's reset)."""
        self._returned_at[conn] = time.monotonic()


def _closed_by_server(conn: Connection) -> None:
    """Raise if the server has closed ``conn`` (``pg_terminate_backend``, a shutdown), as far as
    the bytes already received tell; never waits for the network."""
    pgconn = conn.pgconn
    # The first read takes the FATAL message a terminated backend sends, the second meets
    # the closed socket (OperationalError, or the status BAD); on a healthy connection
    # each is one non-blocking read that finds nothing.
    pgconn.consume_input()
    pgconn.consume_input()
    if pgconn.status != ConnStatus.OK:
        raise psycopg.OperationalError("the server closed the connection")


def read_json(data: str | bytes) -> Any:
    """A json or jsonb value as psycopg hands it over, read by msgspec: json.loads took a
    third of the time a worker spent loading a notification's row (its context and quiet
    hours). What msgspec refuses, json.loads reads as it did before (a number beyond a
    double's range, which PostgreSQL's jsonb holds and json reads as infinity)."""
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return json.loads(data)


async def _read_json_with_msgspec(conn: Connection) -> None:
    set_json_loads(read_json, conn)


async def _fetch_connection(conn: Connection) -> None:
    await _read_json_with_msgspec(conn)
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
        configure=_fetch_connection,
        min_size=1,
        max_size=1,
        timeout=settings.database_timeout_seconds,
        # As the shared pool's: with psycopg_pool's default (five minutes of doubling
        # delays) a worker could fetch nothing for a minute after a long outage ended,
        # its one connection waiting for the next try of a series begun during it.
        reconnect_timeout=settings.database_timeout_seconds,
        open=False,
        name=f"{name}-fetch",
    )


@asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Connection]:
    """One use case, one transaction: committed on normal exit, rolled back on error.

    Begun on a working connection: one found broken at BEGIN is replaced (up to
    :data:`BEGIN_TRIES` tries); nothing had been sent on it, so "every 2xx means committed"
    holds. While the database is unreachable this fails within a fraction of a second with
    ``PoolTimeout`` (503), not after the pool's whole timeout.
    """
    outcome = _transaction_outcomes.get(None)
    committing = False
    try:
        async with AsyncExitStack() as stack:
            conn = await _begun(pool, stack)
            try:
                yield conn
            except psycopg.OperationalError:
                if outcome is not None and conn.broken:
                    # Lost before COMMIT was sent: nothing of this transaction committed.
                    outcome.lost_before_commit = True
                raise
            committing = True
    except psycopg.Error:
        if committing and outcome is not None:
            outcome.commit_unknown = True  # COMMIT failed: it may have committed or not
        raise


async def _begun(pool: Pool, stack: AsyncExitStack) -> Connection:
    """A connection of ``pool`` in a transaction begun, both ended when ``stack`` closes."""
    for tries in range(1, BEGIN_TRIES + 1):
        attempt = AsyncExitStack()
        conn = await _connection(pool, attempt)
        try:
            await attempt.enter_async_context(conn.transaction())
        except psycopg.OperationalError as exc:
            await attempt.aclose()  # the pool discards the broken connection
            if tries == BEGIN_TRIES:
                raise
            logger.info("a pooled connection was broken at BEGIN (%s); taking another", exc)
            continue
        await stack.enter_async_context(attempt)
        return conn
    raise AssertionError("unreachable")


async def _connection(pool: Pool, stack: AsyncExitStack) -> Connection:
    """A connection of ``pool``, returned when ``stack`` closes.

    Waits up to the pool's timeout, in slices: after each, if the pool failed to connect
    since a use case last got a connection, the database is taken for unreachable and
    ``PoolTimeout`` raised at once, so requests answer 503 promptly during an outage.
    """
    watch = _watch_of(pool)
    deadline = time.monotonic() + pool.timeout
    while True:
        wait = max(0.0, min(CONNECTION_WAIT_SLICE_SECONDS, deadline - time.monotonic()))
        try:
            conn = await stack.enter_async_context(pool.connection(timeout=wait))
        except PoolTimeout:
            if time.monotonic() >= deadline or watch.failed_since_last_success(pool):
                raise
            continue
        watch.succeeded(pool)
        return conn


class _PoolWatch:
    """Whether a pool's connection attempts failed since a use case last got a connection
    (psycopg_pool counts its failed attempts, including those it makes in the background)."""

    def __init__(self) -> None:
        self.errors_at_last_success = 0

    def failed_since_last_success(self, pool: Pool) -> bool:
        return _connect_errors(pool) > self.errors_at_last_success

    def succeeded(self, pool: Pool) -> None:
        self.errors_at_last_success = _connect_errors(pool)


def _connect_errors(pool: Pool) -> int:
    return pool.get_stats().get("connections_errors", 0)


_watches: weakref.WeakKeyDictionary[Pool, _PoolWatch] = weakref.WeakKeyDictionary()


def _watch_of(pool: Pool) -> _PoolWatch:
    watch = _watches.get(pool)
    if watch is None:
        watch = _watches[pool] = _PoolWatch()
    return watch


@asynccontextmanager
async def single_statement(pool: Pool) -> AsyncIterator[Connection]:
    """For a use case that is one statement: a connection in autocommit mode.

    The statement is its own transaction, committed when it returns: one round trip where
    ``transaction`` takes three (BEGIN, the statement, COMMIT).
    """
    outcome = _transaction_outcomes.get(None)
    async with AsyncExitStack() as stack:
        conn = await _connection(pool, stack)
        await conn.set_autocommit(True)
        try:
            yield conn
        except psycopg.Error:
            if outcome is not None:
                outcome.commit_unknown = True  # each statement commits by itself
            raise
        finally:
            if not conn.broken:
                await conn.set_autocommit(False)


class TransactionOutcomes:
    """What became of the transactions of one API request, for a retry of the whole request
    (:mod:`notifier.request_retry`).

    Safe only when a transaction was lost before its COMMIT was sent (so none of it
    committed) and no COMMIT failed (its outcome unknown), nor a single statement. A
    request's transactions that did commit are its key lookup's bookkeeping (idempotent)
    and at most one use case, which is the one lost: each use case owns one transaction.
    """

    def __init__(self) -> None:
        self.lost_before_commit = False
        self.commit_unknown = False

    @property
    def safe_to_retry(self) -> bool:
        return self.lost_before_commit and not self.commit_unknown


_transaction_outcomes: contextvars.ContextVar[TransactionOutcomes] = contextvars.ContextVar(
    "notifier_transaction_outcomes"
)


def watch_transactions() -> tuple[TransactionOutcomes, contextvars.Token[TransactionOutcomes]]:
    """Record what becomes of the transactions the current task (and tasks it starts) runs
    from now on; reset with ``_transaction_outcomes.reset(token)`` via :func:`stop_watching`."""
    outcomes = TransactionOutcomes()
    return outcomes, _transaction_outcomes.set(outcomes)


def stop_watching(token: contextvars.Token[TransactionOutcomes]) -> None:
    _transaction_outcomes.reset(token)
