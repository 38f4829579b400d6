"""Publishing and reading events over REST."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.queue import EVENTS_QUEUE
from notifier.services import Services
from notifier.worker import run_worker
from tests.support import PROBLEM_JSON, assert_problem, count_rows, eventually, next_page


@pytest.fixture
async def event_worker(services: Services) -> AsyncIterator[None]:
    """A real worker that processes events into notifications but delivers none of them."""
    task = asyncio.create_task(
        run_worker(
            services, queues=[EVENTS_QUEUE], install_signal_handlers=False, name="events-only"
        )
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=10)


async def jobs(db: psycopg.AsyncConnection[Any], task_name: str) -> list[dict[str, Any]]:
    cursor = await db.execute(
        "SELECT id, status, args FROM procrastinate_jobs WHERE task_name = %s ORDER BY id",
        [task_name],
    )
    return list(await cursor.fetchall())


async def publish(client: AsyncTestClient[Any], event_type: str, **payload: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/events/", json={"type": event_type, "payload": payload})
    assert response.status_code == 201, response.text
    event: dict[str, Any] = response.json()
    return event


# --- publishing -------------------------------------------------------------------------


async def test_publish_stores_the_event_and_its_processing_job(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    response = await client.post(
        "/api/v1/events/", json={"type": "user.signup", "payload": {"email": "ada@example.com"}}
    )

    assert response.status_code == 201
    event = response.json()
    assert event["type"] == "user.signup"
    assert event["payload"] == {"email": "ada@example.com"}
    assert uuid.UUID(event["id"])
    assert datetime.datetime.fromisoformat(event["created_at"]).tzinfo is not None
    assert await jobs(db, "notifier.process_event") == [
        {
            "id": 1,
            "status": "todo",
            "args": {"event_id": event["id"], "tenant_id": "default"},
        }
    ]


async def test_publish_without_payload_stores_an_empty_object(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post("/api/v1/events/", json={"type": "user.signup"})

    assert response.status_code == 201
    assert response.json()["payload"] == {}


async def test_publish_keeps_the_time_zone_aware_occurred_at(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post(
        "/api/v1/events/",
        json={"type": "user.signup", "occurred_at": "2026-03-01T09:30:00+02:00"},
    )

    assert response.status_code == 201
    occurred_at = datetime.datetime.fromisoformat(response.json()["occurred_at"])
    assert occurred_at == datetime.datetime(2026, 3, 1, 7, 30, tzinfo=datetime.UTC)


async def test_published_event_is_processed_by_the_worker_into_notifications(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], worker: None
) -> None:
    rule = await client.post(
        "/api/v1/rules/",
        json={"event_type": "user.*", "channel": "log", "recipient_field": "email"},
    )
    assert rule.status_code == 201, rule.text

    published = await client.post(
        "/api/v1/events/", json={"type": "user.signup", "payload": {"email": "ada@example.com"}}
    )
    event_id = published.json()["id"]

    async def sent() -> list[dict[str, Any]]:
        response = await client.get(f"/api/v1/events/{event_id}")
        notifications = response.json()["notifications"]
        return [n for n in notifications if n["status"] == "sent"]

    (notification,) = await eventually(sent)
    assert notification["recipient"] == "ada@example.com"
    assert notification["channel"] == "log"


@pytest.mark.parametrize("path", ["/api/v1/events/", "/api/v1/events"])
async def test_events_collection_answers_with_and_without_trailing_slash(
    client: AsyncTestClient[Any], path: str
) -> None:
    created = await client.post(path, json={"type": "user.signup", "payload": {}})
    listed = await client.get(path, params={"limit": 10})

    assert created.status_code == 201, created.text
    assert listed.status_code == 200, listed.text
    assert [event["id"] for event in listed.json()] == [created.json()["id"]]


# --- reading ----------------------------------------------------------------------------


async def test_list_events_is_a_json_list_newest_first(client: AsyncTestClient[Any]) -> None:
    first = await publish(client, "user.signup", n=1)
    second = await publish(client, "user.signup", n=2)

    response = await client.get("/api/v1/events/?limit=10")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert [event["id"] for event in response.json()] == [second["id"], first["id"]]
    assert response.json()[1] == first
    assert next_page(response) is None
    assert "x-next-cursor" not in response.headers


async def test_list_events_follows_next_links_through_every_event_once(
    client: AsyncTestClient[Any],
) -> None:
    published = [await publish(client, "order.placed", n=n) for n in range(7)]

    seen: list[str] = []
    url: str | None = "/api/v1/events/?limit=3"
    pages = 0
    while url is not None:
        response = await client.get(url)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page) <= 3
        seen += [event["id"] for event in page]
        pages += 1
        url = next_page(response)

    assert pages == 3
    assert seen == [event["id"] for event in reversed(published)]


async def test_list_events_next_cursor_header_pages_like_the_link(
    client: AsyncTestClient[Any],
) -> None:
    published = [await publish(client, "order.placed", n=n) for n in range(4)]

    first = await client.get("/api/v1/events", params={"limit": 2})
    second = await client.get(
        "/api/v1/events", params={"limit": 2, "cursor": first.headers["x-next-cursor"]}
    )

    ids = [event["id"] for event in first.json() + second.json()]
    assert ids == [event["id"] for event in reversed(published)]
    assert "x-next-cursor" not in second.headers


async def test_list_events_filters_by_type_across_pages(client: AsyncTestClient[Any]) -> None:
    orders = [await publish(client, "order.placed", n=n) for n in range(3)]
    await publish(client, "user.signup")

    seen: list[str] = []
    url: str | None = "/api/v1/events/?type=order.placed&limit=2"
    while url is not None:
        response = await client.get(url)
        seen += [event["id"] for event in response.json()]
        url = next_page(response)

    assert seen == [event["id"] for event in reversed(orders)]


async def test_get_event_includes_the_notifications_it_produced(
    client: AsyncTestClient[Any], event_worker: None
) -> None:
    rule = await client.post(
        "/api/v1/rules/",
        json={
            "event_type": "subscription.renewing",
            "channel": "log",
            "recipient_field": "customer.email",
            "date_field": "renews_on",
            "lead_times": ["P7D", "P1D"],
        },
    )
    assert rule.status_code == 201, rule.text
    renews_on = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    event = await publish(
        client,
        "subscription.renewing",
        customer={"email": "ada@example.com"},
        renews_on=renews_on.isoformat(),
    )

    async def with_notifications() -> dict[str, Any] | None:
        detail: dict[str, Any] = (await client.get(f"/api/v1/events/{event['id']}")).json()
        return detail if detail["processed_at"] else None

    detail = await eventually(with_notifications)
    assert detail["id"] == event["id"]
    assert detail["payload"] == event["payload"]
    notifications = sorted(detail["notifications"], key=lambda n: n["send_at"])
    assert [
        (n["recipient"], n["status"], n["lead_time_days"], n["event_id"], n["rule_id"])
        for n in notifications
    ] == [
        ("ada@example.com", "pending", 7, event["id"], rule.json()["id"]),
        ("ada@example.com", "pending", 1, event["id"], rule.json()["id"]),
    ]
    assert [datetime.datetime.fromisoformat(n["send_at"]) for n in notifications] == [
        renews_on - datetime.timedelta(days=7),
        renews_on - datetime.timedelta(days=1),
    ]


async def test_get_event_before_processing_has_no_notifications(
    client: AsyncTestClient[Any],
) -> None:
    event = await publish(client, "user.signup")

    response = await client.get(f"/api/v1/events/{event['id']}")

    assert response.status_code == 200
    assert response.json() == {**event, "notifications": []}


async def test_get_unknown_event_is_a_404_problem(client: AsyncTestClient[Any]) -> None:
    response = await client.get(f"/api/v1/events/{uuid.uuid4()}")

    assert_problem(response, 404)


async def test_get_event_with_a_malformed_id_is_a_client_error(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.get("/api/v1/events/not-a-uuid")

    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith(PROBLEM_JSON)


# --- invalid requests -------------------------------------------------------------------


async def test_malformed_json_is_a_400_problem(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    response = await client.post(
        "/api/v1/events/",
        content=b'{"type": "user.signup", "payload": {',
        headers={"content-type": "application/json"},
    )

    assert_problem(response, 400, "body")
    assert await count_rows(db, "notifier.events") == 0


async def test_empty_body_is_a_400_problem(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/api/v1/events/", content=b"", headers={"content-type": "application/json"}
    )

    assert_problem(response, 400, "body")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"payload": {}}, "type", id="type-missing"),
        pytest.param({"type": 42}, "type", id="type-not-a-string"),
        pytest.param({"type": ""}, "type", id="type-empty"),
        pytest.param({"type": "user signup"}, "type", id="type-with-whitespace"),
        pytest.param({"type": "x" * 201}, "type", id="type-too-long"),
        pytest.param({"type": "user.signup", "payload": [1, 2]}, "payload", id="payload-list"),
        pytest.param({"type": "user.signup", "payload": "hi"}, "payload", id="payload-string"),
        pytest.param({"type": "user.signup", "colour": "red"}, "colour", id="unknown-field"),
        pytest.param(
            {"type": "user.signup", "occurred_at": "2026-03-01T09:30:00"},
            "occurred_at",
            id="occurred-at-without-zone",
        ),
        pytest.param(
            {"type": "user.signup", "occurred_at": "2026-02-30T09:30:00Z"},
            "occurred_at",
            id="occurred-at-impossible-date",
        ),
        pytest.param("user.signup", "body", id="body-not-an-object"),
        pytest.param(["user.signup"], "[0]", id="batch-item-not-an-object"),
    ],
)
async def test_invalid_event_is_a_422_problem_naming_the_field(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], body: Any, field: str
) -> None:
    response = await client.post("/api/v1/events/", json=body)

    assert_problem(response, 422, field)
    assert await count_rows(db, "notifier.events") == 0
    assert await jobs(db, "notifier.process_event") == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param({"note": "nul \u0000 inside"}, "payload.note", id="nul-in-a-value"),
        pytest.param({"nul \u0000 key": 1}, "payload", id="nul-in-a-key"),
        pytest.param({"deep": [{"deeper": "\u0000"}]}, "payload.deep[0].deeper", id="nested"),
    ],
)
async def test_payload_with_a_nul_character_is_a_422_problem_naming_where(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    payload: dict[str, Any],
    field: str,
) -> None:
    response = await client.post(
        "/api/v1/events/", json={"type": "user.signup", "payload": payload}
    )

    assert_problem(response, 422, field)
    assert await count_rows(db, "notifier.events") == 0


def nested(depth: int) -> bytes:
    """An event whose payload holds lists ``depth`` levels deep, as raw JSON."""
    return b'{"type": "deep", "payload": {"a": ' + b"[" * depth + b"]" * depth + b"}}"


async def test_payload_nested_beyond_64_levels_is_a_422_problem(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    response = await client.post(
        "/api/v1/events/", content=nested(70), headers={"content-type": "application/json"}
    )

    assert_problem(response, 422)
    assert response.json()["errors"][0]["field"].startswith("payload.a[0]")
    assert await count_rows(db, "notifier.events") == 0


async def test_payload_nested_beyond_what_json_decoding_allows_is_a_400_problem(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post(
        "/api/v1/events/", content=nested(100_000), headers={"content-type": "application/json"}
    )

    assert_problem(response, 400, "body")


async def test_payload_keeps_integers_beyond_64_bits(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/api/v1/events/",
        content=b'{"type": "big", "payload": {"n": 123456789012345678901234567890}}',
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 201, response.text
    assert response.json()["payload"] == {"n": 123456789012345678901234567890}


async def test_event_type_with_a_nul_character_is_a_422_problem(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post("/api/v1/events/", json={"type": "user.\u0000signup"})

    assert_problem(response, 422, "type")


async def test_occurred_at_beyond_what_postgres_returns_is_a_422_problem(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post(
        "/api/v1/events/",
        json={"type": "user.signup", "occurred_at": "9999-12-31T23:00:00-05:00"},
    )

    assert_problem(response, 422, "occurred_at")


@pytest.mark.parametrize("limit", ["0", "501", "-1", "ten"])
async def test_list_events_rejects_a_limit_out_of_range(
    client: AsyncTestClient[Any], limit: str
) -> None:
    response = await client.get("/api/v1/events/", params={"limit": limit})

    assert 400 <= response.status_code < 500
    assert_problem(response, response.status_code, "limit")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("garbage", id="not-base64-json"),
        pytest.param("é", id="not-ascii"),
        pytest.param("W10", id="empty-array"),
        pytest.param("eyJhIjoxfQ", id="json-object"),
        pytest.param(
            # ["2026-01-01T00:00:00", "00000000-..."]: our cursors always carry a zone
            "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwiMDAwMDAwMDAtMDAwMC0wMDAwLTAwMDAtMDAwMDAwMDAwMDAwIl0",
            id="naive-datetime",
        ),
    ],
)
async def test_list_events_with_an_invalid_cursor_is_a_400_problem(
    client: AsyncTestClient[Any], cursor: str
) -> None:
    response = await client.get("/api/v1/events/", params={"cursor": cursor})

    assert_problem(response, 400, "cursor")


# --- Idempotency-Key --------------------------------------------------------------------


async def test_publish_repeated_with_the_same_idempotency_key_returns_the_first_answer(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    body = {"type": "user.signup", "payload": {"email": "ada@example.com", "plan": "pro"}}
    headers = {"Idempotency-Key": "signup-ada-1"}

    first = await client.post("/api/v1/events/", json=body, headers=headers)
    repeat = await client.post("/api/v1/events/", json=body, headers=headers)

    assert first.status_code == repeat.status_code == 201
    assert repeat.content == first.content
    assert await count_rows(db, "notifier.events") == 1
    assert len(await jobs(db, "notifier.process_event")) == 1


async def test_publish_reusing_an_idempotency_key_for_another_body_is_a_422_problem(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    headers = {"Idempotency-Key": "signup-1"}
    await client.post("/api/v1/events/", json={"type": "user.signup"}, headers=headers)

    response = await client.post("/api/v1/events/", json={"type": "user.deleted"}, headers=headers)

    assert_problem(response, 422, "Idempotency-Key")
    assert response.json()["errors"] == [
        {
            "field": "Idempotency-Key",
            "message": "was first used with a different request",
            "source": "header",
        }
    ]
    assert await count_rows(db, "notifier.events") == 1


async def test_publish_with_and_without_trailing_slash_shares_idempotency_keys(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    body = {"type": "user.signup"}
    headers = {"Idempotency-Key": "signup-2"}

    first = await client.post("/api/v1/events/", json=body, headers=headers)
    repeat = await client.post("/api/v1/events", json=body, headers=headers)

    assert repeat.json() == first.json()
    assert await count_rows(db, "notifier.events") == 1


async def test_twenty_concurrent_publishes_with_one_idempotency_key_create_one_event(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    body = {"type": "user.signup", "payload": {"email": "ada@example.com"}}
    headers = {"Idempotency-Key": "signup-burst"}

    responses = await asyncio.gather(
        *(client.post("/api/v1/events/", json=body, headers=headers) for _ in range(20))
    )

    assert {response.status_code for response in responses} == {201}
    assert len({response.json()["id"] for response in responses}) == 1
    assert await count_rows(db, "notifier.events") == 1
    assert len(await jobs(db, "notifier.process_event")) == 1


async def test_failed_publish_does_not_use_up_its_idempotency_key(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    headers = {"Idempotency-Key": "signup-3"}
    rejected = await client.post("/api/v1/events/", json={"type": ""}, headers=headers)

    accepted = await client.post("/api/v1/events/", json={"type": "ok"}, headers=headers)

    assert rejected.status_code == 422
    assert accepted.status_code == 201
    assert await count_rows(db, "notifier.events") == 1


@pytest.mark.parametrize("key", ["", "   ", "k" * 256, "tab\there"])
async def test_publish_with_an_unusable_idempotency_key_is_a_400_problem(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], key: str
) -> None:
    response = await client.post(
        "/api/v1/events/", json={"type": "user.signup"}, headers={"Idempotency-Key": key}
    )

    assert_problem(response, 400, "Idempotency-Key")
    assert await count_rows(db, "notifier.events") == 0
