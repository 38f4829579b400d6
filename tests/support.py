"""Helpers the tests share: polling, problem documents, pagination, row counts, the receiver."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import psycopg
import pytest

from notifier.problems import ProblemError


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


@dataclass
class ReceivedRequest:
    """One request the webhook receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes

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
