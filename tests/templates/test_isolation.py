"""One tenant's templates cannot hold up the API or another tenant's deliveries.

The real API (on loopback, or in process), a real worker and a real webhook receiver;
``notifier api`` and ``notifier worker`` as processes of their own for SIGTERM.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from notifier.services import Services
from notifier.settings import Settings
from tests.conftest import CreateApiKey
from tests.support import (
    LOOPBACK_NETWORKS,
    SECRETS_KEYS,
    WebhookReceiver,
    assert_problem,
    bearer,
    eventually,
    free_port,
    wait_until_healthy,
)

NESTED_LOOPS = "{% for i in range(30000) %}{% for j in range(30000) %}{% endfor %}{% endfor %}"
# Jinja2 folds this constant while compiling: the power is computed then, for seconds.
SLOW_TO_COMPILE = "{{ (10 ** (10 ** 8)) > 1 }}"


async def test_a_nested_loop_preview_is_422_while_the_api_stays_live(
    live_api: str, api_headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=live_api, headers=api_headers, timeout=30) as http:
        previews = [
            asyncio.ensure_future(
                http.post(
                    "/api/v1/templates/preview",
                    json={"subject": "s", "text_body": NESTED_LOOPS},
                )
            )
            for _ in range(4)
        ]
        probes: list[float] = []
        while not all(preview.done() for preview in previews) or len(probes) < 5:
            started = time.monotonic()
            live = await http.get("/health/live")
            probes.append(time.monotonic() - started)
            assert live.status_code == 200
            await asyncio.sleep(0.01)
        responses = await asyncio.gather(*previews)

    for response in responses:
        assert_problem(response, 422, "text_body")
        assert response.json()["errors"][0]["message"] == "took longer than 100 ms to render"
    # Before the sandbox, one such preview froze the event loop for 27 s.
    assert max(probes) < 1.0, probes


async def test_a_template_that_overruns_its_compile_budget_is_refused_naming_the_part(
    client: AsyncTestClient[Any],
) -> None:
    response = await client.put(
        "/api/v1/templates/slow",
        json={"subject": "s", "text_body": "t", "html_body": SLOW_TO_COMPILE},
    )

    assert_problem(response, 422, "html_body")
    assert response.json()["errors"][0]["message"] == "took longer than 1000 ms to compile"
    assert_problem(await client.get("/api/v1/templates/slow"), 404)


async def test_a_preview_asking_for_too_much_memory_is_422(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/api/v1/templates/preview",
        json={"subject": "{{ 'x' * n }}", "text_body": "t", "payload": {"n": 10**9}},
    )

    assert_problem(response, 422, "subject")
    assert "memory" in response.json()["errors"][0]["message"]


async def test_a_stored_over_budget_template_fails_its_notification_not_another_tenants(
    client: AsyncTestClient[Any],
    create_api_key: CreateApiKey,
    receiver: WebhookReceiver,
    worker: None,
) -> None:
    tenant_a = bearer(await create_api_key("tenant-a"))
    tenant_b = bearer(await create_api_key("tenant-b"))
    stored = await client.put(
        "/api/v1/templates/report.ready",
        json={"subject": "Report", "text_body": NESTED_LOOPS},
        headers=tenant_b,
    )
    assert stored.status_code == 201, stored.text
    target = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7)).isoformat()

    async def notify(headers: dict[str, str]) -> str:
        response = await client.post(
            "/api/v1/notifications/",
            json={
                "notification_type": "report.ready",
                "entity_id": "report-1",
                "target_date": target,
                "channel": "webhook",
                "recipient": receiver.url,
            },
            headers=headers,
        )
        assert response.status_code == 201, response.text
        notification_id: str = response.json()["id"]
        return notification_id

    slow, fine = await asyncio.gather(notify(tenant_b), notify(tenant_a))

    async def settled(notification_id: str, headers: dict[str, str]) -> dict[str, Any] | None:
        response = await client.get(f"/api/v1/notifications/{notification_id}", headers=headers)
        notification: dict[str, Any] = response.json()
        return notification if notification["status"] != "pending" else None

    failed = await eventually(lambda: settled(slow, tenant_b), timeout=30)
    sent = await eventually(lambda: settled(fine, tenant_a), timeout=30)

    assert failed["status"] == "failed"
    assert failed["last_error"] == (
        "template 'report.ready': text_body: took longer than 100 ms to render"
    )
    assert sent["status"] == "sent"
    # Tenant A's own report.ready has no template of tenant B's: the built-in generic one.
    (delivered,) = receiver.received()
    assert delivered.json()["data"]["notification_id"] == fine


async def test_a_renderer_that_cannot_answer_leaves_the_notification_pending(
    client: AsyncTestClient[Any], services: Services, worker: None, receiver: WebhookReceiver
) -> None:
    # As when the worker is shutting down: nothing the template did.
    await services.renderer.close()
    target = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7)).isoformat()
    created = await client.post(
        "/api/v1/notifications/",
        json={
            "notification_type": "report.ready",
            "entity_id": "report-1",
            "target_date": target,
            "channel": "webhook",
            "recipient": receiver.url,
        },
    )
    assert created.status_code == 201, created.text

    async def noted() -> dict[str, Any] | None:
        response = await client.get(f"/api/v1/notifications/{created.json()['id']}")
        notification: dict[str, Any] = response.json()
        return notification if notification["last_error"] else None

    notification = await eventually(noted, timeout=30)

    assert notification["status"] == "pending"
    assert "RendererUnavailable" in notification["last_error"]
    assert notification["attempts"] == 0
    assert receiver.received() == []


def _children_of(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        if int(stat.rpartition(b")")[2].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def _preview_until_refused(api_url: str, key: str) -> None:
    """Preview the nested loops again and again until the API stops answering."""
    with httpx.Client(base_url=api_url, headers=bearer(key), timeout=30) as http:
        while True:
            try:
                http.post(
                    "/api/v1/templates/preview", json={"subject": "s", "text_body": NESTED_LOOPS}
                )
            except httpx.HTTPError:
                return


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigterm_stops_api_and_worker_promptly_with_their_renderers(
    settings: Settings, tmp_path: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "NOTIFIER_"))},
        "NOTIFIER_DATABASE_URL": settings.database_url,
        "NOTIFIER_SECRETS_KEYS": SECRETS_KEYS,
        "NOTIFIER_DATABASE_POOL_MIN_SIZE": "1",
        "NOTIFIER_WORKER_POLL_INTERVAL_SECONDS": "0.1",
        "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
    }
    key = (
        subprocess.run(
            [
                sys.executable,
                "-m",
                "notifier",
                "keys",
                "create",
                "--tenant",
                "default",
                "--scope",
                "admin",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for role, args in (("api", ["api", "--port", str(port)]), ("worker", ["worker"])):
            with (tmp_path / f"{role}.log").open("wb") as log:
                processes[role] = subprocess.Popen(
                    [sys.executable, "-m", "notifier", *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        wait_until_healthy(api_url, timeout=60, check_alive=lambda: None)
        with httpx.Client(base_url=api_url, headers=bearer(key), timeout=30) as http:
            # The API renders a preview, the worker a notification: both start renderers.
            preview = http.post(
                "/api/v1/templates/preview", json={"subject": "s", "text_body": "t"}
            )
            assert preview.status_code == 200, preview.text
            target = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7)
            created = http.post(
                "/api/v1/notifications/",
                json={
                    "notification_type": "report.ready",
                    "entity_id": "r-1",
                    "target_date": target.isoformat(),
                    "channel": "log",
                    "recipient": "ops",
                },
            )
            assert created.status_code == 201, created.text

            def delivered() -> bool:
                notification = http.get(f"/api/v1/notifications/{created.json()['id']}").json()
                return bool(notification["status"] == "sent")

            deadline = time.monotonic() + 30
            while not delivered():
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                time.sleep(0.1)
        renderers = {role: _children_of(p.pid) for role, p in processes.items()}
        assert all(renderers.values()), renderers
        # Previews in progress when the API is told to stop (before the sandbox, the API
        # ignored SIGTERM for as long as such a template ran: 80 s and more).
        in_flight = threading.Thread(
            target=_preview_until_refused, args=(api_url, key), daemon=True
        )
        in_flight.start()
        time.sleep(0.2)

        for role, process in processes.items():
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
            assert time.monotonic() - started < 10, role
            assert not any(_exists(pid) for pid in renderers[role]), role
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
