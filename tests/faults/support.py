"""What the fault cases share: sizes, figures, worker processes, a deduplicating receiver."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from notifier.db import transaction
from notifier.notifications.scheduling import NotificationDraft, PlannedSend, create_notifications
from notifier.notifications.schemas import NotificationStatus
from notifier.services import Services
from notifier.tenancy import DEFAULT_TENANT
from tests.support import LOOPBACK_NETWORKS, SECRETS_KEYS, eventually

# `nox -s faults` sets this: every case at its full size. Otherwise (the normal test run,
# CI) the same cases run at reduced sizes.
FULL = os.environ.get("NOTIFIER_FAULTS_FULL", "") == "1"


# The slowest cases (a cluster of their own, long holds) run only at full size, in
# `nox -s faults`, to keep the normal run short.
full_only = pytest.mark.skipif(not FULL, reason="slow fault case: runs in `nox -s faults`")


def size(full: int, reduced: int) -> int:
    """The size of a fault case in this run."""
    return full if FULL else reduced


def summary(values: list[float]) -> str:
    """min / median / p95 / max of some seconds, for a figure."""
    if not values:
        return "n/a"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"min {ordered[0]:.2f}s, median {statistics.median(ordered):.2f}s, "
        f"p95 {p95:.2f}s, max {ordered[-1]:.2f}s (n={len(ordered)})"
    )


# --- worker processes -----------------------------------------------------------------


def worker_environment(database_url: str, **overrides: Any) -> dict[str, str]:
    """The environment of a ``python -m notifier worker`` against the test database."""
    values: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "SECRETS_KEYS": SECRETS_KEYS,
        "DATABASE_POOL_MIN_SIZE": 1,
        "WORKER_CONCURRENCY": 4,
        "WORKER_POLL_INTERVAL_SECONDS": 0.1,
        "WORKER_SHUTDOWN_TIMEOUT_SECONDS": 5,
        "STALLED_WORKER_SECONDS": 2,
        "RETRY_BASE_SECONDS": 0.05,
        "RETRY_MAX_SECONDS": 1,
        "WEBHOOK_TIMEOUT_SECONDS": 5,
        "DATABASE_TIMEOUT_SECONDS": 2,
        "WEBHOOK_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
        # The suites read what ran from the jobs, as with the tests' ``settings`` fixture.
        "KEEP_SUCCEEDED_JOBS": "true",
    }
    values.update({key.upper(): value for key, value in overrides.items()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update({f"NOTIFIER_{key}": str(value) for key, value in values.items()})
    return env


class WorkerProcesses:
    """Real ``notifier worker`` subprocesses, so SIGKILL and SIGTERM are real."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, **settings: Any) -> subprocess.Popen[bytes]:
        """Start one worker (``settings`` override NOTIFIER_* values); output to a log file."""
        env = self.env | {f"NOTIFIER_{key.upper()}": str(value) for key, value in settings.items()}
        log = (self.log_dir / f"worker-{len(self.started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "notifier", "worker", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.started.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no handler runs, no transaction commits, the heartbeat stops."""
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def logs(self) -> str:
        """Every worker's output, for failure messages."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def stop_all(self) -> None:
        """Stop whatever is still running (test teardown)."""
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- the receiver ------------------------------------------------------------------------


@dataclass
class Arrival:
    """One webhook request: which message, when it came, when (if ever) it was answered."""

    webhook_id: str
    path: str
    arrived: float
    event_id: str | None = None
    answered: float | None = None
    status: int | None = None


@dataclass
class DedupReceiver:
    """A loopback webhook receiver that holds requests open and deduplicates by webhook-id.

    ``hold_seconds`` keeps each request open before answering (so kills land mid-send).
    Paths ending in ``/hang`` are never answered (until the server stops); ``/trickle``
    starts an answer and then sends a header line every half second, forever; paths in
    ``failing`` answer 500; anything else 200.
    """

    url: str = ""
    hold_seconds: float = 0.0
    failing: set[str] = field(default_factory=lambda: {"/fail"})
    arrivals: list[Arrival] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)

    def snapshot(self) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals)

    def unique_ids(self, path: str | None = None) -> set[str]:
        """Messages a deduplicating receiver would act on (each once)."""
        return {a.webhook_id for a in self.snapshot() if path is None or a.path == path}

    def duplicates(self) -> int:
        """Requests beyond the first for the same webhook-id (the raw duplicate count)."""
        arrivals = self.snapshot()
        return len(arrivals) - len({a.webhook_id for a in arrivals})

    def in_flight(self) -> list[Arrival]:
        return [a for a in self.snapshot() if a.answered is None]


@dataclass
class ReceiverServer:
    receiver: DedupReceiver
    server: ThreadingHTTPServer


def start_receiver(hold_seconds: float = 0.0) -> ReceiverServer:
    """Serve a :class:`DedupReceiver` on 127.0.0.1 in a thread."""
    state = DedupReceiver(hold_seconds=hold_seconds)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            arrival = Arrival(
                webhook_id=self.headers.get("webhook-id", ""),
                path=self.path,
                arrived=time.monotonic(),
                event_id=json.loads(body or b"{}").get("data", {}).get("event_id"),
            )
            with state.lock:
                state.arrivals.append(arrival)
            if self.path.endswith("/hang"):
                state.closing.wait()
                return
            if self.path.endswith("/trickle"):
                self.trickle()
                return
            if state.hold_seconds:
                state.closing.wait(state.hold_seconds)
            with state.lock:
                status = 500 if self.path in state.failing else 200
            try:
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
            except OSError:
                return  # the sender went away (killed) before the answer
            with state.lock:
                arrival.answered = time.monotonic()
                arrival.status = status

        def trickle(self) -> None:
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                while not state.closing.wait(0.5):
                    self.wfile.write(b"x-still-thinking: yes\r\n")
                    self.wfile.flush()
            except OSError:
                return  # the sender gave up

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

    server = Server(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return ReceiverServer(state, server)


def stop_receiver(running: ReceiverServer) -> None:
    running.receiver.closing.set()
    running.server.shutdown()
    running.server.server_close()


# --- arranging and inspecting ------------------------------------------------------------


async def schedule_webhooks(
    services: Services,
    url: str,
    count: int,
    *,
    notification_type: str = "fault.test",
    channel: str = "webhook",
) -> list[uuid.UUID]:
    """``count`` notifications to ``url`` (webhooks unless told), due now, with their jobs."""
    now = datetime.datetime.now(datetime.UTC)
    drafts = [
        NotificationDraft(
            notification_type=notification_type,
            channel=channel,
            recipient=url,
            send=PlannedSend(datetime.timedelta(0), now, NotificationStatus.PENDING),
            target_date=None,
            entity_id=f"entity-{i}",
        )
        for i in range(count)
    ]
    async with transaction(services.pool) as conn:
        created = await create_notifications(conn, DEFAULT_TENANT, drafts)
    return [n.id for n in created]


async def rows(db: psycopg.AsyncConnection[Any], sql: str, *params: Any) -> list[dict[str, Any]]:
    cursor = await db.execute(sql, list(params))
    return list(await cursor.fetchall())


async def status_counts(db: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """Notifications by status."""
    found = await rows(
        db, "SELECT status, count(*) AS n FROM notifier.notifications GROUP BY status"
    )
    return {row["status"]: row["n"] for row in found}


async def job_counts(db: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """procrastinate jobs by status."""
    found = await rows(
        db, "SELECT status::text AS status, count(*) AS n FROM procrastinate_jobs GROUP BY 1"
    )
    return {row["status"]: row["n"] for row in found}


async def wait_drained(db: psycopg.AsyncConnection[Any], timeout: float = 120) -> None:
    """Wait until no job is waiting or running (the periodic maintenance job aside)."""

    async def drained() -> bool:
        jobs = await job_counts(db)
        return not jobs.get("todo") and not jobs.get("doing")

    await eventually(drained, timeout=timeout, interval=0.2)


def webhook_id(notification_id: uuid.UUID | str) -> str:
    """The ``webhook-id`` every attempt of a notification carries."""
    return f"msg_{uuid.UUID(str(notification_id)).hex}"


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05
) -> bool:
    """Poll a plain function (receiver state, processes); whether it became true in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()
