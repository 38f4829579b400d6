"""Keys on the notifications API: one pending notification per key, cancel by key or entity."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient

from tests.support import assert_problem, count_rows

NOW = datetime.datetime.now(datetime.UTC)


def body(**overrides: Any) -> dict[str, Any]:
    return {
        "notification_type": "contract.renewal",
        "entity_id": "contract-42",
        "target_date": (NOW + datetime.timedelta(days=30)).isoformat(),
        "email": "ada@example.com",
    } | overrides


async def states(db: psycopg.AsyncConnection[Any]) -> dict[str, tuple[str, str | None]]:
    """Each notification's status and its job's, by id."""
    cursor = await db.execute(
        """
        SELECT n.id::text, n.status, j.status::text AS job
        FROM notifier.notifications AS n LEFT JOIN procrastinate_jobs AS j ON j.id = n.job_id
        """
    )
    return {row["id"]: (row["status"], row["job"]) for row in await cursor.fetchall()}


async def test_a_new_notification_with_a_pending_ones_key_replaces_it(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    first = await client.post("/api/v1/notifications/", json=body(key="renewal-42"))
    other_key = await client.post("/api/v1/notifications/", json=body(key="renewal-43"))
    assert first.status_code == other_key.status_code == 201, first.text
    assert "replaced" not in first.json()

    moved = (NOW + datetime.timedelta(days=60)).isoformat()
    second = await client.post(
        "/api/v1/notifications/", json=body(key="renewal-42", target_date=moved)
    )

    assert second.status_code == 200, second.text
    assert second.json()["replaced"] == first.json()["id"]
    assert second.json()["key"] == "renewal-42"
    assert await states(db) == {
        first.json()["id"]: ("superseded", "cancelled"),
        other_key.json()["id"]: ("pending", "todo"),
        second.json()["id"]: ("pending", "todo"),
    }
    old = (await client.get(f"/api/v1/notifications/{first.json()['id']}")).json()
    assert (old["status"], old["replaced_by_id"]) == ("superseded", second.json()["id"])
    listed = await client.get("/api/v1/notifications/", params={"key": "renewal-42"})
    assert [n["id"] for n in listed.json()] == [second.json()["id"], first.json()["id"]]


async def test_keys_are_the_tenants_own(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], create_api_key: Any
) -> None:
    other = {"Authorization": f"Bearer {await create_api_key('acme')}"}
    theirs = await client.post("/api/v1/notifications/", json=body(key="k"), headers=other)
    ours = await client.post("/api/v1/notifications/", json=body(key="k"))
    assert theirs.status_code == ours.status_code == 201

    cancelled = await client.delete("/api/v1/notifications/", params={"key": "k"})

    assert cancelled.json() == {"cancelled": 1}
    assert (await states(db))[theirs.json()["id"]] == ("pending", "todo")


async def test_the_same_key_posted_at_once_leaves_one_pending(
    live_api: str, api_headers: dict[str, str], db: psycopg.AsyncConnection[Any]
) -> None:
    async with httpx.AsyncClient(base_url=live_api, headers=api_headers) as http:
        answers = await asyncio.gather(
            *(
                http.post("/api/v1/notifications/", json=body(key="once", entity_id=f"c-{i}"))
                for i in range(8)
            )
        )

    assert sorted(a.status_code for a in answers) == [200] * 7 + [201]
    found = await states(db)
    assert sorted(found.values()) == [("pending", "todo")] + [("superseded", "cancelled")] * 7
    replaced = {a.json().get("replaced") for a in answers} - {None}
    assert len(replaced) == 7  # each replaced a different one: a chain, not a fork


@pytest.mark.parametrize(
    ("params", "cancelled"),
    [
        pytest.param({"key": "renewal-42"}, {"a", "b"}, id="by-key"),
        pytest.param({"entity_id": "contract-42"}, {"a", "c"}, id="by-entity"),
        pytest.param({"key": "renewal-42", "entity_id": "contract-7"}, {"b"}, id="by-both"),
        pytest.param({"key": "nothing"}, set(), id="none-match"),
    ],
)
async def test_delete_by_key_or_entity_cancels_every_pending_match(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    params: dict[str, str],
    cancelled: set[str],
) -> None:
    made = {
        "a": body(key="renewal-42"),
        "b": body(key="renewal-42", entity_id="contract-7", channel="log"),
        "c": body(),
        "d": body(entity_id="contract-8"),
    }
    ids = {}
    for name, request in made.items():
        response = await client.post("/api/v1/notifications/", json=request)
        assert response.status_code in {200, 201}, response.text
        ids[name] = response.json()["id"]
    # "a" was replaced by "b" (same key): a sent one is never touched either.
    await db.execute(
        "UPDATE notifier.notifications SET status = 'pending' WHERE id = %s", [ids["a"]]
    )
    await db.execute("UPDATE notifier.notifications SET status = 'sent' WHERE id = %s", [ids["d"]])

    response = await client.delete("/api/v1/notifications/", params=params)

    assert response.status_code == 200, response.text
    assert response.json() == {"cancelled": len(cancelled)}
    found = await states(db)
    for name, notification_id in ids.items():
        status = found[notification_id][0]
        if name in cancelled:
            assert status == "cancelled", name
        else:
            assert status != "cancelled", name
    assert await count_rows(db, "notifier.notifications") == 4


async def test_delete_without_key_or_entity_is_a_422_naming_key(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.delete("/api/v1/notifications/")

    assert_problem(response, 422, "key")


async def test_a_replacement_repeated_with_its_idempotency_key_answers_the_same(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    first = await client.post("/api/v1/notifications/", json=body(key="k"))
    headers = {"Idempotency-Key": "move-k"}

    replacing = await client.post("/api/v1/notifications/", json=body(key="k"), headers=headers)
    repeat = await client.post("/api/v1/notifications/", json=body(key="k"), headers=headers)

    assert replacing.status_code == repeat.status_code == 200, repeat.text
    assert repeat.json() == replacing.json()
    assert repeat.json()["replaced"] == first.json()["id"]
    assert await count_rows(db, "notifier.notifications") == 2
