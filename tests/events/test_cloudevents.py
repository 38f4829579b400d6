"""POST /api/v1/events/ also takes CloudEvents 1.0 structured JSON, and batches of events."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import psycopg
from litestar.testing import AsyncTestClient

from tests.support import assert_problem, count_rows

CE_JSON = {"content-type": "application/cloudevents+json"}
CE_BATCH = {"content-type": "application/cloudevents-batch+json"}


def cloudevent(event_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "https://billing.example.com",
        "type": "invoice.paid",
        "time": "2026-11-22T10:00:00Z",
        "data": {"invoice_id": event_id},
    } | overrides


async def post(client: AsyncTestClient[Any], body: Any, headers: dict[str, str]) -> Any:
    return await client.post("/api/v1/events/", content=msgspec.json.encode(body), headers=headers)


async def test_a_cloudevent_is_stored_with_its_source_id_time_and_data(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    response = await post(client, cloudevent("inv-1"), CE_JSON)

    assert response.status_code == 201, response.text
    event = response.json()
    assert event["type"] == "invoice.paid"
    assert event["payload"] == {"invoice_id": "inv-1"}
    assert event["source"] == "https://billing.example.com"
    assert event["external_id"] == "inv-1"
    assert event["occurred_at"] == "2026-11-22T10:00:00Z"
    assert await count_rows(db, "procrastinate_jobs") == 1


async def test_the_same_source_and_id_again_returns_the_stored_event_and_enqueues_nothing(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    first = await post(client, cloudevent("inv-1"), CE_JSON)
    again = await post(client, cloudevent("inv-1", data={"changed": True}), CE_JSON)
    other_source = await post(
        client, cloudevent("inv-1", source="https://shop.example.com"), CE_JSON
    )

    assert again.status_code == 200
    assert again.json() == first.json()
    assert other_source.status_code == 201
    assert await count_rows(db, "notifier.events") == 2
    assert await count_rows(db, "procrastinate_jobs") == 2


async def test_a_json_object_with_specversion_is_read_as_a_cloudevent(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.post("/api/v1/events/", json=cloudevent("inv-9"))

    assert response.status_code == 201, response.text
    assert response.json()["external_id"] == "inv-9"


async def test_a_batch_is_stored_in_one_transaction_and_answered_in_order(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    response = await post(client, [cloudevent(f"inv-{n}") for n in range(3)], CE_BATCH)

    assert response.status_code == 201, response.text
    assert [e["external_id"] for e in response.json()] == ["inv-0", "inv-1", "inv-2"]
    assert await count_rows(db, "procrastinate_jobs") == 3


async def test_a_plain_json_array_of_plain_events_is_a_batch(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/api/v1/events/",
        json=[{"type": "user.signup", "payload": {"n": 1}}, {"type": "user.signup"}],
    )

    assert response.status_code == 201, response.text
    assert [e["payload"] for e in response.json()] == [{"n": 1}, {}]


async def test_a_batch_with_bad_items_stores_nothing_and_names_every_item_at_fault(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    batch = [
        cloudevent("ok-1"),
        {key: value for key, value in cloudevent("bad-1").items() if key != "type"},
        cloudevent("bad-2", data=[1, 2]),
        cloudevent("bad-3", time="2026-11-22T10:00:00"),
    ]

    response = await post(client, batch, CE_BATCH)

    assert_problem(response, 422)
    fields = [error["field"] for error in response.json()["errors"]]
    assert fields == ["[1].type", "[2].data", "[3].time"]
    assert await count_rows(db, "notifier.events") == 0
    assert await count_rows(db, "procrastinate_jobs") == 0


async def test_cloudevents_errors_name_the_attribute(client: AsyncTestClient[Any]) -> None:
    wrong_version = await post(client, cloudevent("x", specversion="0.3"), CE_JSON)
    no_source = await post(
        client, {k: v for k, v in cloudevent("x").items() if k != "source"}, CE_JSON
    )

    assert_problem(wrong_version, 422, field="specversion")
    assert_problem(no_source, 422, field="source")


async def test_shape_and_content_type_must_agree(client: AsyncTestClient[Any]) -> None:
    array_as_single = await post(client, [cloudevent("x")], CE_JSON)
    object_as_batch = await post(client, cloudevent("x"), CE_BATCH)
    empty_batch = await post(client, [], CE_BATCH)
    not_json = await client.post("/api/v1/events/", content=b"{nope", headers=CE_JSON)

    assert_problem(array_as_single, 422, field="body")
    assert_problem(object_as_batch, 422, field="body")
    assert_problem(empty_batch, 422, field="body")
    assert_problem(not_json, 400, field="body")


async def test_a_repeated_batch_with_the_same_idempotency_key_is_replayed(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    batch = [{"type": "user.signup"}, {"type": "user.signup"}]
    headers = {"Idempotency-Key": "batch-1"}

    first = await client.post("/api/v1/events/", json=batch, headers=headers)
    again = await client.post("/api/v1/events/", json=batch, headers=headers)

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert await count_rows(db, "notifier.events") == 2


BINARY = {
    "content-type": "application/json",
    "ce-specversion": "1.0",
    "ce-id": "inv-7",
    "ce-source": "https://billing.example.com",
    "ce-type": "invoice.paid",
    "ce-time": "2026-11-22T10:00:00Z",
    "ce-subject": "invoice%20paid%20%E2%9C%93",
}


async def test_a_binary_mode_cloudevent_is_stored_from_its_headers_and_json_body(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    response = await post(client, {"invoice_id": "inv-7"}, BINARY)

    assert response.status_code == 201, response.text
    event = response.json()
    assert event["type"] == "invoice.paid"
    assert event["payload"] == {"invoice_id": "inv-7"}
    assert event["source"] == "https://billing.example.com"
    assert event["external_id"] == "inv-7"
    assert event["occurred_at"] == "2026-11-22T10:00:00Z"
    assert await count_rows(db, "procrastinate_jobs") == 1
    # The same source and id in structured mode is the same event.
    again = await post(client, cloudevent("inv-7"), CE_JSON)
    assert again.status_code == 200
    assert again.json()["id"] == event["id"]


async def test_a_binary_mode_cloudevent_with_bad_attributes_names_the_header(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    missing_id = {k: v for k, v in BINARY.items() if k != "ce-id"}
    bad_time = BINARY | {"ce-time": "yesterday"}
    bad_version = BINARY | {"ce-specversion": "0.3"}

    for headers, field in (
        (missing_id, "ce-id"),
        (bad_time, "ce-time"),
        (bad_version, "ce-specversion"),
    ):
        response = await post(client, {"invoice_id": "inv-7"}, headers)
        assert_problem(response, 422, field)
    assert await count_rows(db, "notifier.events") == 0


async def test_binary_mode_data_that_is_not_a_json_object_is_refused_not_dropped(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    text = await client.post(
        "/api/v1/events/", content=b"hello", headers=BINARY | {"content-type": "text/plain"}
    )
    array = await post(client, [1, 2], BINARY)

    assert text.status_code == 415, text.text
    assert text.headers["content-type"].startswith("application/problem+json")
    assert_problem(array, 422, "body")
    assert await count_rows(db, "notifier.events") == 0


async def test_data_base64_holding_a_json_object_is_stored_as_the_payload(
    client: AsyncTestClient[Any],
) -> None:
    encoded = base64.b64encode(b'{"invoice_id": "inv-8"}').decode()
    event = cloudevent("inv-8", data_base64=encoded)
    del event["data"]

    response = await post(client, event, CE_JSON)

    assert response.status_code == 201, response.text
    assert response.json()["payload"] == {"invoice_id": "inv-8"}


async def test_data_base64_that_notifier_cannot_store_is_refused_naming_it(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    binary = cloudevent("inv-9", data_base64=base64.b64encode(b"\x89PNG\r\n").decode())
    del binary["data"]
    not_base64 = cloudevent("inv-10", data_base64="***")
    not_ascii = cloudevent("inv-13", data_base64="é")
    del not_ascii["data"]
    del not_base64["data"]
    both = cloudevent("inv-11", data_base64=base64.b64encode(b"{}").decode())

    for body in (binary, not_base64, not_ascii, both):
        assert_problem(await post(client, body, CE_JSON), 422, "data_base64")
    batch = await post(client, [cloudevent("inv-12"), both], CE_BATCH)
    assert_problem(batch, 422, "[1].data_base64")
    assert await count_rows(db, "notifier.events") == 0
