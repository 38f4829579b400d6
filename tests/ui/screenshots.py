"""Regenerate docs/ui/*.png: every dashboard page in Debian's headless Chromium.

    uv run nox -s screenshots            # or: uv run python -m tests.ui.screenshots docs/ui

A scratch database on the PostgreSQL at NOTIFIER_BENCH_SERVER (default
postgresql://postgres@127.0.0.1:5432) gets a day of made-up deliveries (bench/ui_pages.py)
and a few due jobs; the app is served on loopback and each page is captured at a laptop's
size (1366 pixels wide), then the database is dropped.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import psycopg
from bench.ui_pages import load_delivered, serving
from psycopg.conninfo import make_conninfo
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from notifier import migrate
from notifier.auth import service as auth_service
from notifier.bootstrap import open_services
from notifier.events import service as events_service
from notifier.settings import Settings
from notifier.tenancy import Scope
from tests.support import SECRETS_KEYS
from tests.ui.browser import chromium

DUE_JOBS = """
INSERT INTO procrastinate_jobs (queue_name, task_name, args, scheduled_at)
SELECT 'deliveries', 'notifier.deliver', '{"tenant_id": "default"}',
       now() - n * interval '2 seconds'
FROM generate_series(1, 40) AS n
"""

ENDPOINT_ATTEMPTS = """
UPDATE notifier.delivery_attempts
SET endpoint_id = %s, duration_ms = 40 + (id %% 90),
    error = CASE WHEN outcome = 'delivered' THEN NULL ELSE 'HTTP ' || status_code END
WHERE tenant_id = 'default' AND (outcome <> 'retry' OR id %% 500 = 0)
"""


def add_examples(settings: Settings, base: str, key: str) -> None:
    """A rule, and events it turns into notifications (through the REST API, then the
    events service as the worker's task would: no worker runs here)."""
    published = []
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as api:
        api.post(
            "/api/v1/rules/",
            json={
                "name": "Invoice reminders",
                "event_type": "invoice.created",
                "channel": "log",
                "recipient_field": "customer.email",
                "date_field": "due_date",
                "lead_times": ["P7D", "P1D"],
            },
        ).raise_for_status()
        for number in range(3):
            answer = api.post(
                "/api/v1/events/",
                json={
                    "type": "invoice.created",
                    "payload": {
                        "invoice": f"INV-{1040 + number}",
                        "customer": {"email": f"billing{number}@example.com"},
                        "due_date": "2030-01-31T09:00:00Z",
                    },
                },
            )
            answer.raise_for_status()
            published.append(uuid.UUID(answer.json()["id"]))

    async def process() -> None:
        async with open_services(settings, name="notifier-screenshots") as services:
            for event_id in published:
                await events_service.process(
                    services.pool,
                    services.metrics,
                    event_id,
                    max_notifications=settings.max_notifications_per_event,
                )

    asyncio.run(process())


def capture(out: Path) -> list[Path]:
    """Write one PNG per page into ``out``; the files written."""
    server = os.environ.get("NOTIFIER_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432")
    name = f"notifier_screenshots_{os.getpid()}"
    url = make_conninfo(server, dbname=name)
    migrate.create_database_if_missing(url)
    migrate.upgrade(url)
    written: list[Path] = []
    try:
        load_delivered(url, 20_000, "default")
        load_delivered(url, 5_000, "acme")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(DUE_JOBS.encode())
        settings = Settings(database_url=url, secrets_keys=SECRETS_KEYS)

        async def make_key() -> str:
            async with auth_service.admin_pool(settings) as pool:
                _, token = await auth_service.create_key(pool, scopes=[Scope.ADMIN])
            return token

        key = asyncio.run(make_key())
        out.mkdir(parents=True, exist_ok=True)
        with (
            serving(settings) as base,
            tempfile.TemporaryDirectory() as profile,
            chromium(Path(profile), width=1366, height=900) as driver,
        ):

            def shoot(page: str) -> None:
                height = driver.execute_script("return document.documentElement.scrollHeight")
                # The window's own bars take some of its height: leave room for them.
                driver.set_window_size(1366, max(900, int(height) + 160))
                path = out / f"{page}.png"
                driver.save_screenshot(str(path))
                written.append(path)

            driver.get(f"{base}/ui/sign-in")
            shoot("sign-in")
            driver.find_element(By.ID, "key").send_keys("ntf_0123456789abcdef_wrong", Keys.ENTER)
            shoot("sign-in-error")
            driver.find_element(By.ID, "key").send_keys(key, Keys.ENTER)
            shoot("overview")
            add_examples(settings, base, key)
            driver.get(f"{base}/ui/notifications")
            shoot("notifications")
            driver.get(f"{base}/ui/notifications?status=failed")
            driver.find_element(By.ID, "bulk-replay").click()
            shoot("bulk-confirm")
            driver.get(f"{base}/ui/notifications?status=failed")
            driver.find_element(By.CSS_SELECTOR, "#notifications tbody a").click()
            shoot("notification")
            driver.get(f"{base}/ui/notifications/new")
            shoot("notification-new")
            driver.get(f"{base}/ui/events")
            shoot("events")
            driver.find_element(By.CSS_SELECTOR, "#events tbody a").click()
            shoot("event")
            driver.get(f"{base}/ui/rules")
            shoot("rules")
            driver.find_element(By.CSS_SELECTOR, "#rules tbody a").click()
            shoot("rule")
            driver.get(f"{base}/ui/templates")
            shoot("templates")
            driver.get(f"{base}/ui/templates/generic")
            driver.find_element(By.ID, "preview-button").click()
            shoot("template")
            driver.get(f"{base}/ui/keys")
            shoot("keys")
            driver.get(f"{base}/ui/endpoints/new")
            driver.find_element(By.ID, "f-url").send_keys("https://hooks.example.com/billing")
            driver.find_element(By.ID, "f-description").send_keys("Billing receiver")
            driver.find_element(By.ID, "f-type_filter").send_keys("invoice.*, payment.failed")
            driver.find_element(By.ID, "save").click()
            shoot("endpoint-created")
            endpoint_id = driver.find_element(By.CSS_SELECTOR, "h1 code").text
            with psycopg.connect(url, autocommit=True) as conn:
                # The day's deliveries went to it (a few of the retries, which the loader
                # writes last: the latest attempts are not all retries).
                conn.execute(ENDPOINT_ATTEMPTS.encode(), [endpoint_id])
            driver.get(f"{base}/ui/endpoints/{endpoint_id}")
            shoot("endpoint")
            driver.get(f"{base}/ui/endpoints")
            shoot("endpoints")
    finally:
        with psycopg.connect(make_conninfo(server, dbname="postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
    return written


if __name__ == "__main__":
    for path in capture(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/ui")):
        print(path)
