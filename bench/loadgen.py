"""A closed-loop HTTP load generator: N clients POST for a fixed time, every answer checked.

Each client sends its next request as soon as the previous answer arrived, over its own
keep-alive HTTP/1.1 connection. Given several URLs (replicas of one service), the clients
are spread over them in turn, as a load balancer would. Prints one JSON document: requests, errors, seconds, and
latency percentiles. Runs in a process of its own so it shares no interpreter with what
it measures.

It is lean on purpose: on a two-core machine every microsecond the generator spends is
taken from the API it measures, while pgbench, the baseline, spends about 50 us of client
CPU per transaction. So requests are pre-encoded bytes written to an asyncio protocol on
uvloop, and answers go through httptools (the C parser uvicorn uses) rather than a client
library; aiohttp cost about 270 us per request here (docs/performance.md).

    python bench/loadgen.py URL [URL ...] --clients 8 --seconds 10 [--expect 201] [--body JSON]
        [--requests N]   # stop after N requests in all (or at the deadline, if earlier)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.parse
from typing import Any

import httptools
import uvloop

EVENT: dict[str, Any] = {
    "type": "bench.created",
    "payload": {"user_id": 42, "email": "ada@example.com"},
}


def encode_request(url: str, body: bytes, key: str) -> bytes:
    """The whole POST as bytes, sent unchanged by every client of ``url``."""
    parts = urllib.parse.urlsplit(url)
    head = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"host: {parts.netloc}",
        "content-type: application/json",
        f"content-length: {len(body)}",
    ]
    if key:
        head.append(f"authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Client(asyncio.Protocol):
    """One keep-alive connection that sends a request whenever the previous answer is whole."""

    def __init__(self, run: Run, request: bytes) -> None:
        self.run = run
        self.request = request
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.WriteTransport | None = None
        self.body = bytearray()
        self.started = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they write.
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.run.errors.append(f"unparsable answer: {exc!r}")
            self.stop()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None and time.perf_counter() < self.run.deadline:
            self.run.errors.append(f"connection lost early: {exc!r}")
        if not self.closed.done():
            self.closed.set_result(None)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        self.run.record(now - self.started, self.parser.get_status_code(), bytes(self.body))
        self.body.clear()
        if now < self.run.deadline and self.run.left != 0 and self.parser.should_keep_alive():
            self.send()
        else:
            self.stop()

    def send(self) -> None:
        assert self.transport is not None
        self.run.left -= 1
        self.started = time.perf_counter()
        self.transport.write(self.request)

    def stop(self) -> None:
        assert self.transport is not None
        transport, self.transport = self.transport, None
        transport.close()


class Run:
    """What all clients share: the deadline, and what came back."""

    def __init__(self, expect: int, deadline: float, requests: int = -1) -> None:
        self.expect = expect
        self.deadline = deadline
        # Requests still to send; negative: no limit but the deadline.
        self.left = requests
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.ok = 0

    def record(self, latency: float, status: int, answer: bytes) -> None:
        self.latencies.append(latency)
        if status != self.expect:
            self.errors.append(f"{status}: {answer[:200]!r}")
        elif self.expect == 201 and b'"id"' not in answer:
            self.errors.append(f"201 without an id: {answer[:200]!r}")
        else:
            self.ok += 1


async def connect(state: Run, url: str, body: bytes, key: str) -> Client:
    """One client of ``url``, already sending."""
    parts = urllib.parse.urlsplit(url)
    request = encode_request(url, body, key)
    _, client = await asyncio.get_running_loop().create_connection(
        lambda: Client(state, request), parts.hostname or "localhost", parts.port or 80
    )
    return client


async def run(
    urls: list[str],
    clients: int,
    seconds: float,
    expect: int,
    body: bytes,
    key: str,
    requests: int = -1,
) -> dict[str, object]:
    started = time.perf_counter()
    state = Run(expect, started + seconds, requests)
    if requests >= 0:
        clients = min(clients, requests)
    connected = await asyncio.gather(
        *(connect(state, urls[n % len(urls)], body, key) for n in range(clients))
    )
    await asyncio.gather(*(client.closed for client in connected))
    elapsed = time.perf_counter() - started
    latencies = sorted(state.latencies)

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0

    return {
        "requests": len(latencies),
        "ok": state.ok,
        "errors": len(state.errors),
        "first_errors": state.errors[:3],
        "seconds": elapsed,
        "per_second": len(latencies) / elapsed,
        "p50_ms": percentile(0.50) * 1000,
        "p99_ms": percentile(0.99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("urls", nargs="+", metavar="url")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--expect", type=int, default=201)
    parser.add_argument("--body", default=json.dumps(EVENT))
    parser.add_argument("--key", default="", help="API key sent as a bearer token")
    parser.add_argument("--requests", type=int, default=-1, help="stop after this many in all")
    args = parser.parse_args()
    result = uvloop.run(
        run(
            args.urls,
            args.clients,
            args.seconds,
            args.expect,
            args.body.encode(),
            args.key,
            args.requests,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
