"""Helpers the tests share: polling, problem documents, pagination, row counts, the receiver,
the SMTP server, the fake SMS provider and `notifier worker` processes."""

from __future__ import annotations

import asyncio
import base64
import datetime
import email
import email.policy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest

from notifier.errors import ProblemError


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 10.0, interval: float = 0.05
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s (last value: {result!r})")
        await asyncio.sleep(interval)


async def wait_until_jobs_ran(db: psycopg.AsyncConnection[Any], *, timeout: float = 20.0) -> None:
    """Wait until no job is to do or running: every job deferred so far has run to its end,
    retries included. The positive signal to wait for before asserting that nothing more
    happened (rather than sleeping and hoping it was long enough)."""

    async def ran() -> bool:
        cursor = await db.execute(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
        )
        row = await cursor.fetchone()
        return row is not None and row["n"] == 0

    await eventually(ran, timeout=timeout)


async def wait_for_status(
    client: Any, notification_id: str, status: str, *, timeout: float = 20.0
) -> dict[str, Any]:
    """The notification (with its delivery attempts) once it has ``status``."""

    async def reached() -> dict[str, Any] | None:
        notification: dict[str, Any] = (
            await client.get(f"/api/v1/notifications/{notification_id}")
        ).json()
        return notification if notification["status"] == status else None

    result: dict[str, Any] = await eventually(reached, timeout=timeout)
    return result


@dataclass
class ReceivedRequest:
    """One request the webhook receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    # time.monotonic() when it arrived.
    arrived_at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A real HTTP server on loopback that records requests and answers from a script.

    ``responses`` is consumed one status per request; when it is empty, ``default_status``.
    """

    url: str
    requests: list[ReceivedRequest] = field(default_factory=list)
    responses: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    default_status: int = 200
    delay_seconds: float = 0.0
    # The body of every answer.
    answer_body: bytes = b""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, *statuses: int | tuple[int, dict[str, str]]) -> None:
        """Answer the next requests with these statuses (optionally with headers)."""
        with self.lock:
            self.responses.extend(s if isinstance(s, tuple) else (s, {}) for s in statuses)

    def next_response(self) -> tuple[int, dict[str, str]]:
        with self.lock:
            return self.responses.pop(0) if self.responses else (self.default_status, {})

    def received(self) -> list[ReceivedRequest]:
        with self.lock:
            return list(self.requests)


# The Standard Webhooks secret the test settings sign with.
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"test-secret-of-32-bytes-length!!").decode()
PROBLEM_JSON = "application/problem+json"
# NOTIFIER_SECRETS_KEYS of the tests: a fixed Fernet key (32 bytes, url-safe base64).
SECRETS_KEYS = base64.urlsafe_b64encode(b"notifier-tests-fernet-key-32byte").decode()
# NOTIFIER_WEBHOOK_ALLOWED_NETWORKS of the tests: their receivers run on loopback.
LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> None:
    """An RFC 9457 problem document with ``status``, naming ``field`` if given."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    assert isinstance(problem["errors"], list)
    for error in problem["errors"]:
        assert set(error) == {"field", "message", "source"}
    if field is not None:
        assert field in [error["field"] for error in problem["errors"]], problem


def bearer(api_key: str) -> dict[str, str]:
    """The headers that send ``api_key``."""
    return {"Authorization": f"Bearer {api_key}"}


T = TypeVar("T")


def outcome(call: Callable[[], T]) -> T | ProblemError:
    """What ``call`` returns, or the problem document it raises; any other exception (a bug:
    it would be a 500) propagates and fails the test."""
    try:
        return call()
    except ProblemError as problem:
        return problem


def next_page(response: httpx.Response) -> str | None:
    """The URL in ``Link: <...>; rel="next"``, if the response has one."""
    match = re.search(r'<([^>]+)>;\s*rel="next"', response.headers.get("link", ""))
    return match.group(1) if match else None


async def count_rows(db: psycopg.AsyncConnection[Any], table: str) -> int:
    """Rows in ``table`` (one of our own table names, never user input)."""
    cursor = await db.execute(f"SELECT count(*) AS n FROM {table}")
    row = await cursor.fetchone()
    assert row is not None
    return int(row["n"])


def parse_time(value: str) -> datetime.datetime:
    """A timestamp from an API response."""
    return datetime.datetime.fromisoformat(value)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(base_url: str, *, timeout: float, check_alive: Callable[[], None]) -> None:
    """Poll ``GET /health`` until it answers 200; ``check_alive`` fails if a process died."""
    deadline = time.monotonic() + timeout
    while True:
        check_alive()
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{base_url} did not become healthy in {timeout}s"
        time.sleep(0.2)


@dataclass
class SmtpServer:
    """A real SMTP server (aiosmtpd) on loopback that keeps what it receives.

    ``data_replies`` / ``rcpt_replies`` script the answers to the next DATA / RCPT
    commands (``"451 4.3.0 try later"``); when empty, the server accepts.
    """

    host: str = "127.0.0.1"
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    # Messages whose DATA got a scripted refusal, kept to compare with their resends.
    refused: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)
    rcpt_replies: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[EmailMessage]:
        with self.lock:
            return list(self.messages)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        with self.lock:
            if self.rcpt_replies:
                return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self.lock:
            if self.data_replies:
                self.refused.append(parsed)
                return self.data_replies.pop(0)
            self.messages.append(parsed)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


@dataclass
class FakeSmsProvider:
    """A real HTTP server on loopback playing an SMS provider.

    It records every request and answers from ``responses`` (status, headers, JSON body),
    then with 201 and a Twilio-style ``{"sid": ..., "status": "queued"}``.
    """

    url: str = ""
    requests: list[ReceivedRequest] = field(default_factory=list)
    responses: list[tuple[int, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, status: int, body: dict[str, Any] | None = None, **headers: str) -> None:
        """Answer the next request with ``status``, ``body`` and ``headers``."""
        with self.lock:
            self.responses.append((status, headers, body or {}))

    def answer(self, request: ReceivedRequest) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.requests.append(request)
            if self.responses:
                status, headers, body = self.responses.pop(0)
            else:
                status, headers = 201, {}
                body = {"sid": f"SM{len(self.requests):032d}", "status": "queued"}
        return status, headers, json.dumps(body).encode()

    def received(self) -> list[ReceivedRequest]:
        with self.lock:
            return list(self.requests)

    def form(self, index: int) -> dict[str, str]:
        """The form fields of request ``index`` (Twilio's shape)."""
        fields = urllib.parse.parse_qs(self.received()[index].body.decode(), strict_parsing=True)
        return {name: values[0] for name, values in fields.items()}


# --- `notifier worker` processes ---------------------------------------------------------


def worker_environment(database_url: str, **settings: str) -> dict[str, str]:
    """The environment of a worker process on the test's database: this process's variables
    without its NOTIFIER_ ones (the developer's own must not leak in), the test secrets key,
    text logs, succeeded jobs kept (tests read what ran, as with the ``settings`` fixture),
    and ``settings`` (``NOTIFIER_WORKER_CONCURRENCY="2"``) on top."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")},
        "NOTIFIER_DATABASE_URL": database_url,
        "NOTIFIER_SECRETS_KEYS": SECRETS_KEYS,
        "NOTIFIER_LOG_FORMAT": "text",
        "NOTIFIER_KEEP_SUCCEEDED_JOBS": "true",
        **settings,
    }


async def start_worker(
    env: dict[str, str], log: Path, *, queues: tuple[str, ...] = ("events",)
) -> asyncio.subprocess.Process:
    """A `notifier worker` process on ``queues``, its output (stdout and stderr) in ``log``."""
    arguments = [argument for queue in queues for argument in ("--queue", queue)]
    with log.open("wb") as output:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "notifier",
            "worker",
            *arguments,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


async def kill_worker(process: asyncio.subprocess.Process) -> None:
    """SIGKILL ``process`` (no chance to finish or release anything) and reap it."""
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    await process.wait()


async def stop_workers(processes: list[asyncio.subprocess.Process], timeout: float = 30) -> None:
    """SIGTERM each running one of ``processes`` and wait for all to exit; one that does not
    within ``timeout`` seconds is killed, and the timeout raised."""
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    try:
        for process in processes:
            await asyncio.wait_for(process.wait(), timeout=timeout)
    finally:
        for process in processes:
            await kill_worker(process)
