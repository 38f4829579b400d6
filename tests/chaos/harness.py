"""The chaos harness: real notifier processes under steady load, one fault, and the figures.

Modelled on the public Postgres job-queue harness (hardbyte/postgresql-job-queue-benchmarking,
docs/method.md): a PostgreSQL cluster the run owns (``tests/faults/cluster.py``; the shared
one at 127.0.0.1:5432 is never touched), one ``notifier api`` and two ``notifier worker``
processes at their default settings, a producer posting webhook notifications due now at a
steady rate over HTTP, and a loopback receiver that counts ``webhook-id``s (a receiver that
deduplicates by it acts on each message once). Each scenario is warm-up, fault, recovery,
then a drain: the producer stops and the run waits for what was acknowledged to arrive.

Sizes: ``NOTIFIER_CHAOS_SCALE`` multiplies every duration (1 in ``nox -s chaos``; the
normal test run uses 0.1 and a few scenarios). ``NOTIFIER_CHAOS_RATE`` is the offered load
in notifications a second (default 50, for a shared 2-core machine), and
``NOTIFIER_CHAOS_LEAD_SECONDS`` how far ahead of now each notification's ``target_date`` is
(default 1: due now, as the outside run posted them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from notifier.auth import service as auth_service
from notifier.queue import DELIVER_TASK
from notifier.settings import Settings
from notifier.tenancy import DEFAULT_TENANT, Scope
from tests.faults.cluster import OwnedCluster
from tests.faults.support import (
    ReceiverServer,
    WorkerProcesses,
    start_receiver,
    stop_receiver,
    wait_until,
    webhook_id,
)
from tests.support import LOOPBACK_NETWORKS, SECRETS_KEYS, WEBHOOK_SECRET, free_port

SCALE = float(os.environ.get("NOTIFIER_CHAOS_SCALE", "0.1"))
RATE = float(os.environ.get("NOTIFIER_CHAOS_RATE", "50"))
LEAD_SECONDS = float(os.environ.get("NOTIFIER_CHAOS_LEAD_SECONDS", "1"))
FULL = SCALE >= 1
# Every scenario at whatever scale (to try the long ones at a small one).
ALL = FULL or os.environ.get("NOTIFIER_CHAOS_ALL", "") == "1"
# Requests the producer keeps open at once; beyond it a tick is skipped and counted.
MAX_IN_FLIGHT = 256
# How long a producer request may take before it counts as a hang (status 0).
REQUEST_TIMEOUT_SECONDS = 30.0
# The longest a run waits for retries scheduled in the queue after the load stopped.
DRAIN_LIMIT_SECONDS = 300.0
# The application_name of the harness's own connections, which faults leave alone.
OBSERVER = "chaos-observer"
# Cluster settings of the harness (docs/method.md's postgres.conf: 400 connections, so that
# 300 idle ones still leave the service room).
CLUSTER_SETTINGS = {"max_connections": "400", "shared_buffers": "128MB"}


def scaled(full_seconds: float, minimum: float = 1.0) -> float:
    """A duration of this run: ``full_seconds`` times the scale, at least ``minimum``."""
    return max(minimum, full_seconds * SCALE)


# --- the service under test -----------------------------------------------------------


def service_environment(database_url: str, **overrides: Any) -> dict[str, str]:
    """A ``notifier api`` / ``notifier worker`` environment: defaults, except what the
    harness needs (its database, loopback webhooks, a signing secret) and quieter logs."""
    values: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SECRETS_KEYS": SECRETS_KEYS,
        "WEBHOOK_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
        # One line per delivery would cost the CPU the run measures; errors still show.
        "LOG_LEVEL": "WARNING",
    }
    values.update({key.upper(): value for key, value in overrides.items()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update({f"NOTIFIER_{key}": str(value) for key, value in values.items()})
    return env


async def create_admin_key(database_url: str) -> str:
    """An admin key of the default tenant whose own rate limit is far above any load here."""
    async with auth_service.admin_pool(Settings(database_url=database_url)) as pool:
        if DEFAULT_TENANT not in {t.id for t in await auth_service.list_tenants(pool)}:
            await auth_service.create_tenant(pool, DEFAULT_TENANT)
        _, token = await auth_service.create_key(
            pool,
            tenant_id=DEFAULT_TENANT,
            scopes=[Scope.ADMIN],
            rate_limit_per_second=100_000,
            rate_limit_burst=100_000,
        )
    return token


class Service:
    """One ``notifier api`` and two ``notifier worker`` processes (slots 0 and 1)."""

    def __init__(self, database_url: str, log_dir: Path, **settings: Any) -> None:
        self.database_url = database_url
        self.log_dir = log_dir
        self.env = service_environment(database_url, **settings)
        self.workers = WorkerProcesses(self.env, log_dir)
        self.slots: list[subprocess.Popen[bytes]] = []
        self.api: subprocess.Popen[bytes] | None = None
        self.api_url = ""

    def start(self) -> None:
        port = free_port()
        log = (self.log_dir / "api.log").open("ab")
        self.api = subprocess.Popen(
            [sys.executable, "-m", "notifier", "api", "--host", "127.0.0.1", "--port", str(port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.api_url = f"http://127.0.0.1:{port}"
        self.slots = [self.workers.start(), self.workers.start()]
        deadline = time.monotonic() + 60
        while True:
            assert self.api.poll() is None, f"the API exited:\n{self.logs()}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            assert time.monotonic() < deadline, "the API did not become healthy in 60 s"
            time.sleep(0.2)

    def kill_worker(self, slot: int) -> None:
        """SIGKILL: no handler runs, no transaction commits, its heartbeat stops."""
        self.workers.kill(self.slots[slot])

    def restart_worker(self, slot: int) -> None:
        self.slots[slot] = self.workers.start()

    def terminate_worker(self, slot: int, timeout: float = 120) -> int:
        """SIGTERM and wait for the exit; its exit code."""
        process = self.slots[slot]
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=timeout)

    def alive(self) -> bool:
        return (
            self.api is not None
            and self.api.poll() is None
            and all(p.poll() is None for p in self.slots)
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self) -> None:
        if self.api is not None and self.api.poll() is None:
            self.api.send_signal(signal.SIGTERM)
            try:
                self.api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.api.kill()
                self.api.wait()
        self.workers.stop_all()


# --- the producer ----------------------------------------------------------------------


@dataclass
class Request:
    """One ``POST /api/v1/notifications/``: when, its answer, what it acknowledged."""

    started: float
    finished: float
    status: int  # HTTP status; 0 no answer within the timeout, -1 connection failed
    notification_id: str | None = None
    answered_status: str | None = None  # the notification's status in a 2xx answer


@dataclass
class Producer:
    """Posts webhook notifications due now at a steady rate (open loop, like the harness's
    pacer): a slow answer does not slow the offered load."""

    api_url: str
    api_key: str
    recipient: str
    rate: float = RATE
    rate_factor: float = 1.0
    requests: list[Request] = field(default_factory=list)
    skipped: int = 0
    # Connection failures by exception, retried once with the same Idempotency-Key.
    transport_errors: collections.Counter[str] = field(default_factory=collections.Counter)

    async def run(self, stop: asyncio.Event) -> None:
        # Idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them.
        limits = httpx.Limits(
            max_connections=MAX_IN_FLIGHT, max_keepalive_connections=64, keepalive_expiry=3
        )
        async with httpx.AsyncClient(
            base_url=self.api_url,
            headers={"authorization": f"Bearer {self.api_key}"},
            timeout=REQUEST_TIMEOUT_SECONDS,
            limits=limits,
        ) as http:
            pending: set[asyncio.Task[None]] = set()
            next_at = time.monotonic()
            n = 0
            while not stop.is_set():
                now = time.monotonic()
                if now < next_at:
                    await asyncio.sleep(next_at - now)
                    continue
                # A starved loop catches up at most a second's worth at once.
                next_at = max(next_at, now - 1) + 1 / (self.rate * self.rate_factor)
                if len(pending) >= MAX_IN_FLIGHT:
                    self.skipped += 1
                    continue
                task = asyncio.create_task(self.post(http, n))
                pending.add(task)
                task.add_done_callback(pending.discard)
                n += 1
            await asyncio.gather(*pending)

    async def post(self, http: httpx.AsyncClient, n: int) -> None:
        """One notification, with an ``Idempotency-Key``: a request whose connection failed
        is sent once more with the same key, as a client should (it cannot be stored twice).
        The usual cause is a keep-alive race: uvicorn closes a connection idle for 5 s just
        as the client reuses it."""
        target = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=LEAD_SECONDS)
        body = {
            "notification_type": "chaos.tick",
            "entity_id": f"tick-{n}",
            "target_date": target.isoformat(),
            "lead_time_days": 0,
            "channel": "webhook",
            "recipient": self.recipient,
        }
        headers = {"idempotency-key": f"chaos-{n}"}
        started = time.monotonic()
        for attempt in range(2):
            try:
                response = await http.post("/api/v1/notifications/", json=body, headers=headers)
                break
            except httpx.TimeoutException:
                self.requests.append(Request(started, time.monotonic(), 0))
                return
            except httpx.TransportError as exc:
                self.transport_errors[type(exc).__name__] += 1
                if attempt:
                    self.requests.append(Request(started, time.monotonic(), -1))
                    return
        request = Request(started, time.monotonic(), response.status_code)
        if response.is_success:
            answer = response.json()
            request.notification_id = answer["id"]
            request.answered_status = answer["status"]
        self.requests.append(request)


# --- observing the database -------------------------------------------------------------


@dataclass
class Sample:
    at: float
    dead_jobs: int
    dead_notifications: int


class Observer:
    """The harness's own connection: dead tuples once a second, and the end state."""

    def __init__(self, database_url: str) -> None:
        self.database_url = make_conninfo(database_url, application_name=OBSERVER)
        self.samples: list[Sample] = []

    async def sample_until(self, stop: asyncio.Event) -> None:
        sql = (
            "SELECT relname, n_dead_tup FROM pg_stat_user_tables "
            "WHERE relname IN ('procrastinate_jobs', 'notifications')"
        )
        while not stop.is_set():
            with contextlib.suppress(psycopg.Error):
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True, connect_timeout=2
                ) as conn:
                    while not stop.is_set():
                        cursor = await conn.execute(sql)
                        dead: dict[str, int] = dict(await cursor.fetchall())
                        self.samples.append(
                            Sample(
                                time.monotonic(),
                                dead.get("procrastinate_jobs", 0),
                                dead.get("notifications", 0),
                            )
                        )
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1)

    async def states(self, notification_ids: Sequence[str]) -> dict[str, str]:
        """Each notification's status, ``+ job doing`` when its job is stranded running, and
        ``+ AdminShutdown`` when its last error was a terminated connection."""
        async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
            cursor = await conn.execute(
                "SELECT n.id::text, n.status"
                " || CASE WHEN EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.status = 'doing'"
                "   AND j.args->>'notification_id' = n.id::text) THEN ' + job doing' ELSE '' END"
                " || CASE WHEN n.last_error LIKE '%%AdminShutdown%%' THEN ' + AdminShutdown'"
                "   ELSE '' END"
                " FROM notifier.notifications n WHERE n.id = ANY(%s::uuid[])",
                [list(notification_ids)],
            )
            found: dict[str, str] = dict(await cursor.fetchall())
        return {i: found.get(i, "missing") for i in notification_ids}

    async def retries_waiting(self) -> int:
        """Deliver jobs waiting in the queue (a retry scheduled after a failed attempt)."""
        with contextlib.suppress(psycopg.Error):
            async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
                cursor = await conn.execute(
                    "SELECT count(*) FROM procrastinate_jobs "
                    "WHERE status = 'todo' AND task_name = %s",
                    [DELIVER_TASK],
                )
                row = await cursor.fetchone()
            return int(row[0]) if row else 0
        return 0

    async def stranded_jobs(self) -> int:
        """Jobs ``doing`` for more than a minute (a worker that lives but will never finish)."""
        async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM procrastinate_jobs j WHERE j.status = 'doing' AND "
                "(SELECT max(at) FROM procrastinate_events e WHERE e.job_id = j.id) "
                "< now() - interval '1 minute'"
            )
            row = await cursor.fetchone()
        return int(row[0]) if row else 0


# --- faults that hold something open ------------------------------------------------------


@contextlib.contextmanager
def backend_killer(database_url: str, per_second: float) -> Iterator[dict[str, int]]:
    """Terminate the service's backends ``per_second`` times a second, like the harness's
    pg-backend-kill: every active or idle-in-transaction backend of its database."""
    counts = {"ticks": 0, "terminated": 0}
    stop = threading.Event()
    dbname = conninfo_to_dict(database_url)["dbname"]
    admin_url = make_conninfo(database_url, dbname="postgres", application_name=OBSERVER)

    def loop() -> None:
        while not stop.is_set():
            with (
                contextlib.suppress(psycopg.Error),
                psycopg.connect(admin_url, autocommit=True) as conn,
            ):
                while not stop.wait(1 / per_second):
                    cursor = conn.execute(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                        "FROM pg_stat_activity WHERE datname = %s "
                        "AND pid <> pg_backend_pid() AND application_name <> %s "
                        "AND state IN ('active', 'idle in transaction')",
                        [dbname, OBSERVER],
                    )
                    row = cursor.fetchone()
                    counts["ticks"] += 1
                    counts["terminated"] += int(row[0]) if row else 0
            stop.wait(0.2)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(timeout=10)


@contextlib.contextmanager
def idle_connections(database_url: str, count: int) -> Iterator[int]:
    """Hold ``count`` idle connections to the service's database; how many opened."""
    url = make_conninfo(database_url, application_name=OBSERVER)
    opened: list[psycopg.Connection[Any]] = []
    try:
        for _ in range(count):
            try:
                opened.append(psycopg.connect(url, autocommit=True, connect_timeout=5))
            except psycopg.OperationalError:
                break  # the server's max_connections: the pressure the fault is about
        yield len(opened)
    finally:
        for conn in opened:
            conn.close()


@contextlib.contextmanager
def idle_in_transaction(database_url: str) -> Iterator[None]:
    """One writing transaction (an XID assigned) left open: the cluster's xmin horizon stays
    behind it, so no dead tuple newer than it can be vacuumed."""
    with psycopg.connect(make_conninfo(database_url, application_name=OBSERVER)) as conn:
        conn.execute("SELECT pg_current_xact_id()")
        try:
            yield
        finally:
            conn.rollback()


async def active_readers(database_url: str, stop: asyncio.Event, count: int = 4) -> None:
    """``count`` overlapping REPEATABLE READ transactions scanning the hot tables over and
    over (the analytics-on-OLTP pattern): each keeps its snapshot 10 s, staggered so that
    one is always open."""
    url = make_conninfo(database_url, application_name=OBSERVER)

    async def reader(offset: float) -> None:
        await asyncio.sleep(offset)
        async with await psycopg.AsyncConnection.connect(url) as conn:
            while not stop.is_set():
                await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                async with conn.transaction():
                    until = time.monotonic() + 10
                    while time.monotonic() < until and not stop.is_set():
                        await conn.execute("SELECT count(*), max(id) FROM procrastinate_jobs")
                        await conn.execute(
                            "SELECT status, count(*) FROM notifier.notifications GROUP BY 1"
                        )
                        await asyncio.sleep(0.2)

    await asyncio.gather(*(reader(i * 10 / count) for i in range(count)))


# --- one run ------------------------------------------------------------------------------


@dataclass
class Phases:
    """Monotonic times of a run's phase boundaries."""

    load_started: float = 0.0
    fault_started: float = 0.0
    fault_ended: float = 0.0
    load_stopped: float = 0.0
    drained: float = 0.0


@dataclass
class Outcome:
    """Everything a run measured; :meth:`lines` are its printed figures."""

    scenario: str
    phases: Phases
    requests: list[Request]
    skipped: int
    arrivals: dict[str, float]  # webhook-id -> first arrival
    raw_duplicates: int
    lost_states: dict[str, str]  # acknowledged, never delivered -> its state in the database
    stranded_jobs: int
    samples: list[Sample]
    notes: list[str] = field(default_factory=list)

    @property
    def acknowledged(self) -> list[Request]:
        return [r for r in self.requests if r.notification_id is not None]

    @property
    def answered_expired(self) -> list[Request]:
        return [r for r in self.acknowledged if r.answered_status == "expired"]

    @property
    def to_deliver(self) -> list[Request]:
        """Acknowledged as something to send (a 2xx whose notification was not expired)."""
        return [r for r in self.acknowledged if r.answered_status != "expired"]

    @property
    def delivered(self) -> list[Request]:
        return [r for r in self.to_deliver if webhook_id(r.notification_id or "") in self.arrivals]

    @property
    def lost(self) -> int:
        return len(self.to_deliver) - len(self.delivered)

    def delivery_rate(self, start: float, end: float) -> float:
        """Deliveries (first arrivals) a second between two times."""
        if end <= start:
            return 0.0
        return sum(start <= t < end for t in self.arrivals.values()) / (end - start)

    def baseline_rate(self) -> float:
        """What a healthy service delivers: the warm-up's acknowledged notifications to send a
        second (the delivery rate of a short warm-up still carries the start-up's catch-up)."""
        p = self.phases
        accepted = sum(p.load_started <= r.finished < p.fault_started for r in self.to_deliver)
        return accepted / max(p.fault_started - p.load_started, 1e-9)

    def back_to_90(self) -> float | None:
        """Seconds from the fault's end until a 2-s window delivers 90 % of the baseline."""
        target = 0.9 * self.baseline_rate()
        t = self.phases.fault_ended
        while t + 2 <= self.phases.load_stopped:
            if self.delivery_rate(t, t + 2) >= target:
                return t - self.phases.fault_ended
            t += 0.5
        return None

    def backlog_emptied(self) -> float | None:
        """Seconds from the fault's end until everything acknowledged before it arrived."""
        before = [r for r in self.to_deliver if r.finished <= self.phases.fault_ended]
        times = [self.arrivals.get(webhook_id(r.notification_id or "")) for r in before]
        if any(t is None for t in times):
            return None
        return max([0.0, *((t or 0.0) - self.phases.fault_ended for t in times)])

    def latencies(self) -> list[float]:
        """Acknowledged -> first delivery, seconds."""
        return [
            self.arrivals[webhook_id(r.notification_id or "")] - r.finished for r in self.delivered
        ]

    def during_fault(self) -> list[Request]:
        return [
            r
            for r in self.requests
            if self.phases.fault_started <= r.started <= self.phases.fault_ended
        ]

    def dead_tuples(self) -> str:
        def at(moment: float) -> Sample | None:
            before = [s for s in self.samples if s.at <= moment]
            return before[-1] if before else None

        during = [
            s for s in self.samples if self.phases.fault_started <= s.at <= self.phases.fault_ended
        ]
        peak_jobs = max((s.dead_jobs for s in during), default=0)
        peak_notifications = max((s.dead_notifications for s in during), default=0)
        first, after = at(self.phases.fault_started), at(self.phases.load_stopped)

        def pair(s: Sample | None) -> str:
            return f"{s.dead_jobs:,}/{s.dead_notifications:,}" if s else "n/a"

        return (
            f"dead tuples procrastinate_jobs/notifications: {pair(first)} at the fault, "
            f"peak {peak_jobs:,}/{peak_notifications:,} during, {pair(after)} at the end of "
            "recovery"
        )

    def lines(self) -> list[str]:
        p = self.phases
        fault = self.during_fault()
        codes = collections.Counter(r.status for r in fault)
        waits = sorted(r.finished - r.started for r in fault)
        latencies = sorted(self.latencies())
        back = self.back_to_90()
        emptied = self.backlog_emptied()
        lost_by_state = collections.Counter(self.lost_states.values())
        return [
            f"offered {RATE:.0f}/s for {p.load_stopped - p.load_started:.0f}s, fault {p.fault_ended - p.fault_started:.1f}s; "
            f"{len(self.requests):,} requests ({self.skipped} ticks skipped: producer saturated)",
            f"acknowledged {len(self.acknowledged):,} (of which answered 'expired': "
            f"{len(self.answered_expired):,}), delivered {len(self.delivered):,}, "
            f"LOST {self.lost:,}"
            + (
                f" ({', '.join(f'{n} {s}' for s, n in lost_by_state.most_common(4))})"
                if self.lost
                else ""
            )
            + f", raw duplicates {self.raw_duplicates:,}, jobs stranded 'doing' {self.stranded_jobs}",
            f"throughput baseline {self.baseline_rate():.1f}/s, during the fault "
            f"{self.delivery_rate(p.fault_started, p.fault_ended):.1f}/s; back to 90 % "
            + (f"{back:.1f}s" if back is not None else "never in the recovery phase")
            + " after the fault; backlog of the fault empty "
            + (f"{emptied:.1f}s after it" if emptied is not None else "never (losses)"),
            "API during the fault: "
            + (
                ", ".join(f"{code or 'timeout'}: {n:,}" for code, n in sorted(codes.items()))
                or "no requests"
            )
            + (
                f"; latency p50 {percentile(waits, 50):.3f}s p99 {percentile(waits, 99):.3f}s "
                f"max {waits[-1]:.3f}s"
                if waits
                else ""
            ),
            "acknowledged -> delivered: "
            + (
                f"p50 {percentile(latencies, 50):.2f}s p99 {percentile(latencies, 99):.2f}s "
                f"max {latencies[-1]:.2f}s"
                if latencies
                else "n/a"
            ),
            self.dead_tuples(),
            *self.notes,
        ]

    def as_json(self) -> dict[str, Any]:
        fault = self.during_fault()
        waits = sorted(r.finished - r.started for r in fault)
        return {
            "scenario": self.scenario,
            "scale": SCALE,
            "rate": RATE,
            "requests": len(self.requests),
            "acknowledged": len(self.acknowledged),
            "answered_expired": len(self.answered_expired),
            "delivered": len(self.delivered),
            "lost": self.lost,
            "lost_states": dict(collections.Counter(self.lost_states.values())),
            "raw_duplicates": self.raw_duplicates,
            "stranded_jobs": self.stranded_jobs,
            "baseline_per_second": self.baseline_rate(),
            "back_to_90_seconds": self.back_to_90(),
            "backlog_empty_seconds": self.backlog_emptied(),
            "fault_status_codes": dict(collections.Counter(r.status for r in fault)),
            "fault_latency_p50": percentile(waits, 50) if waits else None,
            "fault_latency_max": waits[-1] if waits else None,
            "max_delivery_seconds": max(self.latencies(), default=None),
            "notes": self.notes,
        }


def percentile(ordered: Sequence[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


Fault = Callable[["Run"], Awaitable[None]]


@dataclass
class Run:
    """What a fault acts on: the cluster, the service, the producer, and notes to print."""

    cluster: OwnedCluster
    service: Service
    producer: Producer
    notes: list[str]


async def run_scenario(
    name: str,
    cluster: OwnedCluster,
    database_url: str,
    log_dir: Path,
    fault: Fault,
    *,
    warmup: float | None = None,
    recovery: float | None = None,
    drain: float | None = None,
    service_settings: Mapping[str, Any] | None = None,
) -> Outcome:
    """Warm-up, ``fault``, recovery at the baseline rate, then wait for the acknowledged
    notifications (at most ``drain`` seconds) and measure."""
    warmup = scaled(15, 3) if warmup is None else warmup
    recovery = scaled(30, 3) if recovery is None else recovery
    # Longer than a killed worker's jobs wait at the default stalled-worker setting (60 s).
    drain = scaled(150, 20) if drain is None else drain
    receiver: ReceiverServer = start_receiver()
    service = Service(database_url, log_dir, **(service_settings or {}))
    observer = Observer(database_url)
    try:
        await asyncio.to_thread(service.start)
        api_key = await create_admin_key(database_url)
        producer = Producer(service.api_url, api_key, receiver.receiver.url + "/hooks")
        phases = Phases()
        stop_load, stop_sampling = asyncio.Event(), asyncio.Event()
        sampling = asyncio.create_task(observer.sample_until(stop_sampling))
        load = asyncio.create_task(producer.run(stop_load))
        phases.load_started = time.monotonic()
        await asyncio.sleep(warmup)
        notes: list[str] = []
        phases.fault_started = time.monotonic()
        await fault(Run(cluster, service, producer, notes))
        phases.fault_ended = time.monotonic()
        await asyncio.sleep(recovery)
        stop_load.set()
        await load
        phases.load_stopped = time.monotonic()
        wanted = {
            webhook_id(r.notification_id)
            for r in producer.requests
            if r.notification_id is not None and r.answered_status != "expired"
        }
        # At least ``drain``; longer (up to 5 minutes) while retries wait in the queue: a
        # notification whose attempt failed in the fault is late, not lost, until they ran.
        deadline = time.monotonic() + DRAIN_LIMIT_SECONDS
        delivered = await wait_until(
            lambda: wanted <= receiver.receiver.unique_ids(), timeout=drain, interval=0.5
        )
        while not delivered and time.monotonic() < deadline and await observer.retries_waiting():
            delivered = await wait_until(
                lambda: wanted <= receiver.receiver.unique_ids(), timeout=2, interval=0.5
            )
        phases.drained = time.monotonic()
        stop_sampling.set()
        await sampling
        arrivals: dict[str, float] = {}
        for arrival in receiver.receiver.snapshot():
            arrivals.setdefault(arrival.webhook_id, arrival.arrived)
        undelivered = [
            r.notification_id
            for r in producer.requests
            if r.notification_id is not None
            and r.answered_status != "expired"
            and webhook_id(r.notification_id) not in arrivals
        ]
        lost_states = await observer.states(undelivered) if undelivered else {}
        if not service.alive():
            notes.append("a service process exited by itself during the run")
        if producer.transport_errors:
            notes.append(
                "connections failed and retried with the same Idempotency-Key: "
                + ", ".join(f"{n} {name}" for name, n in producer.transport_errors.items())
            )
        return Outcome(
            scenario=name,
            phases=phases,
            requests=sorted(producer.requests, key=lambda r: r.started),
            skipped=producer.skipped,
            arrivals=arrivals,
            raw_duplicates=receiver.receiver.duplicates(),
            lost_states=lost_states,
            stranded_jobs=await observer.stranded_jobs(),
            samples=observer.samples,
            notes=notes,
        )
    finally:
        await asyncio.to_thread(service.stop)
        stop_receiver(receiver)


def record(outcome: Outcome) -> None:
    """Append the outcome to ``NOTIFIER_CHAOS_RESULTS`` (JSON lines) when that is set."""
    path = os.environ.get("NOTIFIER_CHAOS_RESULTS")
    if path:
        with Path(path).open("a") as out:
            out.write(json.dumps(outcome.as_json()) + "\n")


def check_nothing_lost(outcome: Outcome) -> None:
    """Every acknowledged notification due now was accepted to send (a 201 ``expired``
    would be our own delay turned into non-delivery, issue 21) and delivered, and no job
    is left ``doing``."""
    expired = outcome.answered_expired
    assert not expired, f"{len(expired)} notifications due now were answered 'expired'"
    assert not outcome.lost_states, (
        f"{len(outcome.lost_states)} acknowledged notifications lost: "
        f"{dict(collections.Counter(outcome.lost_states.values()))}"
    )
    assert outcome.stranded_jobs == 0, f"{outcome.stranded_jobs} jobs left doing"
