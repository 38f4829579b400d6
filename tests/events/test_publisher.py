"""Concurrent publishes share statements, and each caller still gets its own committed event."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from opentelemetry import trace

from notifier.events import publisher as publisher_module
from notifier.events.cloudevents import NewEvent
from notifier.events.publisher import EventPublisher
from notifier.events.queries import PublishedEvent, TenantEvent
from notifier.queue import PROCESS_EVENT_TASK
from notifier.services import Services
from notifier.tenancy import DEFAULT_TENANT
from tests.telemetry.test_spans import recording_provider


def event(n: int, **fields: Any) -> TenantEvent:
    return TenantEvent(DEFAULT_TENANT, NewEvent(type="user.signup", payload={"n": n}, **fields))


def statements(services: Services) -> float:
    """How many publish statements ran so far."""
    count = services.metrics.registry.get_sample_value("notifier_publish_batch_size_count")
    return count or 0.0


async def stored_events(db: psycopg.AsyncConnection[Any]) -> dict[Any, Any]:
    """Each stored event's payload by id."""
    cursor = await db.execute("SELECT id, payload FROM notifier.events")
    return {row["id"]: row["payload"] for row in await cursor.fetchall()}


async def jobs_by_event(db: psycopg.AsyncConnection[Any]) -> list[str]:
    cursor = await db.execute(
        "SELECT args->>'event_id' AS event_id FROM procrastinate_jobs WHERE task_name = %s",
        [PROCESS_EVENT_TASK],
    )
    return sorted(row["event_id"] for row in await cursor.fetchall())


async def test_concurrent_publishes_share_a_statement_and_each_gets_its_own_event(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    publisher = EventPublisher(services.pool, services.metrics)

    answers = await asyncio.gather(*(publisher.publish(event(n)) for n in range(30)))

    assert statements(services) < 30
    stored = await stored_events(db)
    assert [answer.event.payload for answer in answers] == [{"n": n} for n in range(30)]
    assert all(answer.is_new for answer in answers)
    assert {answer.event.id: answer.event.payload for answer in answers} == stored
    assert await jobs_by_event(db) == sorted(str(event_id) for event_id in stored)


async def test_an_event_alone_goes_at_once_in_a_statement_of_its_own(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    publisher = EventPublisher(services.pool, services.metrics)

    first = await publisher.publish(event(1))
    second = await publisher.publish(event(2))

    assert statements(services) == 2
    assert await stored_events(db) == {first.event.id: {"n": 1}, second.event.id: {"n": 2}}


async def test_an_event_the_database_refuses_fails_alone(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    publisher = EventPublisher(services.pool, services.metrics)
    # Longer than the column's CHECK allows (the API refuses it before it gets here).
    refused = TenantEvent(DEFAULT_TENANT, NewEvent(type="x" * 300))

    answers = await asyncio.gather(
        publisher.publish(event(1)),
        publisher.publish(refused),
        publisher.publish(event(2)),
        publisher.publish(event(3)),
        return_exceptions=True,
    )

    assert isinstance(answers[1], psycopg.errors.CheckViolation)
    good = [answer for answer in answers if isinstance(answer, PublishedEvent)]
    assert sorted(answer.event.payload["n"] for answer in good) == [1, 2, 3]
    assert await stored_events(db) == {answer.event.id: answer.event.payload for answer in good}
    assert len(await jobs_by_event(db)) == 3


async def test_the_same_cloudevent_published_twice_at_once_is_stored_once(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    publisher = EventPublisher(services.pool, services.metrics)
    same = event(1, source="billing", external_id="invoice-1")

    first, second = await asyncio.gather(publisher.publish(same), publisher.publish(same))

    assert first.event == second.event
    assert sorted([first.is_new, second.is_new]) == [False, True]
    assert list(await stored_events(db)) == [first.event.id]
    assert await jobs_by_event(db) == [str(first.event.id)]


async def test_events_with_an_id_in_flight_do_not_hold_up_the_others(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    publisher = EventPublisher(services.pool, services.metrics)
    with_ids = [event(n, source="billing", external_id=f"invoice-{n}") for n in range(3)]

    answers = await asyncio.wait_for(
        asyncio.gather(*(publisher.publish(item) for item in [*with_ids, event(3)])), timeout=30
    )

    assert [answer.event.payload["n"] for answer in answers] == [0, 1, 2, 3]
    assert len(await stored_events(db)) == 4


async def test_a_caller_that_goes_away_does_not_cancel_the_others_statement(
    services: Services, db: psycopg.AsyncConnection[Any]
) -> None:
    publisher = EventPublisher(services.pool, services.metrics)
    leaving = asyncio.create_task(publisher.publish(event(1)))
    staying = asyncio.create_task(publisher.publish(event(2)))
    await asyncio.sleep(0)  # both are waiting for the statement

    leaving.cancel()
    kept = await staying
    await publisher.close()

    assert sorted(payload["n"] for payload in (await stored_events(db)).values()) == [1, 2]
    assert kept.event.payload == {"n": 2}


async def test_a_shared_statement_is_traced_with_a_link_to_every_request(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider, exporter = recording_provider()
    monkeypatch.setattr(publisher_module, "tracer", provider.get_tracer("notifier"))
    publisher = EventPublisher(services.pool, services.metrics)
    requests = provider.get_tracer("tests")

    async def request(n: int) -> trace.SpanContext:
        with requests.start_as_current_span(f"POST {n}") as span:
            await publisher.publish(event(n))
            return span.get_span_context()

    alone = await request(0)
    together = await asyncio.gather(*(request(n) for n in range(1, 4)))

    first, shared = [
        span for span in exporter.get_finished_spans() if span.name == "publish events"
    ]
    assert first.parent is not None
    assert first.parent.span_id == alone.span_id
    assert shared.parent is None
    assert {link.context.span_id for link in shared.links} == {c.span_id for c in together}
    assert dict(shared.attributes or {})["notifier.events"] == 3
