"""Benchmark: each dashboard page rendered N times against a large database; p95 vs 150 ms.

Fills a scratch database with ``--rows`` pending notifications and their jobs (bench/bulk.py,
default 1,000,000), plus a day of delivery history for the signed-in tenant and as much for
another tenant (``--delivered`` notifications each, sent over the last 24 hours with their
attempts: 2 % failed, 10 % retried once). Serves the app on loopback, signs in through the
form, and times each page over HTTP, one request at a time (the browser's view: server time
plus loopback). Uses the PostgreSQL at NOTIFIER_BENCH_SERVER (default
postgresql://postgres@127.0.0.1:5432).

    uv run python -m bench.ui_pages                      # 1,000,000 rows, 100,000 delivered
    uv run python -m bench.ui_pages --quick              # small, for development
    uv run python -m bench.ui_pages --keep               # keep the database for EXPLAIN

Each new page adds a line to PAGES (or ROW_PAGES, for a page of one row).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg
import uvicorn
from cryptography.fernet import Fernet
from psycopg.conninfo import make_conninfo

from bench import bulk
from notifier import migrate
from notifier.app import create_app
from notifier.auth import service as auth_service
from notifier.settings import Settings
from notifier.tenancy import Scope

TARGET_MS = 150.0
# (name, path): every page of the dashboard, timed signed in.
PAGES = [
    ("sign-in", "/ui/sign-in"),
    ("overview", "/ui"),
    ("notifications", "/ui/notifications"),
    ("failed", "/ui/notifications?status=failed"),
    ("by recipient", "/ui/notifications?recipient=http%3A%2F%2F127.0.0.1%3A9%2Fhistory"),
    # Every loaded notification is a webhook: the common channel, and one that has none.
    ("by channel", "/ui/notifications?channel=webhook"),
    ("rare channel", "/ui/notifications?channel=email"),
    (
        "recipient+st",
        "/ui/notifications?status=failed&recipient=http%3A%2F%2F127.0.0.1%3A9%2Fhistory",
    ),
    ("bulk replay", "/ui/notifications/bulk/replay?status=failed"),
    ("create", "/ui/notifications/new"),
    ("events", "/ui/events"),
    ("rules", "/ui/rules"),
    ("templates", "/ui/templates"),
    ("template", "/ui/templates/generic"),
    ("API keys", "/ui/keys"),
    ("endpoints", "/ui/endpoints"),
    ("new endpoint", "/ui/endpoints/new"),
]
# Pages of one row, found in the loaded data: (name, path with {id}, query for the id).
ROW_PAGES = [
    (
        "notification",
        "/ui/notifications/{id}",
        "SELECT id FROM notifier.notifications WHERE tenant_id = 'default' "
        "AND status = 'failed' LIMIT 1",
    ),
    (
        "endpoint",
        "/ui/endpoints/{id}",
        "SELECT id FROM notifier.endpoints WHERE tenant_id = 'default' LIMIT 1",
    ),
]

# A day of deliveries for one tenant: notifications sent over the last 24 hours, their
# attempts (every 10th retried once first, every 50th failed), lags up to 3 s.
DELIVERED = """
WITH planned AS (
    SELECT gen_random_uuid() AS id, n,
           now() - random() * interval '1 day' AS finished_at,
           (random() * random() * 3) * interval '1 second' AS lag
    FROM generate_series(1, %(rows)s) AS n
), notifications AS (
    INSERT INTO notifier.notifications
        (id, tenant_id, notification_type, channel, recipient, send_at, status, attempts,
         sent_at, created_at, updated_at)
    SELECT id, %(tenant)s, 'bench.history', 'webhook', 'http://127.0.0.1:9/history',
           finished_at - lag, CASE WHEN n %% 50 = 0 THEN 'failed' ELSE 'sent' END,
           CASE WHEN n %% 10 = 0 THEN 2 ELSE 1 END,
           CASE WHEN n %% 50 = 0 THEN NULL ELSE finished_at - interval '50 milliseconds' END,
           finished_at - lag - interval '1 hour', finished_at
    FROM planned
)
INSERT INTO notifier.delivery_attempts
    (notification_id, tenant_id, attempt, channel, outcome, status_code, started_at, finished_at,
     due_at)
SELECT id, %(tenant)s, CASE WHEN n %% 10 = 0 THEN 2 ELSE 1 END, 'webhook',
       CASE WHEN n %% 50 = 0 THEN 'failed' ELSE 'delivered' END, 200,
       finished_at - interval '50 milliseconds', finished_at,
       CASE WHEN n %% 50 <> 0 THEN finished_at - lag END
FROM planned
UNION ALL
SELECT id, %(tenant)s, 1, 'webhook', 'retry', 503,
       finished_at - interval '5 seconds', finished_at - interval '4.9 seconds', NULL
FROM planned WHERE n %% 10 = 0
"""


# The key of stored secrets for the processes this benchmark starts (one per run).
BENCH_SECRETS_KEYS = Fernet.generate_key().decode()


def add_endpoint(url: str, base: str, key: str) -> None:
    """An endpoint of the default tenant (through the API: its secret is stored encrypted),
    made the receiver of the default tenant's day of deliveries, attempts and all."""
    answer = httpx.post(
        f"{base}/api/v1/endpoints/",
        json={"url": "https://hooks.example.com/bench", "description": "bench"},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    answer.raise_for_status()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE notifier.delivery_attempts SET endpoint_id = %s, duration_ms = 50 "
            "WHERE tenant_id = 'default'",
            [answer.json()["id"]],
        )
        conn.execute("VACUUM ANALYZE notifier.delivery_attempts")


def load_delivered(url: str, rows: int, tenant_id: str) -> None:
    """``rows`` notifications of ``tenant_id`` delivered over the last day (tenant created)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO notifier.tenants (id, name) VALUES (%s, '') ON CONFLICT DO NOTHING",
            [tenant_id],
        )
        conn.execute(DELIVERED.encode(), {"rows": rows, "tenant": tenant_id})


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The app on a free loopback port, in a thread; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=0, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the app did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def signed_in_client(base: str, key: str) -> httpx.Client:
    """An HTTP client holding a dashboard session, signed in through the form."""
    client = httpx.Client(base_url=base, timeout=30, follow_redirects=True)
    form = client.get("/ui/sign-in")
    token = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
    assert token, "no CSRF token on the sign-in page"
    answer = client.post("/ui/sign-in", data={"key": key, "_csrf_token": token.group(1)})
    answer.raise_for_status()
    return client


def measure(client: httpx.Client, path: str, runs: int) -> list[float]:
    """Milliseconds of ``runs`` GETs of ``path`` (after one warm-up)."""
    client.get(path).raise_for_status()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return times


def p95(times: list[float]) -> float:
    return statistics.quantiles(times, n=20, method="inclusive")[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--delivered", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="20,000 rows, 5,000 delivered")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.delivered, args.runs = 20_000, 5_000, 10
    server = os.environ.get("NOTIFIER_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432")
    name = f"notifier_bench_ui_{os.getpid()}"
    url = make_conninfo(server, dbname=name)
    migrate.create_database_if_missing(url)
    migrate.upgrade(url)
    try:
        started = time.monotonic()
        bulk.load_pending(url, args.rows)
        load_delivered(url, args.delivered, "default")
        load_delivered(url, args.delivered, "bench-other")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        print(
            f"{args.rows:,} pending notifications, {args.delivered:,} delivered in the last day "
            f"for each of 2 tenants; loaded in {time.monotonic() - started:.0f} s"
        )
        settings = Settings(database_url=url, secrets_keys=BENCH_SECRETS_KEYS)

        async def make_key() -> str:
            async with auth_service.admin_pool(settings) as pool:
                _, token = await auth_service.create_key(pool, scopes=[Scope.ADMIN])
            return token

        key = asyncio.run(make_key())
        with serving(settings) as base:
            add_endpoint(url, base, key)
            row_pages = []
            with psycopg.connect(url, autocommit=True) as conn:
                for page, template, query in ROW_PAGES:
                    found = conn.execute(query.encode()).fetchone()
                    if found:
                        row_pages.append((page, template.format(id=found[0])))
            client = signed_in_client(base, key)
            print(f"{'page':<14} {'p50 ms':>8} {'p95 ms':>8}  target p95 < {TARGET_MS:.0f} ms")
            for page, path in [*PAGES, *row_pages]:
                times = measure(client, path, args.runs)
                verdict = "ok" if p95(times) < TARGET_MS else "OVER"
                print(f"{page:<14} {statistics.median(times):8.1f} {p95(times):8.1f}  {verdict}")
            client.close()
    finally:
        if args.keep:
            print(f"kept: {url}")
        else:
            with psycopg.connect(make_conninfo(server, dbname="postgres"), autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


if __name__ == "__main__":
    main()
