"""Every input limit, at the boundary: the limit itself is accepted, one more is a 4xx
problem document naming the field at fault, and nothing is stored."""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.api_types import MAX_PAYLOAD_BYTES
from notifier.app import create_app
from notifier.pagination import MAX_CURSOR_LENGTH, MAX_LIMIT
from notifier.settings import Settings
from tests.support import assert_problem, count_rows, parse_time

BODY_LIMIT = 4096


@pytest.fixture
async def small_body_client(
    settings: Settings, api_headers: dict[str, str]
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The app with NOTIFIER_API_MAX_BODY_BYTES at 4 KiB."""
    app = create_app(settings.replace(api_max_body_bytes=BODY_LIMIT))
    async with AsyncTestClient(app=app) as client:
        client.headers.update(api_headers)
        yield client


def event_of_size(size: int) -> bytes:
    """A valid plain event whose JSON is exactly ``size`` bytes."""
    empty = b'{"type":"sized","payload":{"pad":""}}'
    body = empty.replace(b'""', b'"' + b"x" * (size - len(empty)) + b'"')
    assert len(body) == size
    return body


async def test_a_body_at_the_size_limit_is_accepted(
    small_body_client: AsyncTestClient[Any],
) -> None:
    response = await small_body_client.post(
        "/api/v1/events/", content=event_of_size(BODY_LIMIT), headers=JSON
    )

    assert response.status_code == 201, response.text


async def test_a_body_one_byte_over_the_limit_is_a_413_problem(
    small_body_client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    response = await small_body_client.post(
        "/api/v1/events/", content=event_of_size(BODY_LIMIT + 1), headers=JSON
    )

    assert_problem(response, 413, "body")
    assert response.json()["errors"][0]["message"] == f"must be at most {BODY_LIMIT} bytes"
    assert await count_rows(db, "notifier.events") == 0


async def test_a_chunked_body_over_the_limit_is_a_413_problem(
    live_api: str, settings: Settings, api_headers: dict[str, str]
) -> None:
    """No Content-Length to refuse early: the limit holds on the bytes as they arrive."""
    body = event_of_size(settings.api_max_body_bytes + 1)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    async with httpx.AsyncClient(base_url=live_api, headers=api_headers) as http:
        response = await http.post("/api/v1/events/", content=chunks(), headers=JSON)

    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "body")


JSON = {"content-type": "application/json"}


def payload_of_size(size: int) -> dict[str, str]:
    """A payload whose JSON encoding is exactly ``size`` bytes."""
    overhead = len(json.dumps({"pad": ""}, separators=(",", ":")))
    return {"pad": "x" * (size - overhead)}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/events/", lambda payload: {"type": "big", "payload": payload}, "payload"),
        (
            "/api/v1/events/",
            lambda payload: [{"type": "ok"}, {"type": "big", "payload": payload}],
            "[1].payload",
        ),
        (
            "/api/v1/notifications/",
            lambda payload: {
                "notification_type": "big",
                "entity_id": "e",
                "target_date": "2030-01-01T00:00:00Z",
                "email": "ada@example.com",
                "data": payload,
            },
            "data",
        ),
    ],
    ids=["event", "batch-item", "notification-data"],
)
async def test_payloads_are_bounded_in_encoded_size(
    client: AsyncTestClient[Any], path: str, body: Any, field: str
) -> None:
    at_limit = await client.post(path, json=body(payload_of_size(MAX_PAYLOAD_BYTES)))
    over = await client.post(path, json=body(payload_of_size(MAX_PAYLOAD_BYTES + 1)))

    assert at_limit.status_code == 201, at_limit.text
    assert_problem(over, 422, field)


def notification(**changes: Any) -> dict[str, Any]:
    return {
        "notification_type": "limits",
        "entity_id": "e",
        "target_date": "2030-01-01T00:00:00Z",
        "email": "ada@example.com",
    } | changes


def cloudevent(**changes: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": "1", "source": "s", "type": "limits"} | changes


def rule(**changes: Any) -> dict[str, Any]:
    return {"event_type": "limits", "channel": "log", "recipient": "ops"} | changes


@pytest.mark.parametrize(
    ("path", "make", "field", "limit"),
    [
        ("/api/v1/events/", lambda text: {"type": text}, "type", 200),
        ("/api/v1/events/", lambda text: cloudevent(id=text), "id", 255),
        ("/api/v1/events/", lambda text: cloudevent(source=text), "source", 1024),
        ("/api/v1/events/", lambda text: cloudevent(subject=text), "subject", 1024),
        ("/api/v1/events/", lambda text: cloudevent(dataschema=text), "dataschema", 2048),
        ("/api/v1/notifications/", lambda text: notification(entity_id=text), "entity_id", 200),
        ("/api/v1/notifications/", lambda text: notification(recipient=text), "recipient", 2048),
        ("/api/v1/rules/", lambda text: rule(name=text), "name", 200),
    ],
)
async def test_strings_are_bounded_in_length(
    client: AsyncTestClient[Any], path: str, make: Any, field: str, limit: int
) -> None:
    at_limit = await client.post(path, json=make("a" * limit))
    over = await client.post(path, json=make("a" * (limit + 1)))

    assert at_limit.status_code == 201, at_limit.text
    assert_problem(over, 422, field)


async def test_template_names_are_bounded_in_length(client: AsyncTestClient[Any]) -> None:
    name = "a" * 100
    stored = await client.put(
        f"/api/v1/templates/{name}", json={"subject": "Hi", "text_body": "Hello"}
    )
    assert stored.status_code == 201, stored.text

    at_limit = await client.post("/api/v1/rules/", json=rule(template=name))
    over = await client.post("/api/v1/rules/", json=rule(template=name + "a"))

    assert at_limit.status_code == 201, at_limit.text
    assert_problem(over, 422, "template")


@pytest.mark.parametrize("path", ["/api/v1/notifications/", "/api/v1/rules/"])
async def test_channel_names_are_bounded_in_length(client: AsyncTestClient[Any], path: str) -> None:
    body = notification() if path.endswith("notifications/") else rule()

    response = await client.post(path, json=body | {"channel": "c" * 65})

    assert_problem(response, 422, "channel")
    assert "length <= 64" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "parameter", "limit"),
    [
        ("/api/v1/events/", "type", 200),
        ("/api/v1/notifications/", "type", 200),
        ("/api/v1/notifications/", "entity_id", 200),
    ],
)
async def test_query_filters_are_bounded_in_length(
    client: AsyncTestClient[Any], path: str, parameter: str, limit: int
) -> None:
    at_limit = await client.get(path, params={parameter: "a" * limit})
    over = await client.get(path, params={parameter: "a" * (limit + 1)})

    assert at_limit.status_code == 200, at_limit.text
    assert_problem(over, 422, parameter)


@pytest.mark.parametrize("path", ["/api/v1/events/", "/api/v1/notifications/"])
async def test_page_size_and_cursor_are_bounded(client: AsyncTestClient[Any], path: str) -> None:
    largest = await client.get(path, params={"limit": MAX_LIMIT})
    too_large = await client.get(path, params={"limit": MAX_LIMIT + 1})
    long_cursor = await client.get(path, params={"cursor": "a" * (MAX_CURSOR_LENGTH + 1)})

    assert largest.status_code == 200
    assert_problem(too_large, 422, "limit")
    assert_problem(long_cursor, 422, "cursor")


@pytest.mark.parametrize(
    "value", ["0.5", "1700000000", "2026-01-01", "2026-01-01T00:00:00", "2026-01-01 00:00Z"]
)
async def test_query_times_must_be_rfc3339_with_a_zone(
    client: AsyncTestClient[Any], value: str
) -> None:
    response = await client.get("/api/v1/notifications/", params={"created_before": value})

    assert_problem(response, 422, "created_before")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", "ada"),
        ("email", "ada@localhost"),
        ("email", "Ada <ada@example.com>"),
        ("email", "ada@example.com\n"),
    ],
)
async def test_invalid_email_is_a_422_problem_naming_it(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], field: str, value: str
) -> None:
    response = await client.post("/api/v1/notifications/", json=notification(**{field: value}))

    assert_problem(response, 422, field)
    assert await count_rows(db, "notifier.notifications") == 0


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("4915112345678", "4915112345678"),  # national, and no default region: as given
        ("+0123456", "+0123456"),
        ("+1 415 555 0123", "+14155550123"),  # read by phonenumbers: E.164
        ("+1234567890123456", "+1234567890123456"),  # 16 digits
    ],
)
async def test_a_phone_that_is_not_the_recipient_is_stored_as_given_or_in_e164(
    client: AsyncTestClient[Any], value: str, stored: str
) -> None:
    # Issue 17: seed clients send a phone with every notification; only an SMS recipient
    # must be a number (tests/test_seed_client.py checks that 422).
    response = await client.post("/api/v1/notifications/", json=notification(phone=value))

    assert response.status_code == 201, response.text
    assert response.json()["phone"] == stored


async def test_valid_email_and_e164_phone_are_accepted(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/api/v1/notifications/",
        json=notification(email="ada.lovelace+bills@example.co.uk", phone="+123456789012345"),
    )

    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/notifications/", notification(recipient="ada\nforged log line")),
        ("/api/v1/rules/", rule(recipient="ops\r\nforged")),
    ],
)
async def test_log_recipients_must_not_carry_control_characters(
    client: AsyncTestClient[Any], path: str, body: dict[str, Any]
) -> None:
    response = await client.post(path, json=body)

    assert_problem(response, 422, "recipient")


@pytest.mark.parametrize(
    ("key", "status"),
    [(b"k" * 255, 201), (b"a key with spaces", 201), (b"k" * 256, 400), ("clé".encode(), 400)],
)
async def test_idempotency_keys_are_bounded_visible_ascii(
    client: AsyncTestClient[Any], key: bytes, status: int
) -> None:
    response = await client.post(
        "/api/v1/events/",
        content=b'{"type": "keyed"}',
        headers={b"content-type": b"application/json", b"idempotency-key": key},
    )

    assert response.status_code == status, response.text
    if status == 400:
        assert_problem(response, 400, "Idempotency-Key")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/notifications/", notification(target_date=0), "target_date"),
        ("/api/v1/notifications/", notification(target_date=1.7e9), "target_date"),
        ("/api/v1/notifications/", notification(lead_time_days="7"), "lead_time_days"),
        ("/api/v1/rules/", rule(enabled="true"), "enabled"),
    ],
)
async def test_bodies_are_read_strictly_as_the_document_says(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    """No number read as a time, no string as a number or a boolean."""
    response = await client.post(path, json=body)

    assert_problem(response, 422, field)
    assert await count_rows(db, "notifier.notifications") == 0
    assert await count_rows(db, "notifier.routing_rules") == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/api/v1/templates/", {"name": "a\n", "subject": "s", "text_body": "t"}, "name"),
        ("PUT", "/api/v1/templates/a%0A", {"subject": "s", "text_body": "t"}, "name"),
        ("GET", "/api/v1/templates/a%0A", None, "name"),
        ("POST", "/api/v1/events/", {"type": "signup\n"}, "type"),
        (
            "POST",
            "/api/v1/events/",
            cloudevent(traceparent=f"00-{'0' * 32}-{'0' * 16}-00\n"),
            "traceparent",
        ),
        (
            "POST",
            "/api/v1/notifications/",
            notification(notification_type="t\n"),
            "notification_type",
        ),
        ("POST", "/api/v1/rules/", rule(event_type="t\n"), "event_type"),
        (
            "POST",
            "/api/v1/rules/",
            rule(recipient=None, recipient_field="email\n"),
            "recipient_field",
        ),
        ("POST", "/api/v1/rules/", rule(lead_times=["P1D\n"]), "lead_times[0]"),
    ],
    ids=[
        "template",
        "template-path",
        "template-get",
        "event",
        "traceparent",
        "notification",
        "rule-type",
        "rule-field",
        "rule-lead-time",
    ],
)
async def test_a_trailing_newline_is_refused_as_the_document_says(
    client: AsyncTestClient[Any], method: str, path: str, body: Any, field: str
) -> None:
    """Python's ``$`` also matches before a final newline, ECMAScript's (the document's) does
    not: these were stored, and the template name broke the table's CHECK (a 500)."""
    response = await client.request(method, path, json=body)

    assert_problem(response, 422, field)


@pytest.mark.parametrize("character", ["\x1c", "\x1f", "\x85", "\ufeff", " ", "\u2028"])
async def test_whitespace_in_either_regex_dialect_is_refused_in_types(
    client: AsyncTestClient[Any], character: str
) -> None:
    """Python's and ECMAScript's ``\\s`` differ; a type holds no whitespace in either."""
    response = await client.post("/api/v1/events/", json={"type": f"user{character}signup"})

    assert_problem(response, 422, "type")


@pytest.mark.parametrize(
    ("method", "path", "body", "field", "value"),
    [
        ("POST", "/api/v1/notifications/", notification(lead_time_days=7.0), "lead_time_days", 7),
        ("PUT", "/api/v1/rate-limits/log", {"per_second": 2, "burst": 3.0}, "burst", 3),
    ],
)
async def test_a_whole_number_written_as_a_float_is_the_integer_the_document_asks_for(
    client: AsyncTestClient[Any], method: str, path: str, body: Any, field: str, value: int
) -> None:
    """JSON Schema has one kind of number, so ``7.0`` is a valid ``integer``; strict msgspec
    refused it (found by schemathesis: a schema-valid request rejected)."""
    accepted = await client.request(method, path, json=body)
    fraction = await client.request(method, path, json=body | {field: value + 0.5})

    assert accepted.status_code in {200, 201}, accepted.text
    assert accepted.json()[field] == value
    assert_problem(fraction, 422, field)


@pytest.mark.parametrize(
    ("path", "body", "stored"),
    [
        (
            "/api/v1/events/",
            {"type": "t", "occurred_at": "2030-06-04T23:52:32+23:31"},
            "occurred_at",
        ),
        (
            "/api/v1/events/",
            [{"type": "t", "occurred_at": "2030-06-04T23:52:32-23:59"}],
            "occurred_at",
        ),
        ("/api/v1/events/", cloudevent(time="2030-06-04T23:52:32+16:00"), "occurred_at"),
        (
            "/api/v1/notifications/",
            notification(target_date="2030-06-04T23:52:32+23:31"),
            "target_date",
        ),
    ],
    ids=["event", "batch", "cloudevent", "notification"],
)
async def test_instants_with_any_rfc3339_offset_are_stored_as_the_same_instant(
    client: AsyncTestClient[Any], path: str, body: Any, stored: str
) -> None:
    """RFC 3339 allows offsets up to 23:59, PostgreSQL reads at most 15:59 in text: these
    were refused by the database, a 422 naming nothing (found by schemathesis)."""
    sent = body[0] if isinstance(body, list) else body
    instant = sent.get("occurred_at") or sent.get("time") or sent.get("target_date")

    response = await client.post(path, json=body)

    assert response.status_code == 201, response.text
    answer = response.json()[0] if isinstance(body, list) else response.json()
    assert parse_time(answer[stored]) == datetime.datetime.fromisoformat(instant)


async def test_query_instants_with_any_rfc3339_offset_are_accepted(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.get(
        "/api/v1/notifications/",
        params={
            "created_after": "2030-01-01T00:00:00+23:31",
            "created_before": "2030-01-02T00:00:00-23:59",
        },
    )

    assert response.status_code == 200, response.text
