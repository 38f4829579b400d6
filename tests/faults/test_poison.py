"""Poison work ends failed or dead, visibly and replayably, while the rest keeps flowing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import psycopg

from notifier.services import Services
from tests.faults.support import (
    DedupReceiver,
    WorkerProcesses,
    rows,
    schedule_webhooks,
    size,
    wait_until,
    webhook_id,
)
from tests.figures import Figures
from tests.support import eventually

MAX_ATTEMPTS = 3


async def delivered_within(
    receiver: DedupReceiver, ids: list[uuid.UUID], timeout: float = 120
) -> float:
    """Seconds until every one of ``ids`` reached the receiver."""
    started = time.monotonic()
    wanted = {webhook_id(i) for i in ids}
    assert await wait_until(lambda: wanted <= receiver.unique_ids(), timeout=timeout)
    return time.monotonic() - started


async def test_poison_ends_visible_and_replayable_while_the_rest_flows(
    services: Services,
    db: psycopg.AsyncConnection[Any],
    live_api: str,
    api_headers: dict[str, str],
    dedup_receiver: DedupReceiver,
    worker_processes: WorkerProcesses,
    figure: Figures,
) -> None:
    healthy = size(200, 30)
    poison_each = size(50, 6)
    dedup_receiver.hold_seconds = 0.05
    hooks = dedup_receiver.url + "/hooks"
    for _ in range(2):
        worker_processes.start(delivery_max_attempts=MAX_ATTEMPTS, worker_concurrency=4)
    # Warm up (both workers started, connections open) before measuring anything.
    await delivered_within(dedup_receiver, await schedule_webhooks(services, hooks, healthy // 2))

    # The healthy rate alone, then again with every kind of poison queued ahead of it.
    alone = await delivered_within(
        dedup_receiver, await schedule_webhooks(services, hooks, healthy)
    )

    await db.execute(
        "INSERT INTO notifier.routing_rules (event_type, channel, recipient_field) "
        "VALUES ('poison.routing', 'webhook', 'callback_url')"
    )
    # A tenant template that compiles but needs a field these events never carry.
    await db.execute(
        "INSERT INTO notifier.templates (tenant_id, name, subject, text_body) "
        "VALUES ('default', 'needs-a-name', 'Hello', 'Hello {{ customer.name }}')"
    )
    await db.execute(
        "INSERT INTO notifier.routing_rules (event_type, channel, recipient, template) "
        "VALUES ('poison.template', 'webhook', %s, 'needs-a-name')",
        [hooks],
    )
    poison: dict[str, list[uuid.UUID]] = {
        "channel not configured": await schedule_webhooks(
            services, hooks, poison_each, channel="pager"
        ),
        "recipient rejected": await schedule_webhooks(
            services, "ftp://example.com/hooks", poison_each
        ),
        "receiver always 500": await schedule_webhooks(
            services, dedup_receiver.url + "/fail", poison_each
        ),
    }
    async with httpx.AsyncClient(base_url=live_api, headers=api_headers, timeout=30) as http:
        events = [
            await http.post("/api/v1/events/", json={"type": kind, "payload": {"n": n}})
            for kind in ("poison.routing", "poison.template")
            for n in range(poison_each)
        ]
        assert {e.status_code for e in events} == {201}
        flowing = await delivered_within(
            dedup_receiver, await schedule_webhooks(services, hooks, healthy)
        )

        def routed(kind: str) -> Callable[[], Awaitable[list[dict[str, Any]]]]:
            async def notifications() -> list[dict[str, Any]]:
                found = await rows(
                    db,
                    "SELECT id FROM notifier.notifications WHERE notification_type = %s",
                    kind,
                )
                return found if len(found) == poison_each else []

            return notifications

        poison["payload the routing cannot use"] = [
            r["id"] for r in await eventually(routed("poison.routing"))
        ]
        poison["template that fails"] = [
            r["id"] for r in await eventually(routed("poison.template"))
        ]
        expected_end = {
            "channel not configured": ("failed", "channel 'pager' is not configured"),
            "recipient rejected": ("failed", "recipient must be an absolute"),
            "receiver always 500": ("dead", "receiver answered 500"),
            "payload the routing cannot use": ("failed", "payload has no field 'callback_url'"),
            "template that fails": ("failed", "template 'needs-a-name': text_body"),
        }

        async def shown(notification_id: uuid.UUID) -> dict[str, Any]:
            response = await http.get(f"/api/v1/notifications/{notification_id}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        async def all_ended() -> bool:
            for kind, ids in poison.items():
                status, _ = expected_end[kind]
                for notification_id in ids:
                    if (await shown(notification_id))["status"] != status:
                        return False
            return True

        await eventually(all_ended, timeout=120, interval=0.5)
        for kind, ids in poison.items():
            _, error = expected_end[kind]
            for notification_id in ids:
                assert error in (await shown(notification_id))["last_error"], kind

        # Replay: once the receiver is fixed, the dead ones go out; the rest fail again,
        # with their error, as long as the cause stays.
        with dedup_receiver.lock:
            dedup_receiver.failing.clear()
        for ids in poison.values():
            for notification_id in ids:
                response = await http.post(f"/api/v1/notifications/{notification_id}/retry")
                assert response.status_code == 202, response.text
        replayed_dead = poison["receiver always 500"]
        await delivered_within(dedup_receiver, replayed_dead)

        async def replays_ended() -> bool:
            for kind, ids in poison.items():
                status = "sent" if kind == "receiver always 500" else expected_end[kind][0]
                for notification_id in ids:
                    body = await shown(notification_id)
                    if body["status"] != status:
                        return False
            return True

        await eventually(replays_ended, timeout=60, interval=0.5)

    ratio = alone / flowing
    assert ratio > 0.2, f"healthy deliveries slowed to {ratio:.0%} of their rate"
    figure(
        f"{healthy} healthy webhooks alone in {alone:.2f}s ({healthy / alone:.0f}/s); with "
        f"{poison_each} of each of {len(poison)} poison kinds queued ahead in {flowing:.2f}s "
        f"({healthy / flowing:.0f}/s): {ratio:.0%} of the healthy rate"
    )
    figure(
        "each poison kind ended with its error in GET /notifications/{id}: "
        + "; ".join(f"{kind} -> {status}" for kind, (status, _) in expected_end.items())
        + "; all replayed with 202, the dead ones delivered once the receiver recovered"
    )
