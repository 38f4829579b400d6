"""The command line: admins' procrastinate shell, and `notifier dev` on a machine without PostgreSQL."""

from __future__ import annotations

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


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_dev_starts_an_embedded_postgresql_when_none_answers(
    tmp_path: Path, stop: signal.Signals
) -> None:
    port = free_port()
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/notifier"
    key_file = tmp_path / "api-key"
    data_dir = tmp_path / "pgdata"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")},
        "NOTIFIER_DATABASE_URL": unreachable,
        "XDG_RUNTIME_DIR": str(tmp_path),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "notifier",
            "dev",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--key-file",
            str(key_file),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    base = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    drain = threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True)
    try:
        # The database's URL and the key are printed before the server starts; then keep
        # the pipe drained.
        printed: dict[str, str] = {}
        for line in process.stdout:
            lines.append(line)
            name, _, value = line.strip().partition("=")
            if name in {"NOTIFIER_DATABASE_URL", "NOTIFIER_KEY"}:
                printed[name] = value
            if name == "NOTIFIER_KEY":
                break
        key = printed["NOTIFIER_KEY"]
        assert key.startswith("ntf_"), "".join(lines)
        drain.start()
        headers = {"Authorization": f"Bearer {key}"}
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])

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

        # The printed URL is how the other commands reach the embedded database.
        tenants = subprocess.run(
            [sys.executable, "-m", "notifier", "tenants", "list"],
            env={**env, "NOTIFIER_DATABASE_URL": printed["NOTIFIER_DATABASE_URL"]},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert tenants.returncode == 0, tenants.stderr
        assert tenants.stdout.startswith("default\t")

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
        process.send_signal(stop)
        process.wait(timeout=60)
        if drain.is_alive():
            drain.join(timeout=10)
        process.stdout.close()
    output = "".join(lines)

    assert process.returncode == 0, output
    assert "starting an embedded one" in output
    assert "stopped the embedded PostgreSQL" in output, output
    assert not (data_dir / "postmaster.pid").exists()
    deadline = time.monotonic() + 15
    while running(postmaster):  # pg_ctl stop waited; its exit may still be on its way
        assert time.monotonic() < deadline, "the embedded PostgreSQL still runs"
        time.sleep(0.1)
    assert str(process.pid) not in (data_dir / ".handle_pids.json").read_text()
    assert ("running as root" in output) == (os.geteuid() == 0), "root is told about the user"
    assert key_file.read_text().strip() == key
    assert key_file.stat().st_mode & 0o077 == 0, "only its owner may read the key file"


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_admin_commands_name_the_unreachable_database_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    monkeypatch.setenv("NOTIFIER_DATABASE_TIMEOUT_SECONDS", "0.5")

    assert main(["tenants", "list"]) == 1

    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("notifier: cannot reach the database at NOTIFIER_DATABASE_URL: ")
    assert "Connection refused" in err
    assert "notifier dev" in err


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
    for _ in range(4):
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
        " WHEN 1 THEN %s::bigint WHEN 2 THEN %s::bigint WHEN 4 THEN %s::bigint END",
        [dead, alive, alive],
    )
    # Job 4 has been running for 20 minutes under a live worker: left there by a lost
    # finish write, or hung.
    await db.execute(
        "UPDATE procrastinate_events SET at = now() - interval '20 minutes'"
        " WHERE job_id = 4 AND type = 'started'"
    )

    stuck = await (await db.execute(documented_stuck_jobs_query())).fetchall()

    # Job 3's worker row is gone altogether (procrastinate sets worker_id NULL when it prunes).
    assert [row["id"] for row in stuck] == [1, 3, 4]
    assert stuck[2]["running_for"] > datetime.timedelta(minutes=19)
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
