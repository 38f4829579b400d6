"""Publishing single events: requests that arrive together share one statement.

A publish is one statement in autocommit (the event row and its job), and most of what it
costs is per statement, not per event: the round trip, PostgreSQL's executor, and the
commit's WAL flush. So while a statement is in flight, the events of other requests wait
and then go together in the next one (``queries.publish_events``), the way PostgreSQL's
own group commit shares a flush among transactions. Nothing waits on a timer: alone, an
event goes at once, in a statement of its own, exactly as before.

Every caller still gets its answer only after the statement that stored its event
committed, so a 201 still means committed. What it changes:

- A batch is all-or-nothing, so an event the database refuses would fail its neighbours.
  A batch that fails on its data is tried again one event per statement: only the event
  at fault gets the error. A lost connection fails the whole batch, as it would each alone.
- An event with an ``external_id`` (a CloudEvent ``id``) may wait on a row lock of a
  concurrent transaction storing the same one; it goes in a statement of its own so that
  it can never hold up anybody else's.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Sequence
from typing import Any

import psycopg
from opentelemetry import trace
from opentelemetry.trace import Link

from notifier.db import Pool, single_statement
from notifier.events import queries
from notifier.events.queries import PublishedEvent, TenantEvent
from notifier.telemetry.metrics import Metrics

tracer = trace.get_tracer("notifier")

# Events per statement: far above what arrives during one commit, and a bound on its size.
MAX_EVENTS_PER_STATEMENT = 100
# Statements in flight at once. Two, so that a batch forms while the previous one commits;
# more would only split the waiting events into smaller batches.
MAX_STATEMENTS_IN_FLIGHT = 2
# Errors that come from the data of some event, not from the connection or the server.
_DATA_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError)


class _Waiting:
    """An event waiting for a statement, with what its caller waits on."""

    __slots__ = ("answer", "item", "span")

    def __init__(self, item: TenantEvent) -> None:
        self.item = item
        self.answer: asyncio.Future[PublishedEvent] = asyncio.get_running_loop().create_future()
        # The request's span: a batch links to each of its callers' spans.
        self.span = trace.get_current_span().get_span_context()


class EventPublisher:
    """Stores events one request at a time, sharing statements among concurrent requests."""

    def __init__(self, pool: Pool, metrics: Metrics) -> None:
        self._pool = pool
        self._metrics = metrics
        self._waiting: list[_Waiting] = []
        # Tasks storing whatever waits, until nothing does: counted by the tasks themselves,
        # so that the count drops in the same step as the last look at ``_waiting``.
        self._flushers = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(self, item: TenantEvent) -> PublishedEvent:
        """Store the event and defer its processing; return once that is committed."""
        waiting = _Waiting(item)
        if item.event.external_id is not None:
            self._start(self._store([waiting]))
        else:
            self._waiting.append(waiting)
            if self._flushers < MAX_STATEMENTS_IN_FLIGHT:
                self._flushers += 1
                self._start(self._flush_waiting())
        # Shielded: a caller that goes away (a client hanging up) must not cancel a
        # statement that other callers' events are part of.
        try:
            return await asyncio.shield(waiting.answer)
        except asyncio.CancelledError:
            # Nobody will read the answer: an error in it is not worth a warning.
            waiting.answer.add_done_callback(_ignore_answer)
            raise

    async def close(self) -> None:
        """Wait until every statement in flight has finished."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in a task of its own, from an empty context: it works for every
        caller of its statements, not for the request that happened to start it."""
        task = asyncio.create_task(work, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush_waiting(self) -> None:
        """Store what waits, a statement at a time, until nothing does."""
        try:
            while self._waiting:
                batch = self._waiting[:MAX_EVENTS_PER_STATEMENT]
                del self._waiting[:MAX_EVENTS_PER_STATEMENT]
                await self._store(batch)
        finally:
            self._flushers -= 1

    async def _store(self, batch: list[_Waiting]) -> None:
        """Store ``batch`` and answer each of its callers, with its event or its error."""
        self._metrics.publish_batch_size.observe(len(batch))
        with trace.use_span(_batch_span(batch), end_on_exit=True):
            try:
                published = await self._publish([waiting.item for waiting in batch])
            except _DATA_ERRORS as exc:
                if len(batch) == 1:
                    _answer(batch[0], exc)
                else:
                    for waiting in batch:  # find the event at fault; store the others
                        await self._store([waiting])
                return
            except Exception as exc:
                for waiting in batch:
                    _answer(waiting, exc)
                return
        for waiting, result in zip(batch, published, strict=True):
            _answer(waiting, result)

    async def _publish(self, items: Sequence[TenantEvent]) -> list[PublishedEvent]:
        async with single_statement(self._pool) as conn:
            return await queries.publish_events(conn, items)


def _ignore_answer(answer: asyncio.Future[PublishedEvent]) -> None:
    if not answer.cancelled():
        answer.exception()


def _answer(waiting: _Waiting, result: PublishedEvent | BaseException) -> None:
    if isinstance(result, BaseException):
        waiting.answer.set_exception(result)
    else:
        waiting.answer.set_result(result)


def _batch_span(batch: list[_Waiting]) -> trace.Span:
    """The span a statement runs in: the request's own if the event went alone, else one of
    its own that links to every request in it (a batch belongs to no single trace)."""
    if len(batch) == 1:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(batch[0].span))
        return tracer.start_span("publish events", context=parent)
    return tracer.start_span(
        "publish events",
        links=[Link(waiting.span) for waiting in batch if waiting.span.is_valid],
        attributes={"notifier.events": len(batch)},
    )
