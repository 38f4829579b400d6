"""Requests are what each operation's OpenAPI document declares: the query parameters it
lists, and bodies in JSON of the media types it lists, encoded as UTF-8. Anything else is a
4xx problem document, never a 500, and operations that take no body are unaffected by one."""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.app import create_app
from notifier.settings import Settings
from tests.support import assert_problem, count_rows

# Placeholders for the path parameters: the checks answer before any handler looks them up.
# Fixed, not random: the ids of the parametrized tests must be the same in every xdist worker.
PATH_VALUES = {"channel": "log", "name": "welcome"}
SOME_ID = "00000000-0000-4000-8000-000000000000"


def body_operations() -> list[tuple[str, str, tuple[str, ...]]]:
    """(method, path, media types) of every operation whose document declares a body."""
    document = create_app(Settings()).openapi_schema.to_schema()
    operations = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "requestBody" in operation:
                concrete = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES.get(m[1], SOME_ID), path)
                media_types = tuple(operation["requestBody"]["content"])
                operations.append((method.upper(), concrete, media_types))
    return operations


BODY_OPERATIONS = body_operations()
OPERATION_IDS = [f"{method} {path}" for method, path, _ in BODY_OPERATIONS]
# Each is not UTF-8: a stray continuation byte, a lead byte without its continuation, an
# encoded surrogate, an overlong encoding, a byte UTF-8 never uses, a truncated sequence.
NOT_UTF8 = [b"\x80", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff", b"\xe2\x82"]


CLOUDEVENT_TYPES = ("application/cloudevents+json", "application/cloudevents-batch+json")


def test_every_operation_with_a_body_is_covered() -> None:
    assert len(BODY_OPERATIONS) >= 10
    assert ("POST", "/api/v1/events", ("application/json", *CLOUDEVENT_TYPES)) in BODY_OPERATIONS


@pytest.mark.parametrize(("method", "path", "media_types"), BODY_OPERATIONS, ids=OPERATION_IDS)
async def test_a_body_that_is_not_utf8_is_a_400_naming_the_body_in_every_media_type(
    client: AsyncTestClient[Any], method: str, path: str, media_types: tuple[str, ...]
) -> None:
    """msgspec raised UnicodeDecodeError for these (a 500) on every route."""
    for media_type in media_types:
        for bad in NOT_UTF8:
            body = b'{"type": "t' + bad + b'", "subject": "s' + bad + b'", "per_second": 1}'
            response = await client.request(
                method, path, content=body, headers={"content-type": media_type}
            )

            assert_problem(response, 400, "body")
            assert "is not UTF-8" in response.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "\xff"}',
        b'{"type": "t", "payload": {"\xc3\x28": 1}}',
        b'{"specversion": "1.0", "id": "1", "source": "s\xed\xa0\x80", "type": "t"}',
        b'[{"type": "t"}, {"type": "t", "payload": {"k": ["\xe2\x82"]}}]',
    ],
    ids=["plain", "payload-key", "cloudevent", "batch-item"],
)
async def test_events_not_utf8_are_refused_and_nothing_is_stored(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], body: bytes
) -> None:
    media_types = ["application/json"]
    media_types += CLOUDEVENT_TYPES[1:] if body.startswith(b"[") else CLOUDEVENT_TYPES[:1]
    for media_type in media_types:
        response = await client.post(
            "/api/v1/events/", content=body, headers={"content-type": media_type}
        )

        assert_problem(response, 400, "body")
    assert await count_rows(db, "notifier.events") == 0


@pytest.mark.parametrize(("method", "path", "media_types"), BODY_OPERATIONS, ids=OPERATION_IDS)
async def test_a_body_in_a_media_type_the_operation_does_not_declare_is_a_415(
    client: AsyncTestClient[Any], method: str, path: str, media_types: tuple[str, ...]
) -> None:
    """These were read as JSON and accepted, though the document declares JSON only."""
    body = b'{"type": "t", "subject": "s", "text_body": "b", "per_second": 1}'
    for content_type in ["text/plain", None, "application/x-www-form-urlencoded", "text/json"]:
        headers = {"content-type": content_type} if content_type else {}
        response = await client.request(method, path, content=body, headers=headers)

        assert_problem(response, 415, "Content-Type")
        assert response.json()["errors"][0]["source"] == "header"
        for media_type in media_types:
            assert media_type in response.json()["detail"]
        accept = {"POST": "accept-post", "PATCH": "accept-patch"}.get(method)
        if accept:
            assert response.headers[accept] == ", ".join(media_types)


async def test_415_leaves_nothing_stored(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    response = await client.post(
        "/api/v1/events/", content=b'{"type": "t"}', headers={"content-type": "text/plain"}
    )

    assert_problem(response, 415, "Content-Type")
    assert response.headers["accept-post"] == ", ".join(("application/json", *CLOUDEVENT_TYPES))
    assert await count_rows(db, "notifier.events") == 0


async def test_merge_patch_is_not_taken_for_the_json_a_rule_patch_declares(
    client: AsyncTestClient[Any],
) -> None:
    """``application/*+json`` is not accepted wholesale: merge patch means something else."""
    response = await client.patch(
        f"/api/v1/rules/{uuid.uuid4()}",
        content=b'{"enabled": false}',
        headers={"content-type": "application/merge-patch+json"},
    )

    assert_problem(response, 415, "Content-Type")
    assert response.headers["accept-patch"] == "application/json"


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 201),
        ("Application/JSON", 201),
        ("application/json; charset=utf-8", 201),
        ('application/json;charset="UTF-8"', 201),
        ("application/json; charset=iso-8859-1", 415),
        ("application/json; charset=utf-16", 415),
        ("application/cloudevents+json; charset=utf-8", 201),
    ],
)
async def test_the_declared_media_types_are_matched_without_case_and_only_in_utf8(
    client: AsyncTestClient[Any], content_type: str, status: int
) -> None:
    body = b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t"}'

    response = await client.post(
        "/api/v1/events/", content=body, headers={"content-type": content_type}
    )

    assert response.status_code == status, response.text
    if status == 415:
        assert_problem(response, 415, "Content-Type")


async def test_requests_without_a_body_are_unaffected(client: AsyncTestClient[Any]) -> None:
    some_id = uuid.uuid4()
    plain = {"content-type": "text/plain"}

    # No body where one is required: the 400 it always was, whatever the content type says.
    assert_problem(await client.post("/api/v1/events/", headers=plain), 400, "body")
    assert_problem(await client.post("/api/v1/events/"), 400, "body")
    # Operations that take no body do not look at the content type.
    assert (await client.get("/api/v1/events/", headers=plain)).status_code == 200
    retried = await client.post(f"/api/v1/notifications/{some_id}/retry", headers=plain)
    assert_problem(retried, 404)
    assert_problem(await client.delete(f"/api/v1/rules/{some_id}", headers=plain), 404)
    assert_problem(await client.delete("/api/v1/rate-limits/log"), 404)


async def test_operations_that_take_no_body_ignore_one(client: AsyncTestClient[Any]) -> None:
    """Their document declares no body: nothing is read, whatever is sent."""
    response = await client.post(
        f"/api/v1/notifications/{uuid.uuid4()}/retry",
        content=b"\xff not json",
        headers={"content-type": "application/octet-stream"},
    )

    assert_problem(response, 404)


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/api/v1/notifications/", "stauts=sent", "stauts"),
        ("/api/v1/events/", "limit=5&typ=user.signup", "typ"),
        ("/api/v1/rules/", "limit=5", "limit"),
        ("/health", "verbose=1", "verbose"),
        ("/api/v1/events/", "=x", "query"),
    ],
)
async def test_a_query_parameter_the_operation_does_not_define_is_a_422_naming_it(
    client: AsyncTestClient[Any], path: str, query: str, field: str
) -> None:
    """A misspelt filter returned everything unfiltered; schemathesis calls an undeclared
    parameter invalid, and the server accepted it."""
    response = await client.get(f"{path}?{query}")

    assert_problem(response, 422, field)
    assert response.json()["errors"][0]["source"] == "query"


async def test_the_declared_query_parameters_are_accepted(client: AsyncTestClient[Any]) -> None:
    first = await client.get("/api/v1/events/?limit=1&type=t")
    listed = await client.get(
        "/api/v1/notifications/?status=pending&type=t&entity_id=e&limit=5"
        "&created_after=2020-01-01T00:00:00Z&created_before=2030-01-01T00:00:00Z"
    )

    assert first.status_code == 200, first.text
    assert listed.status_code == 200, listed.text
    # The Link of the next page carries only declared parameters.
    for n in range(2):
        await client.post("/api/v1/events/", json={"type": "t", "payload": {"n": n}})
    page = await client.get("/api/v1/events/?limit=1&type=t")
    following = await client.get(page.headers["link"].partition("<")[2].partition(">")[0])
    assert following.status_code == 200, following.text
