"""Each tenant's data is its own: another tenant's id is as unknown as a missing one."""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from tests.auth.test_scopes import ROUTE_SCOPES
from tests.conftest import CreateApiKey
from tests.endpoints.routes import ENDPOINT_PATH, ENDPOINT_ROUTES
from tests.support import bearer, eventually

RULE = {"event_type": "user.signup", "channel": "log", "recipient_field": "email"}
NOTIFICATION = {
    "notification_type": "contract.renewal",
    "entity_id": "contract-17",
    "target_date": "2099-01-31T00:00:00Z",
    "email": "ada@example.com",
}
# Every operation that takes an id, and the resource it is about.
ID_ROUTES = {
    ("GET", "/api/v1/events/{event_id}"): "event",
    ("GET", "/api/v1/notifications/{notification_id}"): "notification",
    ("DELETE", "/api/v1/notifications/{notification_id}"): "notification",
    ("POST", "/api/v1/notifications/{notification_id}/retry"): "notification",
    ("GET", "/api/v1/rules/{rule_id}"): "rule",
    ("DELETE", "/api/v1/rules/{rule_id}"): "rule",
    ("PATCH", "/api/v1/rules/{rule_id}"): "rule",
    ("DELETE", "/api/v1/preferences/{opt_out_id}"): "opt_out",
}
# Paths whose parameter is a name within the caller's own tenant, not another tenant's id:
# every tenant has its own rate limit per channel and its own templates by name (see
# tests/templates for their isolation).
TENANT_NAMESPACED_ROUTES = {
    ("GET", "/api/v1/templates/{name}"),
    ("PUT", "/api/v1/templates/{name}"),
    ("DELETE", "/api/v1/templates/{name}"),
    ("POST", "/api/v1/templates/{name}/preview"),
    ("PUT", "/api/v1/rate-limits/{channel}"),
    ("DELETE", "/api/v1/rate-limits/{channel}"),
}


@pytest.fixture
async def other_tenant(create_api_key: CreateApiKey) -> dict[str, str]:
    """Headers of an admin of tenant "other": every scope, none of the default tenant's data."""
    return bearer(await create_api_key("other"))


@pytest.fixture
async def owned(client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]) -> dict[str, str]:
    """One resource of each kind in the default tenant; the notification is failed, so that
    its owner could replay it."""
    rule = (await client.post("/api/v1/rules/", json=RULE)).json()
    event = (
        await client.post("/api/v1/events/", json={"type": "user.signup", "payload": {}})
    ).json()
    notification = (await client.post("/api/v1/notifications/", json=NOTIFICATION)).json()
    opt_out = (
        await client.post("/api/v1/preferences/", json={"recipient": "ada@example.com"})
    ).json()
    await db.execute(
        "UPDATE notifier.notifications SET status = 'failed' WHERE id = %s", [notification["id"]]
    )
    return {
        "rule": rule["id"],
        "event": event["id"],
        "notification": notification["id"],
        "opt_out": opt_out["id"],
    }


# A webhook endpoint's routes are checked by tests/endpoints/test_api.py (each needs an
# endpoint with a receiver of its own).
ENDPOINT_ID_ROUTES = {(method, ENDPOINT_PATH + suffix) for method, suffix, _ in ENDPOINT_ROUTES}


def test_every_route_with_an_id_is_checked_here() -> None:
    with_ids = {operation for operation in ROUTE_SCOPES if "{" in operation[1]}
    with_ids -= TENANT_NAMESPACED_ROUTES

    assert with_ids == set(ID_ROUTES) | ENDPOINT_ID_ROUTES


def without(text: str, resource_id: str) -> str:
    return text.replace(resource_id, "<id>")


@pytest.mark.parametrize(("method", "path"), sorted(ID_ROUTES))
async def test_another_tenants_id_answers_exactly_like_an_unknown_one(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    owned: dict[str, str],
    other_tenant: dict[str, str],
    method: str,
    path: str,
) -> None:
    theirs = owned[ID_ROUTES[(method, path)]]
    unknown = str(uuid.uuid4())
    before = await snapshot(db)

    # A well-formed body where one is needed, so only ownership can make the difference.
    body = {"enabled": False} if method == "PATCH" else None
    foreign = await client.request(
        method, re.sub(r"\{\w+\}", theirs, path), headers=other_tenant, json=body
    )
    missing = await client.request(
        method, re.sub(r"\{\w+\}", unknown, path), headers=other_tenant, json=body
    )

    assert foreign.status_code == missing.status_code == 404
    assert without(foreign.text, theirs) == without(missing.text, unknown)
    assert foreign.headers["content-type"] == missing.headers["content-type"]
    assert await snapshot(db) == before, "nothing of the owner's changed"


async def snapshot(db: psycopg.AsyncConnection[Any]) -> list[Any]:
    cursor = await db.execute(
        """
        SELECT (SELECT array_agg(id ORDER BY id) FROM notifier.routing_rules) AS rules,
               (SELECT array_agg((id, status, job_id) ORDER BY id)::text
                FROM notifier.notifications) AS notifications,
               (SELECT array_agg(id ORDER BY id) FROM notifier.recipient_preferences) AS opt_outs,
               (SELECT count(*) FROM procrastinate_jobs) AS jobs
        """
    )
    return [await cursor.fetchone()]


async def test_the_owner_still_reaches_its_resources(
    client: AsyncTestClient[Any], owned: dict[str, str]
) -> None:
    assert (await client.get(f"/api/v1/events/{owned['event']}")).status_code == 200
    assert (await client.get(f"/api/v1/rules/{owned['rule']}")).status_code == 200
    retried = await client.post(f"/api/v1/notifications/{owned['notification']}/retry")
    assert retried.status_code == 202


@pytest.mark.parametrize("path", ["/api/v1/events/", "/api/v1/notifications/", "/api/v1/rules/"])
async def test_lists_show_only_the_callers_rows(
    client: AsyncTestClient[Any], owned: dict[str, str], other_tenant: dict[str, str], path: str
) -> None:
    assert len((await client.get(path)).json()) == 1
    assert (await client.get(path, headers=other_tenant)).json() == []


async def test_filters_never_reach_across_tenants(
    client: AsyncTestClient[Any], owned: dict[str, str], other_tenant: dict[str, str]
) -> None:
    for query in ("?entity_id=contract-17", "?status=failed", "?type=contract.renewal"):
        response = await client.get("/api/v1/notifications/" + query, headers=other_tenant)
        assert response.json() == [], query
    events = await client.get("/api/v1/events/?type=user.signup", headers=other_tenant)
    assert events.json() == []


async def test_idempotency_keys_are_per_tenant(
    client: AsyncTestClient[Any], other_tenant: dict[str, str]
) -> None:
    key = {"Idempotency-Key": "same-key"}

    ours = await client.post("/api/v1/rules/", json=RULE, headers=key)
    theirs = await client.post("/api/v1/rules/", json=RULE, headers=key | other_tenant)
    replay = await client.post("/api/v1/rules/", json=RULE, headers=key | other_tenant)

    assert (ours.status_code, theirs.status_code) == (201, 201)
    assert ours.json()["id"] != theirs.json()["id"]
    assert replay.json() == theirs.json()


async def test_cloudevent_ids_are_per_tenant(
    client: AsyncTestClient[Any], other_tenant: dict[str, str]
) -> None:
    cloudevent = {"specversion": "1.0", "id": "evt-1", "source": "billing", "type": "a.b"}

    ours = await client.post("/api/v1/events/", json=cloudevent)
    theirs = await client.post("/api/v1/events/", json=cloudevent, headers=other_tenant)

    assert (ours.status_code, theirs.status_code) == (201, 201)
    assert ours.json()["id"] != theirs.json()["id"]


async def test_an_event_meets_only_its_own_tenants_rules(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    other_tenant: dict[str, str],
    worker: None,
) -> None:
    ours = (await client.post("/api/v1/rules/", json=RULE)).json()
    await client.post(
        "/api/v1/rules/",
        json={"event_type": "user.signup", "channel": "log", "recipient": "spy@other.example"},
        headers=other_tenant,
    )
    event = (
        await client.post(
            "/api/v1/events/", json={"type": "user.signup", "payload": {"email": "ada@example.com"}}
        )
    ).json()

    async def processed() -> Any:
        detail = (await client.get(f"/api/v1/events/{event['id']}")).json()
        return detail if detail["processed_at"] else None

    detail = await eventually(processed)
    assert [(n["rule_id"], n["recipient"]) for n in detail["notifications"]] == [
        (ours["id"], "ada@example.com")
    ]
    cursor = await db.execute("SELECT DISTINCT tenant_id FROM notifier.notifications")
    assert await cursor.fetchall() == [{"tenant_id": "default"}]
    assert (await client.get("/api/v1/notifications/", headers=other_tenant)).json() == []
