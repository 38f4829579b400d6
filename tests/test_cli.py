"""The command line: admins' procrastinate shell, and `notifier dev` on a machine without PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from litestar.testing import AsyncTestClient

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
