"""A closed-loop HTTP load generator: N clients POST for a fixed time, every answer checked.

Each client sends its next request as soon as the previous answer arrived, over its own
keep-alive connection (aiohttp). Prints one JSON document: requests, errors, seconds,
and latency percentiles. Runs in a process of its own so it shares no interpreter with
what it measures.

    python bench/loadgen.py URL --clients 8 --seconds 10 [--expect 201] [--body JSON]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp

EVENT = {"type": "bench.created", "payload": {"user_id": 42, "email": "ada@example.com"}}


async def client(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    expect: int,
    deadline: float,
    latencies: list[float],
    errors: list[str],
    ok: list[int],
    headers: dict[str, str],
) -> None:
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
                status = response.status
        except aiohttp.ClientError as exc:
            errors.append(repr(exc))
            continue
        latencies.append(time.perf_counter() - started)
        if status != expect:
            errors.append(f"{status}: {answer[:200]!r}")
        elif expect == 201 and b'"id"' not in answer:
            errors.append(f"201 without an id: {answer[:200]!r}")
        else:
            ok.append(status)


async def run(
    url: str, clients: int, seconds: float, expect: int, body: bytes, key: str
) -> dict[str, object]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    latencies: list[float] = []
    errors: list[str] = []
    ok: list[int] = []
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(
            *(
                client(session, url, body, expect, deadline, latencies, errors, ok, headers)
                for _ in range(clients)
            )
        )
        elapsed = time.perf_counter() - started
    latencies.sort()

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0

    return {
        "requests": len(latencies),
        "ok": len(ok),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": elapsed,
        "per_second": len(latencies) / elapsed,
        "p50_ms": percentile(0.50) * 1000,
        "p99_ms": percentile(0.99) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--expect", type=int, default=201)
    parser.add_argument("--body", default=json.dumps(EVENT))
    parser.add_argument("--key", default="", help="API key sent as a bearer token")
    args = parser.parse_args()
    result = asyncio.run(
        run(args.url, args.clients, args.seconds, args.expect, args.body.encode(), args.key)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
