"""Template isolation: a hostile tenant's templates must not slow the API or other tenants.

Starts ``notifier api`` and ``notifier worker`` (default settings) on a scratch database of
the PostgreSQL at NOTIFIER_BENCH_SERVER, and a webhook receiver, all on loopback. For
``--seconds``, at the same time:

- tenant B, in a loop (``--b-clients`` loops): previews the template that froze the API
  (nested loops of 30,000 x 30,000 turns), then sends a notification with that template
  stored (it must fail, over budget);
- tenant A schedules a webhook due two seconds later, four times a second;
- a probe asks ``/health/live`` every 50 ms.

Then it waits for tenant A's webhooks and prints ``/health/live`` latency and tenant A's
lag (arrival at the receiver minus due time), against the targets of issue 14: p99 below
100 ms and below 1 s.

    uv run python bench/isolation_templates.py --quick     # 15 s, for development
    uv run python bench/isolation_templates.py             # 60 s
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.suite import (  # the repository root first, then its bench package
    PYTHON,
    ROOT,
    Processes,
    _answers,
    drop_database,
    free_port,
    fresh_database,
    machine,
    percentile,
    sql,
    wait_until,
)

DATABASE = "notifier_bench_isolation"
NESTED_LOOPS = "{% for i in range(30000) %}{% for j in range(30000) %}{% endfor %}{% endfor %}"
TEMPLATE_TYPE = "report.ready"
OVER_BUDGET = "template 'report.ready': text_body: took longer than 100 ms to render"
DUE_AFTER_SECONDS = 2.0
A_INTERVAL_SECONDS = 0.25
PROBE_INTERVAL_SECONDS = 0.05
TARGET_LIVE_P99_MS = 100.0
TARGET_LAG_P99_S = 1.0


# The key of stored secrets for the processes this benchmark starts (one per run).
BENCH_SECRETS_KEYS = Fernet.generate_key().decode()


def notifier(*args: str, url: str) -> str:
    """Run a ``notifier`` command against the scratch database; its last output line."""
    done = subprocess.run(
        [PYTHON, "-m", "notifier", *args],
        cwd=ROOT,
        env={**os.environ, "NOTIFIER_DATABASE_URL": url},
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def key_for(tenant: str, url: str) -> dict[str, str]:
    """A fresh tenant's admin key, limited far above what this benchmark sends."""
    notifier("tenants", "create", tenant, url=url)
    token = notifier(
        *("keys", "create", "--tenant", tenant, "--scope", "admin"),
        *("--rate-limit", "100000", "--burst", "100000"),
        url=url,
    )
    return {"Authorization": f"Bearer {token}"}


class Load:
    """The three clients and what they saw."""

    def __init__(self, api: str, receiver: str, a: dict[str, str], b: dict[str, str]) -> None:
        self.api, self.receiver, self.a, self.b = api, receiver, a, b
        self.live_ms: list[float] = []
        self.previews: dict[int, int] = {}
        self.b_sent = 0
        self.a_ids: list[str] = []
        self.errors: list[str] = []

    def count(self, status: int) -> None:
        self.previews[status] = self.previews.get(status, 0) + 1

    async def tenant_b(self, until: float) -> None:
        async with httpx.AsyncClient(base_url=self.api, headers=self.b, timeout=60) as http:
            while time.monotonic() < until:
                preview = await http.post(
                    "/api/v1/templates/preview", json={"subject": "s", "text_body": NESTED_LOOPS}
                )
                self.count(preview.status_code)
                created = await http.post(
                    "/api/v1/notifications/",
                    json=notification(self.receiver, lead_time_days=7, days=7),
                )
                if created.status_code == 201:
                    self.b_sent += 1
                else:
                    self.errors.append(f"B send: {created.status_code} {created.text}")

    async def tenant_a(self, until: float) -> None:
        async with httpx.AsyncClient(base_url=self.api, headers=self.a, timeout=60) as http:
            while time.monotonic() < until:
                started = time.monotonic()
                created = await http.post(
                    "/api/v1/notifications/",
                    json=notification(self.receiver, lead_time_days=0, seconds=DUE_AFTER_SECONDS),
                )
                if created.status_code == 201:
                    self.a_ids.append(created.json()["id"])
                else:
                    self.errors.append(f"A send: {created.status_code} {created.text}")
                await asyncio.sleep(max(0.0, A_INTERVAL_SECONDS - (time.monotonic() - started)))

    async def probe(self, until: float) -> None:
        async with httpx.AsyncClient(base_url=self.api, timeout=60) as http:
            while time.monotonic() < until:
                started = time.monotonic()
                response = await http.get("/health/live")
                self.live_ms.append((time.monotonic() - started) * 1000)
                if response.status_code != 200:
                    self.errors.append(f"live: {response.status_code}")
                await asyncio.sleep(PROBE_INTERVAL_SECONDS)

    async def run(self, seconds: float, b_clients: int) -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(
            self.probe(until),
            self.tenant_a(until),
            *(self.tenant_b(until) for _ in range(b_clients)),
        )


def notification(
    receiver: str, *, lead_time_days: int, days: float = 0, seconds: float = 0
) -> dict[str, Any]:
    """A webhook of type report.ready, due ``days`` + ``seconds`` minus the lead time from now."""
    target = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days, seconds=seconds)
    return {
        "notification_type": TEMPLATE_TYPE,
        "entity_id": "report",
        "target_date": target.isoformat(),
        "lead_time_days": lead_time_days,
        "channel": "webhook",
        "recipient": receiver + "/hooks",
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="15 s instead of 60")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load runs")
    parser.add_argument("--b-clients", type=int, default=1, help="tenant B's loops at once")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = min(args.seconds, 15.0)
    return args


def measure(args: argparse.Namespace, procs: Processes) -> tuple[Load, list[float], dict[str, int]]:
    """Start everything, run the load; what the clients saw, tenant A's lags and what
    became of tenant B's notifications."""
    url = fresh_database(DATABASE)
    receiver_port, api_port = free_port(), free_port()
    receiver = f"http://127.0.0.1:{receiver_port}"
    api = f"http://127.0.0.1:{api_port}"
    procs.start(PYTHON, "bench/receiver.py", str(receiver_port))
    env = {
        "NOTIFIER_DATABASE_URL": url,
        "NOTIFIER_SECRETS_KEYS": BENCH_SECRETS_KEYS,
        "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    }
    quiet = (PYTHON, "-m", "notifier", "--log-level", "ERROR")
    procs.start(*quiet, "api", "--port", str(api_port), env=env)
    procs.start(*quiet, "worker", env=env)
    wait_until(lambda: _answers(receiver + "/reset"), timeout=30, what="receiver")
    wait_until(lambda: _answers(api + "/health/live"), timeout=60, what="API")
    a, b = key_for("tenant-a", url), key_for("tenant-b", url)
    stored = httpx.put(
        f"{api}/api/v1/templates/{TEMPLATE_TYPE}",
        json={"subject": "Your report", "text_body": NESTED_LOOPS},
        headers=b,
        timeout=60,
    )
    assert stored.status_code == 201, stored.text

    load = Load(api, receiver, a, b)
    print(f"## load for {args.seconds:.0f} s: tenant B x{args.b_clients}, tenant A, probe")
    asyncio.run(load.run(args.seconds, args.b_clients))
    expected = set(load.a_ids)

    def arrivals() -> dict[str, float]:
        stats: dict[str, float] = json.loads(httpx.get(receiver + "/stats", timeout=30).content)[
            "arrivals"
        ]
        return stats

    wait_until(lambda: expected <= set(arrivals()), timeout=120, interval=0.5, what="A's webhooks")
    arrived = arrivals()
    due = dict(
        sql(
            url,
            "SELECT id::text, extract(epoch FROM send_at)::float8 FROM notifier.notifications"
            " WHERE tenant_id = 'tenant-a'",
        )
    )
    b_outcomes = dict(
        sql(
            url,
            "SELECT coalesce(last_error, status), count(*)::int FROM notifier.notifications"
            " WHERE tenant_id = 'tenant-b' GROUP BY 1",
        )
    )
    return load, [arrived[n] - due[n] for n in load.a_ids], b_outcomes


def report(
    args: argparse.Namespace, load: Load, lags: list[float], b_outcomes: dict[str, int]
) -> bool:
    """Print the figures against their targets; whether every target is met."""
    live_p99 = percentile(load.live_ms, 0.99)
    lag_p99 = percentile(lags, 0.99)
    raw = {
        "seconds": args.seconds,
        "b_clients": args.b_clients,
        "live_ms": {
            "count": len(load.live_ms),
            "p50": percentile(load.live_ms, 0.5),
            "p99": live_p99,
            "max": max(load.live_ms),
        },
        "a_lag_s": {
            "count": len(lags),
            "p50": percentile(lags, 0.5),
            "p99": lag_p99,
            "max": max(lags),
        },
        "b_previews_by_status": load.previews,
        "b_notifications": load.b_sent,
        "b_outcomes": b_outcomes,
        "errors": load.errors[:20],
    }
    met_live, met_lag = live_p99 < TARGET_LIVE_P99_MS, lag_p99 < TARGET_LAG_P99_S
    live, lag = raw["live_ms"], raw["a_lag_s"]
    print()
    print("| figure | value | target | met |")
    print("|---|---|---|---|")
    print(
        f"| /health/live p50 / p99 / max, ms ({len(load.live_ms)} probes) "
        f"| {live['p50']:.1f} / {live_p99:.1f} / {live['max']:.1f} "
        f"| p99 < {TARGET_LIVE_P99_MS:.0f} | {'yes' if met_live else 'NO'} |"
    )
    print(
        f"| tenant A due-webhook lag p50 / p99 / max, s ({len(lags)} webhooks) "
        f"| {lag['p50']:.3f} / {lag_p99:.3f} / {lag['max']:.3f} "
        f"| p99 < {TARGET_LAG_P99_S:.0f} | {'yes' if met_lag else 'NO'} |"
    )
    print(f"| tenant B previews by status | {load.previews} | all 422 | |")
    print(
        f"| tenant B notifications failed over budget / sent "
        f"| {b_outcomes.get(OVER_BUDGET, 0)} / {load.b_sent} | all, once delivered | |"
    )
    if load.errors:
        print(f"errors: {load.errors[:5]}")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    return met_live and met_lag and not load.errors


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Stopped from outside (Ctrl-C, a timeout): still stop every child process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    description = machine()
    print(f"# template isolation, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# {description}")
    procs = Processes(Path(tempfile.mkdtemp(prefix="notifier-bench-")))
    try:
        load, lags, b_outcomes = measure(args, procs)
    finally:
        procs.stop_all()
        drop_database(DATABASE)
    return 0 if report(args, load, lags, b_outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
