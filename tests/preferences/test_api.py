"""``/api/v1/preferences``: opting recipients out and back in."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from tests.support import assert_problem, next_page


async def opt_out(client: AsyncTestClient[Any], **body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/preferences/", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_opt_out_is_stored_and_listed(client: AsyncTestClient[Any]) -> None:
    created = await opt_out(
        client,
        recipient="ada@example.com",
        channel="webhook",
        notification_type="invoice.*",
        reason="asked by phone",
    )

    assert {k: v for k, v in created.items() if k not in {"id", "created_at"}} == {
        "recipient": "ada@example.com",
        "channel": "webhook",
        "notification_type": "invoice.*",
        "reason": "asked by phone",
        "source": "api",
    }
    listed = await client.get("/api/v1/preferences/", params={"recipient": "ADA@example.com"})
    assert listed.status_code == 200
    assert [o["id"] for o in listed.json()] == [created["id"]]
    other = await client.get("/api/v1/preferences/", params={"recipient": "bob@example.com"})
    assert other.json() == []


async def test_the_same_opt_out_twice_is_one_row_answered_200(
    client: AsyncTestClient[Any],
) -> None:
    first = await opt_out(client, recipient="ada@example.com")
    again = await client.post(
        "/api/v1/preferences/", json={"recipient": "Ada@Example.com", "reason": "second time"}
    )

    assert again.status_code == 200, again.text
    assert again.json()["id"] == first["id"]
    assert again.json()["reason"] == "second time"
    assert len((await client.get("/api/v1/preferences/")).json()) == 1


async def test_opting_back_in_deletes_the_opt_out(client: AsyncTestClient[Any]) -> None:
    created = await opt_out(client, recipient="ada@example.com", channel="log")

    deleted = await client.delete(f"/api/v1/preferences/{created['id']}")
    assert deleted.status_code == 204
    assert (await client.get("/api/v1/preferences/")).json() == []
    assert_problem(await client.delete(f"/api/v1/preferences/{created['id']}"), 404)


async def test_list_pages_with_a_link(client: AsyncTestClient[Any]) -> None:
    for n in range(3):
        await opt_out(client, recipient=f"user{n}@example.com")

    first = await client.get("/api/v1/preferences/", params={"limit": 2})
    following = next_page(first)
    assert following is not None
    second = await client.get(following)

    seen = [o["recipient"] for o in first.json() + second.json()]
    assert sorted(seen) == [f"user{n}@example.com" for n in range(3)]
    assert next_page(second) is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({}, "recipient", id="no-recipient"),
        pytest.param({"recipient": ""}, "recipient", id="empty-recipient"),
        pytest.param({"recipient": "a", "channel": "pigeon"}, "channel", id="unknown-channel"),
        pytest.param(
            {"recipient": "a", "notification_type": "has space"}, "notification_type", id="type"
        ),
        pytest.param({"recipient": "a", "until": "never"}, "until", id="unknown-field"),
        pytest.param({"recipient": "a\u0000"}, "recipient", id="nul"),
    ],
)
async def test_bad_opt_outs_are_422_naming_the_field(
    client: AsyncTestClient[Any], body: dict[str, Any], field: str
) -> None:
    assert_problem(await client.post("/api/v1/preferences/", json=body), 422, field)
