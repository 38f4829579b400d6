"""The command line: admins' procrastinate shell, and `notifier dev` on a machine without PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient
from psycopg.conninfo import make_conninfo

from notifier import migrate
from notifier.cli import main
from tests.support import free_port

PROCRASTINATE_SHELL = [
    sys.executable,
    "-m",
    "procrastinate",
    "--app=notifier.procrastinate_app.app",
    "shell",
]


def shell(database_url: str, *command: str) -> str:
    """Run one `procrastinate shell` command, exactly as docs/operations.md tells admins to."""
    result = subprocess.run(
        [*PROCRASTINATE_SHELL, *command],
        env={**os.environ, "NOTIFIER_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def job_status(db: psycopg.AsyncConnection[Any], job_id: int) -> str:
    cursor = await db.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", [job_id])
    row = await cursor.fetchone()
    assert row is not None
    return str(row["status"])


async def test_procrastinate_shell_lists_cancels_and_retries_notifier_jobs(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    first = await client.post("/api/v1/events/", json={"type": "user.signup", "payload": {}})
    second = await client.post("/api/v1/events/", json={"type": "user.signup", "payload": {}})
    assert first.status_code == second.status_code == 201

    listing = shell(database_url, "list_jobs")
    assert "#1 notifier.process_event on events - [todo]" in listing
    assert "#2 notifier.process_event on events - [todo]" in listing

    shell(database_url, "cancel", "1")
    assert await job_status(db, 1) == "cancelled"

    await db.execute("UPDATE procrastinate_jobs SET status = 'failed' WHERE id = 2")
    shell(database_url, "retry", "2")
    assert await job_status(db, 2) == "todo"


def test_dev_starts_an_embedded_postgresql_when_none_answers(tmp_path: Path) -> None:
    port = free_port()
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/notifier"
    key_file = tmp_path / "api-key"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "notifier",
            "dev",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "pgdata"),
            "--key-file",
            str(key_file),
        ],
        env={**os.environ, "NOTIFIER_DATABASE_URL": unreachable, "XDG_RUNTIME_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    base = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    drain = threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True)
    try:
        # The key is printed before the server starts; then keep the pipe drained.
        for line in process.stdout:
            lines.append(line)
            if line.startswith("NOTIFIER_KEY="):
                break
        key = lines[-1].strip().removeprefix("NOTIFIER_KEY=")
        assert key.startswith("ntf_"), "".join(lines)
        drain.start()
        headers = {"Authorization": f"Bearer {key}"}

        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, "".join(lines)
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "notifier dev did not become healthy"
            time.sleep(0.3)

        assert httpx.get(f"{base}/api/v1/rules/").status_code == 401
        rule = httpx.post(
            f"{base}/api/v1/rules/",
            json={"event_type": "user.signup", "channel": "log", "recipient_field": "email"},
            headers=headers,
        )
        assert rule.status_code == 201, rule.text
        event = httpx.post(
            f"{base}/api/v1/events/",
            json={"type": "user.signup", "payload": {"email": "ada@example.com"}},
            headers=headers,
        ).json()

        deadline = time.monotonic() + 30
        while True:
            detail = httpx.get(f"{base}/api/v1/events/{event['id']}", headers=headers).json()
            if [n["status"] for n in detail["notifications"]] == ["sent"]:
                break
            assert time.monotonic() < deadline, detail
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        if drain.is_alive():
            drain.join(timeout=10)
        process.stdout.close()
    output = "".join(lines)

    assert process.returncode == 0, output
    assert "starting an embedded one" in output
    assert key_file.read_text().strip() == key
    assert key_file.stat().st_mode & 0o077 == 0, "only its owner may read the key file"


def test_migrate_check_exits_zero_only_at_head(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", database_url)
    assert main(["migrate", "--check"]) == 0

    migrate.downgrade(database_url, "-1")
    assert main(["migrate", "--check"]) == 3
    assert "pending revisions" in capfd.readouterr().err
    assert migrate.pending_revisions(database_url), "--check must not upgrade"


def test_migrate_check_fails_while_the_database_does_not_exist(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "NOTIFIER_DATABASE_URL", make_conninfo(database_url, dbname="notifier_never_created")
    )
    assert main(["migrate", "--check"]) == 3


def documented_stuck_jobs_query() -> str:
    operations = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    after_marker = operations.split("<!-- stuck-jobs-query", 1)[1]
    return after_marker.split("```sql\n", 1)[1].split("```", 1)[0]


async def test_documented_stuck_jobs_query_finds_running_jobs_of_dead_workers(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    for _ in range(3):
        published = await client.post(
            "/api/v1/events/", json={"type": "user.signup", "payload": {}}
        )
        assert published.status_code == 201
    workers = await db.execute(
        "INSERT INTO procrastinate_workers (last_heartbeat)"
        " VALUES (now() - interval '5 minutes'), (now()) RETURNING id"
    )
    dead, alive = [row["id"] for row in await workers.fetchall()]
    await db.execute(
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = CASE id"
        " WHEN 1 THEN %s::bigint WHEN 2 THEN %s::bigint END",
        [dead, alive],
    )

    stuck = await (await db.execute(documented_stuck_jobs_query())).fetchall()

    # Job 3's worker row is gone altogether (procrastinate sets worker_id NULL when it prunes).
    assert [row["id"] for row in stuck] == [1, 3]
    shell(database_url, "retry", "1")
    assert await job_status(db, 1) == "todo"


def test_migrate_check_lets_an_older_release_run_on_a_newer_schema(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_a_later_release'")
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", database_url)

    assert main(["migrate", "--check"]) == 0
    assert "9999_from_a_later_release, newer than this release knows" in capfd.readouterr().err
