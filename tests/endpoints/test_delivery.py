"""Delivering to endpoints, for real: the Litestar app, a procrastinate worker and a loopback
receiver, every signature checked by the Standard Webhooks reference library."""

from __future__ import annotations

import datetime
from typing import Any

import psycopg
from litestar.testing import AsyncTestClient

from notifier.endpoints import service
from notifier.services import Services
from tests.conftest import CreateApiKey
from tests.endpoints.support import create_endpoint, notify_endpoint, verifies
from tests.support import (
    WEBHOOK_SECRET,
    WebhookReceiver,
    bearer,
    count_rows,
    eventually,
    wait_for_status,
    wait_until_jobs_ran,
)

UTC = datetime.UTC


def arrived_at(receiver: WebhookReceiver, path: str) -> list[Any]:
    return [request for request in receiver.received() if request.path == path]


async def test_each_endpoints_messages_verify_with_its_own_secret_only(
    client: AsyncTestClient[Any],
    create_api_key: CreateApiKey,
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    acme = bearer(await create_api_key("acme"))
    first = await create_endpoint(client, receiver.url + "/first")
    second = await create_endpoint(client, receiver.url + "/second")
    theirs = await create_endpoint(client, receiver.url + "/acme", auth=acme)
    sent = [
        await notify_endpoint(client, first["id"]),
        await notify_endpoint(client, second["id"]),
        await notify_endpoint(client, theirs["id"], headers=acme),
    ]
    await wait_for_status(client, sent[0]["id"], "sent")
    await wait_for_status(client, sent[1]["id"], "sent")
    await eventually(lambda: _has(receiver, "/hooks/acme"))

    secrets = {"/hooks/first": first, "/hooks/second": second, "/hooks/acme": theirs}
    for path, endpoint in secrets.items():
        (request,) = arrived_at(receiver, path)
        assert verifies(endpoint["secret"], request), path
        others = [e["secret"] for p, e in secrets.items() if p != path]
        assert not any(verifies(secret, request) for secret in others), path
        # Nor with the retired service-wide secret.
        assert not verifies(WEBHOOK_SECRET, request)


async def _has(receiver: WebhookReceiver, path: str) -> bool:
    return bool(arrived_at(receiver, path))


async def test_bare_url_webhooks_are_signed_with_their_tenants_secret(
    client: AsyncTestClient[Any],
    create_api_key: CreateApiKey,
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    acme = bearer(await create_api_key("acme"))
    target = (datetime.datetime.now(UTC) + datetime.timedelta(days=3)).isoformat()
    for headers, path in ((None, "/default"), (acme, "/acme")):
        response = await client.post(
            "/api/v1/notifications/",
            json={
                "notification_type": "invoice.due",
                "entity_id": "x",
                "target_date": target,
                "channel": "webhook",
                "recipient": receiver.url + path,
            },
            headers=headers,
        )
        assert response.status_code == 201, response.text
    await eventually(lambda: _has(receiver, "/hooks/default"))
    await eventually(lambda: _has(receiver, "/hooks/acme"))
    acme_secret = (await client.get("/api/v1/webhook-secret/", headers=acme)).json()["secret"]
    (default_request,) = arrived_at(receiver, "/hooks/default")
    (acme_request,) = arrived_at(receiver, "/hooks/acme")
    # The default tenant kept NOTIFIER_WEBHOOK_SECRET: its receivers need no change.
    assert verifies(WEBHOOK_SECRET, default_request)
    assert verifies(acme_secret, acme_request)
    assert not verifies(WEBHOOK_SECRET, acme_request)
    assert not verifies(acme_secret, default_request)


async def test_both_secrets_verify_during_the_overlap_and_only_the_new_after_it(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    endpoint = await create_endpoint(client, receiver.url)
    old = endpoint["secret"]
    rotation = await client.post(
        f"/api/v1/endpoints/{endpoint['id']}/secret/rotate", json={"overlap": "PT1H"}
    )
    new = rotation.json()["secret"]

    during = await notify_endpoint(client, endpoint["id"], entity_id="during")
    await wait_for_status(client, during["id"], "sent")
    (request,) = receiver.received()
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verifies(old, request)
    assert verifies(new, request)

    # The overlap ends (as an hour later).
    await db.execute(
        "UPDATE notifier.endpoints SET previous_expires_at = now() - interval '1 second' "
        "WHERE id = %s",
        [endpoint["id"]],
    )
    after = await notify_endpoint(client, endpoint["id"], entity_id="after")
    await wait_for_status(client, after["id"], "sent")
    request = receiver.received()[1]
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    assert verifies(new, request)
    assert not verifies(old, request)


async def test_a_disabled_endpoint_receives_nothing_and_loses_nothing(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    endpoint = await create_endpoint(client, receiver.url)
    paused = await client.patch(
        f"/api/v1/endpoints/{endpoint['id']}",
        json={"enabled": False, "disabled_reason": "receiver being moved"},
    )
    assert paused.status_code == 200, paused.text
    waiting = [
        await notify_endpoint(client, endpoint["id"], entity_id=f"invoice-{n}") for n in range(3)
    ]
    await wait_until_jobs_ran(db)

    assert receiver.received() == []
    for notification in waiting:
        held = (await client.get(f"/api/v1/notifications/{notification['id']}")).json()
        assert (held["status"], held["attempts"], held["delivery_attempts"]) == ("pending", 0, [])
    cursor = await db.execute(
        "SELECT count(*) AS n FROM notifier.notifications WHERE held_since IS NOT NULL"
    )
    assert (await cursor.fetchone()) == {"n": 3}

    resumed = await client.patch(f"/api/v1/endpoints/{endpoint['id']}", json={"enabled": True})
    assert resumed.status_code == 200, resumed.text
    for notification in waiting:
        sent = await wait_for_status(client, notification["id"], "sent")
        assert [a["attempt"] for a in sent["delivery_attempts"]] == [1]
    assert sorted(r.json()["data"]["entity_id"] for r in receiver.received()) == [
        "invoice-0",
        "invoice-1",
        "invoice-2",
    ]
    cursor = await db.execute(
        "SELECT kind, reason FROM notifier.endpoint_events WHERE endpoint_id = %s ORDER BY id",
        [endpoint["id"]],
    )
    assert [(r["kind"], r["reason"]) for r in await cursor.fetchall()] == [
        ("disabled", "receiver being moved"),
        ("enabled", "enabled through the api"),
    ]


async def test_recover_replays_exactly_the_failed_and_dead_since_the_time(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    endpoint = await create_endpoint(client, receiver.url)
    elsewhere = await create_endpoint(client, receiver.url + "/elsewhere")
    delivered = await notify_endpoint(client, endpoint["id"], entity_id="delivered")
    await wait_for_status(client, delivered["id"], "sent")
    receiver.default_status = 400  # a permanent failure: failed at the first attempt
    old, recent, died, other = (
        await notify_endpoint(client, endpoint["id"], entity_id="old"),
        await notify_endpoint(client, endpoint["id"], entity_id="recent"),
        await notify_endpoint(client, endpoint["id"], entity_id="died"),
        await notify_endpoint(client, elsewhere["id"], entity_id="other"),
    )
    for notification in (old, recent, died, other):
        await wait_for_status(client, notification["id"], "failed")
    since = datetime.datetime.now(UTC) - datetime.timedelta(hours=1)
    # One ended before `since`; one ran out of attempts (dead) rather than failing.
    await db.execute(
        "UPDATE notifier.notifications SET updated_at = %s WHERE id = %s",
        [since - datetime.timedelta(minutes=5), old["id"]],
    )
    await db.execute(
        "UPDATE notifier.notifications SET status = 'dead' WHERE id = %s", [died["id"]]
    )
    receiver.default_status = 200
    before = len(receiver.received())

    response = await client.post(
        f"/api/v1/endpoints/{endpoint['id']}/recover", json={"since": since.isoformat()}
    )

    assert response.status_code == 202, response.text
    assert response.json() == {"recovered": 2}
    await wait_for_status(client, recent["id"], "sent")
    await wait_for_status(client, died["id"], "sent")
    await wait_until_jobs_ran(db)
    replayed = sorted(r.json()["data"]["entity_id"] for r in receiver.received()[before:])
    assert replayed == ["died", "recent"]
    for notification, status in ((old, "failed"), (other, "failed"), (delivered, "sent")):
        unchanged = (await client.get(f"/api/v1/notifications/{notification['id']}")).json()
        assert unchanged["status"] == status
    # Nothing left to recover since then.
    again = await client.post(
        f"/api/v1/endpoints/{endpoint['id']}/recover", json={"since": since.isoformat()}
    )
    assert again.json() == {"recovered": 0}


async def test_attempt_log_newest_first_filtered_and_paged_with_the_answers_first_kib(
    client: AsyncTestClient[Any],
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    endpoint = await create_endpoint(client, receiver.url)
    receiver.answer_body = b"x" * 3000
    receiver.script(500, 500)
    notification = await notify_endpoint(client, endpoint["id"])
    await wait_for_status(client, notification["id"], "sent")

    base = f"/api/v1/endpoints/{endpoint['id']}/attempts"
    attempts = (await client.get(base)).json()
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in attempts] == [
        (3, "delivered", 200),
        (2, "retry", 500),
        (1, "retry", 500),
    ]
    for attempt in attempts:
        assert attempt["notification_id"] == notification["id"]
        assert attempt["answer"] == "x" * 1024
        assert attempt["duration_ms"] >= 0
    retries = (await client.get(base, params={"outcome": "retry"})).json()
    assert [a["attempt"] for a in retries] == [2, 1]

    first_page = await client.get(base, params={"limit": 2})
    assert [a["attempt"] for a in first_page.json()] == [3, 2]
    cursor = first_page.headers["x-next-cursor"]
    second_page = await client.get(base, params={"limit": 2, "cursor": cursor})
    assert [a["attempt"] for a in second_page.json()] == [1]
    assert "x-next-cursor" not in second_page.headers


async def test_a_test_send_is_signed_and_answered_synchronously(
    client: AsyncTestClient[Any], receiver: WebhookReceiver
) -> None:
    endpoint = await create_endpoint(client, receiver.url, headers={"X-Team": "billing"})
    response = await client.post(
        f"/api/v1/endpoints/{endpoint['id']}/test", json={"payload": {"hello": "world"}}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["delivered"], result["status_code"], result["error"]) == (True, 200, None)
    assert result["duration_ms"] >= 0
    (request,) = receiver.received()
    assert verifies(endpoint["secret"], request)
    assert request.headers["x-team"] == "billing"
    assert request.json()["type"] == "endpoint.test"
    assert request.json()["data"]["payload"] == {"hello": "world"}

    receiver.script(503)
    failed = (await client.post(f"/api/v1/endpoints/{endpoint['id']}/test", json={})).json()
    assert (failed["delivered"], failed["status_code"]) == (False, 503)
    assert "503" in failed["error"]


async def test_an_endpoint_failing_too_often_is_disabled_and_its_notifications_wait(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    receiver: WebhookReceiver,
    services: Services,
    worker: None,
) -> None:
    endpoint = await create_endpoint(client, receiver.url)
    receiver.default_status = 500
    notification = await notify_endpoint(client, endpoint["id"])
    await eventually(lambda: _attempts_at_least(client, notification["id"], 2))
    counted = services.metrics.endpoints_disabled._value.get()

    disabled = await service.disable_failing_endpoints(
        services.pool, services.metrics, failing_for=None, failures=2
    )

    assert disabled == 1
    assert services.metrics.endpoints_disabled._value.get() == counted + 1
    shown = (await client.get(f"/api/v1/endpoints/{endpoint['id']}")).json()
    assert shown["enabled"] is False
    assert "disabled automatically" in shown["disabled_reason"]
    assert shown["disabled_at"] is not None
    cursor = await db.execute(
        "SELECT kind FROM notifier.endpoint_events WHERE endpoint_id = %s", [endpoint["id"]]
    )
    assert [r["kind"] for r in await cursor.fetchall()] == ["auto_disabled"]
    # Its notification stops spending attempts: it is held at its next one.
    await eventually(lambda: _held(db, notification["id"]))
    attempts_when_held = len(receiver.received())
    await wait_until_jobs_ran(db)
    assert len(receiver.received()) == attempts_when_held
    held = (await client.get(f"/api/v1/notifications/{notification['id']}")).json()
    assert held["status"] == "pending"

    receiver.default_status = 200
    await client.patch(f"/api/v1/endpoints/{endpoint['id']}", json={"enabled": True})
    await wait_for_status(client, notification["id"], "sent")


async def test_span_based_disable_needs_every_attempt_to_have_failed_that_long(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    services: Services,
) -> None:
    failing = await create_endpoint(client, "https://failing.example.com/")
    recovered = await create_endpoint(client, "https://recovered.example.com/")
    await db.execute(
        """
        INSERT INTO notifier.endpoint_health (endpoint_id, failing_since, failures)
        VALUES (%s, now() - interval '6 days', 40), (%s, NULL, 0)
        """,
        [failing["id"], recovered["id"]],
    )
    # The defaults: five days, no count.
    thresholds = service.disable_thresholds(services.settings)
    assert thresholds == {"failing_for": datetime.timedelta(days=5), "failures": None}
    assert (
        await service.disable_failing_endpoints(services.pool, services.metrics, **thresholds) == 1
    )
    states = {e["id"]: e["enabled"] for e in (await client.get("/api/v1/endpoints/")).json()}
    assert states == {failing["id"]: False, recovered["id"]: True}
    assert await count_rows(db, "notifier.endpoint_events") == 1


async def test_a_filtered_out_type_fails_without_an_attempt(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, worker: None
) -> None:
    endpoint = await create_endpoint(client, receiver.url, type_filter=["billing.*"])
    refused = await notify_endpoint(client, endpoint["id"], notification_type="user.signup")
    taken = await notify_endpoint(client, endpoint["id"], notification_type="billing.paid")
    failed = await wait_for_status(client, refused["id"], "failed")
    assert failed["delivery_attempts"] == []
    assert "type_filter" in failed["last_error"]
    await wait_for_status(client, taken["id"], "sent")
    assert [r.json()["type"] for r in receiver.received()] == ["billing.paid"]


async def test_a_rule_naming_an_endpoint_delivers_there_signed(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, worker: None
) -> None:
    endpoint = await create_endpoint(client, receiver.url, headers={"Authorization": "Bearer t"})
    rule = await client.post(
        "/api/v1/rules/",
        json={"event_type": "order.*", "channel": "webhook", "endpoint": endpoint["id"]},
    )
    assert rule.status_code == 201, rule.text
    event = await client.post("/api/v1/events/", json={"type": "order.created", "payload": {}})
    assert event.status_code == 201, event.text
    await eventually(lambda: _has(receiver, "/hooks"))
    (request,) = receiver.received()
    assert verifies(endpoint["secret"], request)
    assert request.headers["authorization"] == "Bearer t"
    assert request.json()["type"] == "order.created"


async def test_deleting_an_endpoint_fails_what_waited_for_it(
    client: AsyncTestClient[Any], receiver: WebhookReceiver, db: psycopg.AsyncConnection[Any]
) -> None:
    endpoint = await create_endpoint(client, receiver.url, enabled=False, disabled_reason="x")
    waiting = await notify_endpoint(client, endpoint["id"])
    assert (await client.delete(f"/api/v1/endpoints/{endpoint['id']}")).status_code == 204
    failed = (await client.get(f"/api/v1/notifications/{waiting['id']}")).json()
    assert failed["status"] == "failed"
    assert "deleted" in failed["last_error"]
    row = await (
        await db.execute("SELECT secret FROM notifier.endpoints WHERE id = %s", [endpoint["id"]])
    ).fetchone()
    assert row == {"secret": ""}


async def _attempts_at_least(client: AsyncTestClient[Any], notification_id: str, n: int) -> bool:
    body = (await client.get(f"/api/v1/notifications/{notification_id}")).json()
    return len(body["delivery_attempts"]) >= n


async def _held(db: psycopg.AsyncConnection[Any], notification_id: str) -> bool:
    cursor = await db.execute(
        "SELECT held_since IS NOT NULL AS held FROM notifier.notifications WHERE id = %s",
        [notification_id],
    )
    row = await cursor.fetchone()
    return bool(row and row["held"])
