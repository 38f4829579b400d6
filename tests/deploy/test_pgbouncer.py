"""notifier behind a real PgBouncer in transaction mode, set up as docs/operations.md says.

The pooler exposes only notifier's database, with fewer server connections than clients,
so transactions of the API, the worker and the CLI keep landing on server connections
others used before: anything that leaks from one transaction to the next shows.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg import sql
from psycopg.conninfo import make_conninfo

from notifier.app import create_app
from notifier.settings import Settings
from tests.deploy.pgbouncer import PgBouncer, find_pgbouncer
from tests.support import (
    LOOPBACK_NETWORKS,
    SECRETS_KEYS,
    WebhookReceiver,
    bearer,
    free_port,
    wait_until_healthy,
)

PGBOUNCER = find_pgbouncer()
pytestmark = pytest.mark.skipif(
    PGBOUNCER is None, reason="pgbouncer is not installed (.ci/run installs Debian's package)"
)
PG_HOST = os.environ.get("NOTIFIER_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("NOTIFIER_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("NOTIFIER_TEST_PG_USER", "postgres")
# What docs/operations.md tells operators to set behind a transaction pooler.
BEHIND_PGBOUNCER = {
    "NOTIFIER_DATABASE_PREPARED_STATEMENTS": "false",
    "NOTIFIER_WORKER_LISTEN_NOTIFY": "false",
    "NOTIFIER_WORKER_FETCH_ASYNC_COMMIT": "false",
}
EVENTS = 60


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database of this test's own, without any schema yet: `notifier migrate` makes it."""
    name = f"notifier_pgbouncer_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = make_conninfo("", host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def started(database_url: str, *, pool_size: int) -> PgBouncer:
    assert PGBOUNCER is not None
    bouncer = PgBouncer(PGBOUNCER, database_url, pool_size=pool_size)
    bouncer.start()
    return bouncer


@pytest.fixture
def pgbouncer(empty_database: str) -> Iterator[PgBouncer]:
    """PgBouncer in front of ``empty_database``, three server connections for every client."""
    bouncer = started(empty_database, pool_size=3)
    try:
        yield bouncer
    finally:
        bouncer.stop()


def notifier(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notifier", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def xacts_through(bouncer: PgBouncer) -> int:
    """Transactions PgBouncer has passed to the database so far."""
    columns_and_rows = bouncer.admin("SHOW STATS")
    row = next(r for r in columns_and_rows if r[0] == bouncer.dbname)
    return int(str(row[1]))  # total_xact_count


def test_notifier_migrates_publishes_lists_and_delivers_through_pgbouncer(
    pgbouncer: PgBouncer, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "NOTIFIER_"))},
        "NOTIFIER_DATABASE_URL": pgbouncer.url(),
        "NOTIFIER_SECRETS_KEYS": SECRETS_KEYS,
        **BEHIND_PGBOUNCER,
        "NOTIFIER_WORKER_POLL_INTERVAL_SECONDS": "0.1",
        "NOTIFIER_WORKER_CONCURRENCY": "4",
        "NOTIFIER_DATABASE_POOL_MAX_SIZE": "8",
        "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
        "NOTIFIER_LOG_FORMAT": "text",
    }
    migrated = notifier(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "database exists; schema at head" in migrated.stderr
    assert notifier(env, "migrate", "--check").returncode == 0
    created = notifier(env, "keys", "create", "--tenant", "default", "--scope", "admin")
    assert created.returncode == 0, created.stderr
    headers = bearer(created.stdout.strip().splitlines()[-1])

    api_port = free_port()
    logs = {name: tmp_path / f"{name}.log" for name in ("api", "worker")}
    commands = {"api": ["api", "--port", str(api_port)], "worker": ["worker"]}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, args in commands.items():
            with logs[name].open("wb") as log:
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "notifier", *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )

        def all_running() -> None:
            for name, process in processes.items():
                assert process.poll() is None, logs[name].read_text()

        api = f"http://127.0.0.1:{api_port}"
        wait_until_healthy(api, timeout=60, check_alive=all_running)
        statuses = exercise(api, headers, receiver)

        # Deliveries done, the worker idles: it polls, heartbeats, looks for stalled jobs.
        # That is where prepared statements broke it even without traffic: wait until it
        # has run dozens more transactions through the pooler.
        idle_from = xacts_through(pgbouncer)
        deadline = time.monotonic() + 60
        while xacts_through(pgbouncer) < idle_from + 60:
            all_running()
            assert time.monotonic() < deadline, "the worker stopped polling"
            time.sleep(0.2)
        all_running()
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(timeout=30)

    worker_log, api_log = logs["worker"].read_text(), logs["api"].read_text()
    assert statuses.get(500, 0) == 0, api_log
    assert set(statuses) <= {200, 201}, (statuses, api_log)
    assert "restarting the worker" not in worker_log, worker_log
    assert "lost the database" not in worker_log, worker_log
    assert "Traceback" not in api_log + worker_log


def exercise(api: str, headers: dict[str, str], receiver: WebhookReceiver) -> dict[int, int]:
    """Publish and list from several clients at once until every event's webhook arrived.

    Returns how many answers had each status.
    """
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=api, headers=headers, timeout=30) as http:
        rule = http.post(
            "/api/v1/rules/",
            json={"event_type": "user.signup", "channel": "webhook", "recipient": receiver.url},
        )
        assert rule.status_code == 201, rule.text

        def publish_and_list(n: int) -> list[int]:
            published = http.post(
                "/api/v1/events/", json={"type": "user.signup", "payload": {"n": n}}
            )
            events = http.get("/api/v1/events/", params={"limit": 10})
            notifications = http.get("/api/v1/notifications/", params={"limit": 10})
            return [published.status_code, events.status_code, notifications.status_code]

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for answers in pool.map(publish_and_list, range(EVENTS)):
                for status in answers:
                    statuses[status] = statuses.get(status, 0) + 1
    deadline = time.monotonic() + 60
    while len({r.headers["webhook-id"] for r in receiver.received()}) < EVENTS:
        assert time.monotonic() < deadline, f"{len(receiver.received())} of {EVENTS} delivered"
        time.sleep(0.1)
    return statuses


async def test_prepared_statements_behind_a_transaction_pooler_answer_503_naming_the_fix(
    database_url: str, settings: Settings, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Left on behind PgBouncer, psycopg's prepared statements collide across clients: each
    such request answers 503 (retry) rather than 500, and the log says what to change."""
    # One server connection for the API's two: each prepares "_pg3_0" on the same one.
    bouncer = started(database_url, pool_size=1)
    caplog.set_level(logging.ERROR, logger="notifier.api")
    try:
        behind = settings.replace(
            database_url=bouncer.url(), database_pool_min_size=2, database_pool_max_size=2
        )
        async with AsyncTestClient(app=create_app(behind)) as client:
            client.headers.update(bearer(api_key))
            statuses = [
                (await client.get("/api/v1/events/", params={"limit": 5})).status_code
                for _ in range(24)
            ]
    finally:
        bouncer.stop()
    assert 500 not in statuses
    assert 503 in statuses, statuses
    assert set(statuses) == {200, 503}
    assert "NOTIFIER_DATABASE_PREPARED_STATEMENTS=false" in caplog.text


async def test_a_pooler_that_cannot_reach_the_database_answers_503(
    database_url: str, settings: Settings, api_key: str
) -> None:
    bouncer = started(database_url, pool_size=2)
    try:
        behind = settings.replace(
            database_url=bouncer.url(),
            database_prepared_statements=False,
            database_timeout_seconds=1.0,
        )
        async with AsyncTestClient(app=create_app(behind)) as client:
            client.headers.update(bearer(api_key))
            assert (await client.get("/api/v1/events/")).status_code == 200
            bouncer.point_at("host=127.0.0.1 port=1 dbname=nowhere")
            published = await client.post(
                "/api/v1/events/", json={"type": "user.signup", "payload": {}}
            )
            listed = await client.get("/api/v1/events/")
    finally:
        bouncer.stop()
    for answer in (published, listed):
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"]
        assert answer.headers["content-type"].startswith("application/problem+json")
