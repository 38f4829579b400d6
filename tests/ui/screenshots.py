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
from pathlib import Path

import psycopg
from bench.ui_pages import load_delivered, serving
from psycopg.conninfo import make_conninfo
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from notifier import migrate
from notifier.auth import service as auth_service
from notifier.settings import Settings
from notifier.tenancy import Scope
from tests.ui.browser import chromium

DUE_JOBS = """
INSERT INTO procrastinate_jobs (queue_name, task_name, args, scheduled_at)
SELECT 'deliveries', 'notifier.deliver', '{"tenant_id": "default"}',
       now() - n * interval '2 seconds'
FROM generate_series(1, 40) AS n
"""


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
        settings = Settings(database_url=url)

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
    finally:
        with psycopg.connect(make_conninfo(server, dbname="postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
    return written


if __name__ == "__main__":
    for path in capture(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/ui")):
        print(path)
