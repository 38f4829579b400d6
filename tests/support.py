"""Helpers the tests share: polling for a condition, and the webhook receiver's state."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest


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
