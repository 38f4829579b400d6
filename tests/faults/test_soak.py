"""Soak: steady ingest and delivery for a while, reporting memory and latency drift.

Only through ``nox -s soak`` (``-- SECONDS``, default 600), never in the normal run.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.faults.support import DedupReceiver, WorkerProcesses, job_counts, wait_until
from tests.figures import Figures

SECONDS = float(os.environ.get("NOTIFIER_SOAK_SECONDS", "0"))
RATE = float(os.environ.get("NOTIFIER_SOAK_RATE", "10"))  # events per second
PUBLISHERS = 4

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(not SECONDS, reason="the soak runs only through `nox -s soak`"),
]


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else 0.0


async def test_steady_load_does_not_drift(
    db: psycopg.AsyncConnection[Any],
    live_api: str,
    api_headers: dict[str, str],
    dedup_receiver: DedupReceiver,
    worker_processes: WorkerProcesses,
    figure: Figures,
) -> None:
    dedup_receiver.hold_seconds = 0.02
    await db.execute(
        "INSERT INTO notifier.routing_rules (event_type, channel, recipient) "
        "VALUES ('soak.tick', 'webhook', %s)",
        [dedup_receiver.url + "/hooks"],
    )
    workers = [worker_processes.start(worker_concurrency=8) for _ in range(2)]
    published: dict[str, float] = {}  # event id -> when the API acknowledged it
    api_latency: list[tuple[float, float]] = []  # (when, seconds)
    failures = 0
    interval = max(SECONDS / 10, 5.0)
    samples: list[dict[str, float]] = []

    async with httpx.AsyncClient(base_url=live_api, headers=api_headers, timeout=30) as http:

        async def publish(n: int) -> None:
            nonlocal failures
            t0 = time.monotonic()
            response = await http.post(
                "/api/v1/events/", json={"type": "soak.tick", "payload": {"n": n}}
            )
            if response.status_code != 201:
                failures += 1
                return
            published[response.json()["id"]] = time.monotonic()
            api_latency.append((t0, time.monotonic() - t0))

        # Warm up: both workers running and delivering before the clock starts.
        await publish(-1)
        assert await wait_until(lambda: bool(dedup_receiver.snapshot()), timeout=60)

        async def publisher(offset: int) -> None:
            """One of PUBLISHERS clients, each at RATE / PUBLISHERS events per second."""
            n = offset
            while (due := started + n / RATE) < started + SECONDS:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await publish(n)
                n += PUBLISHERS

        async def sampler() -> None:
            while time.monotonic() + interval <= started + SECONDS + 0.5:
                await asyncio.sleep(interval)
                numbers = sample(started, interval, published, api_latency, dedup_receiver)
                numbers.update(
                    api_rss=rss_mib(os.getpid()),
                    worker_rss=sum(rss_mib(w.pid) for w in workers),
                    backlog=(await job_counts(db)).get("todo", 0),
                )
                samples.append(numbers)

        started = time.monotonic()
        await asyncio.gather(sampler(), *(publisher(i) for i in range(PUBLISHERS)))

    assert await wait_until(
        lambda: set(published) <= {a.event_id for a in dedup_receiver.snapshot()}, timeout=120
    )
    assert failures == 0
    assert all(w.poll() is None for w in workers)
    for s in samples:
        figure(
            f"t={s['t']:.0f}s api p50 {s['api_p50'] * 1000:.0f}ms p95 "
            f"{s['api_p95'] * 1000:.0f}ms; publish->delivered p50 {s['e2e_p50']:.2f}s p95 "
            f"{s['e2e_p95']:.2f}s; RSS api+test {s['api_rss']:.0f} MiB, workers "
            f"{s['worker_rss']:.0f} MiB; backlog {s['backlog']:.0f}"
        )
    first, last = samples[0], samples[-1]
    figure(
        f"{SECONDS:.0f}s at {RATE:.0f} events/s, {len(published)} events all delivered, "
        f"{failures} failed requests; drift from t={first['t']:.0f}s to t={last['t']:.0f}s: "
        f"worker RSS {last['worker_rss'] - first['worker_rss']:+.1f} MiB, api RSS "
        f"{last['api_rss'] - first['api_rss']:+.1f} MiB, publish->delivered p95 "
        f"{last['e2e_p95'] - first['e2e_p95']:+.2f}s, api p95 "
        f"{(last['api_p95'] - first['api_p95']) * 1000:+.0f}ms"
    )


def sample(
    started: float,
    interval: float,
    published: dict[str, float],
    api_latency: list[tuple[float, float]],
    receiver: DedupReceiver,
) -> dict[str, float]:
    """Latencies over the last interval."""
    now = time.monotonic()
    since = now - interval
    recent_api = [seconds for at, seconds in api_latency if at >= since]
    e2e = [
        a.arrived - published[a.event_id]
        for a in receiver.snapshot()
        if a.arrived >= since and a.event_id in published
    ]
    return {
        "t": now - started,
        "api_p50": statistics.median(recent_api) if recent_api else 0.0,
        "api_p95": p95(recent_api),
        "e2e_p50": statistics.median(e2e) if e2e else 0.0,
        "e2e_p95": p95(e2e),
    }
