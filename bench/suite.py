"""The benchmark suite: every workload of docs/performance.md beside its baseline, one table.

Starts everything it needs on loopback (the API, workers, a webhook receiver, Celery
workers, pgbench) against scratch databases on the PostgreSQL at NOTIFIER_BENCH_SERVER
(default postgresql://postgres@127.0.0.1:5432) and the Redis at BENCH_REDIS_URL (default
redis://127.0.0.1:6379/15, the Celery baseline only). Every workload is bounded in time.

    uv run nox -s bench                 # the full suite (about 12 minutes on a quiet machine)
    uv run nox -s bench -- --quick      # small sizes, for development
    uv run python bench/suite.py --only ingest,delivery --deliveries 5000
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg.conninfo import make_conninfo

from notifier import migrate

ROOT = Path(__file__).resolve().parent.parent
SERVER = os.environ.get("NOTIFIER_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
PYTHON = sys.executable
WORKLOADS = ("ingest", "delivery", "scheduling", "growth", "outbox")
# What a publish executes (notifier.events.queries.publish_events: the insert and the defer
# in one statement, in autocommit: its own transaction) as a pgbench script: the same
# statement, same indexes and triggers, for one event. The API shares that statement among
# the events of concurrent requests (notifier.events.publisher); pgbench gives each event
# its own transaction, as a producer writing to the database itself would.
PUBLISH_SQL = """\\set n random(1, 1000000000)
WITH published AS (
    INSERT INTO notifier.events (id, tenant_id, type, payload, occurred_at, source, external_id, traceparent)
    SELECT * FROM unnest(ARRAY[gen_random_uuid()], ARRAY['default'], ARRAY['bench.created'], ARRAY[jsonb_build_object('user_id', :n, 'email', 'ada@example.com')], ARRAY[NULL]::timestamptz[], ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[NULL]::text[])
    ON CONFLICT (tenant_id, (coalesce(source, '')), external_id) WHERE external_id IS NOT NULL DO NOTHING
    RETURNING *
), deferred AS (
    SELECT procrastinate_defer_jobs_v1(array_agg(ROW('events', 'notifier.process_event', 0, NULL, NULL, jsonb_build_object('event_id', published.id::text), NULL)::procrastinate_job_to_defer_v1)) AS job_ids FROM published
)
SELECT published.* FROM published CROSS JOIN deferred;
"""
# The events the load generator publishes (user 42; pgbench's users are random).
API_EVENTS_SQL = """
SELECT count(*) FROM notifier.events WHERE payload @> '{"user_id": 42}' AND type = 'bench.created'
"""
# The candidate search inside notifier.fetch_job (migration 0011), for EXPLAIN: the group
# first in line (the highest priority, then the one served longest ago), then its head.
FETCH_CANDIDATE_SQL = """
WITH candidate AS MATERIALIZED (
    SELECT groups.queue_name, groups.tenant_id, groups.priority
    FROM notifier.job_groups AS groups
    WHERE groups.due_at <= now() AND groups.queue_name = ANY(ARRAY['deliveries'])
    ORDER BY groups.priority DESC, groups.turn, groups.due_at, groups.queue_name, groups.tenant_id
    LIMIT 1
), run_now AS (
    SELECT jobs.id FROM procrastinate_jobs AS jobs
    WHERE jobs.status = 'todo' AND jobs.scheduled_at IS NULL
      AND jobs.queue_name = (SELECT queue_name FROM candidate)
      AND coalesce(jobs.args->>'tenant_id', '') = (SELECT tenant_id FROM candidate)
      AND jobs.priority = (SELECT priority FROM candidate)
      AND NOT notifier.job_waits_for_lock(jobs.lock, jobs.priority, jobs.id)
    ORDER BY jobs.id LIMIT 1
    FOR UPDATE OF jobs SKIP LOCKED
), scheduled_and_due AS (
    SELECT jobs.id FROM procrastinate_jobs AS jobs
    WHERE jobs.status = 'todo' AND jobs.scheduled_at IS NOT NULL AND jobs.scheduled_at <= now()
      AND jobs.queue_name = (SELECT queue_name FROM candidate)
      AND coalesce(jobs.args->>'tenant_id', '') = (SELECT tenant_id FROM candidate)
      AND jobs.priority = (SELECT priority FROM candidate)
      AND NOT notifier.job_waits_for_lock(jobs.lock, jobs.priority, jobs.id)
    ORDER BY jobs.scheduled_at, jobs.id LIMIT 1
    FOR UPDATE OF jobs SKIP LOCKED
)
SELECT id FROM (SELECT id FROM run_now UNION ALL SELECT id FROM scheduled_and_due) AS heads
ORDER BY id LIMIT 1
"""
# The candidate search inside procrastinate_fetch_job_v2 (procrastinate 3.10), which
# workers used before migration 0009: the lever's baseline.
STOCK_FETCH_CANDIDATE_SQL = """
SELECT jobs.id FROM procrastinate_jobs AS jobs
WHERE NOT EXISTS (
    SELECT 1 FROM procrastinate_jobs AS other_jobs
    WHERE jobs.lock IS NOT NULL AND other_jobs.lock = jobs.lock
      AND (other_jobs.status = 'doing'
           OR (other_jobs.status = 'todo'
               AND (other_jobs.priority > jobs.priority
                    OR (other_jobs.priority = jobs.priority AND other_jobs.id < jobs.id)))))
  AND jobs.status = 'todo'
  AND jobs.queue_name = ANY(ARRAY['deliveries'])
  AND (jobs.scheduled_at IS NULL OR jobs.scheduled_at <= now())
ORDER BY jobs.priority DESC, jobs.id ASC LIMIT 1
FOR UPDATE OF jobs SKIP LOCKED
"""
# The due job a fetch must find (removed after the measurement).
DUE_JOB_SQL = """
INSERT INTO procrastinate_jobs (queue_name, task_name, priority, args)
VALUES ('deliveries', 'notifier.deliver', 0, '{"due": true}')
"""
# Fetch function and its candidate search: what workers run, and procrastinate's own.
FETCHES = {
    "notifier": ("notifier.fetch_job", FETCH_CANDIDATE_SQL),
    "stock": ("procrastinate_fetch_job_v2", STOCK_FETCH_CANDIDATE_SQL),
}


@dataclass
class Row:
    workload: str
    figure: str
    notifier: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, *args: str) -> None:
        self.rows.append(Row(*args))
        row = self.rows[-1]
        print(
            f"  {row.workload:<11} {row.figure:<46} {row.notifier:>12} {row.baseline:>12}",
            flush=True,
        )

    def table(self) -> str:
        header = Row("workload", "figure", "notifier", "baseline", "ratio", "target", "met")
        rows = [header, *self.rows]
        widths = [max(len(getattr(r, f)) for r in rows) for f in Row.__dataclass_fields__]
        lines = []
        for index, r in enumerate(rows):
            cells = [getattr(r, f) for f in Row.__dataclass_fields__]
            lines.append(
                "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
            )
            if index == 0:
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else math.nan


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def drop_database(name: str) -> None:
    with psycopg.connect(make_conninfo(SERVER, dbname="postgres"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def fresh_database(name: str) -> str:
    """A new, migrated scratch database; its URL."""
    url = make_conninfo(SERVER, dbname=name)
    drop_database(name)
    migrate.create_database_if_missing(url)
    migrate.upgrade(url)
    return url


def sql(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement.encode() if params is None else statement, params)
        return cursor.fetchall() if cursor.description else []


def scalar(url: str, statement: str, params: Any = None) -> Any:
    return sql(url, statement, params)[0][0]


def empty_queue_and_notifications(url: str) -> None:
    sql(url, "TRUNCATE procrastinate_jobs, notifier.notifications CASCADE")


def settle(url: str) -> None:
    """Write out what the last steps dirtied before measuring, so that the checkpoint a bulk
    load brings on (a million rows are gigabytes of WAL) does not land in the measurement."""
    sql(url, "CHECKPOINT")


def analyze(url: str) -> None:
    """Fresh statistics after a bulk load, as autoanalyze would give within a minute.

    Without them the planner takes the empty table's statistics for the truth and plans
    the fetch as a sort of every waiting job, per fetch (see docs/performance.md).
    """
    sql(url, "ANALYZE procrastinate_jobs, notifier.notifications")


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        body: bytes = response.read()
        return body


def wait_until(check: Any, *, timeout: float, interval: float = 0.05, what: str) -> float:
    """Poll ``check`` until truthy; the time it took."""
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{what}: not done within {timeout:.0f}s")
        time.sleep(interval)
    return time.perf_counter() - started


class Processes:
    """Child processes, all stopped on exit."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        child = subprocess.Popen(argv, env={**os.environ, **(env or {})}, cwd=ROOT)
        self.children.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes], timeout: float = 30) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children.remove(child)

    def stop_all(self) -> None:
        for child in list(self.children):
            self.stop(child)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn, Celery's pool), in MB."""
    process = psutil.Process(pid)
    total = process.memory_info().rss
    total += sum(child.memory_info().rss for child in process.children(recursive=True))
    return total / 1e6


@dataclass
class Bench:
    args: argparse.Namespace
    report: Report
    procs: Processes
    url: str = ""
    receiver_url: str = ""
    # The API processes (--api-processes, default one): the load generator spreads its
    # clients over them as a load balancer would.
    api_urls: list[str] = field(default_factory=list)
    apis: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # An events:write key of the default tenant, limited far above what the load reaches.
    api_key: str = ""

    # --- shared parts -------------------------------------------------------------------

    def notifier_env(self, **extra: str) -> dict[str, str]:
        """A worker's environment: default settings but the database and ``extra``."""
        return {
            "NOTIFIER_DATABASE_URL": self.url,
            # Four workers of concurrency 10 each, plus the API, within max_connections.
            "NOTIFIER_DATABASE_POOL_MAX_SIZE": "13",
            # The receiver is on loopback, which webhooks may not reach by default.
            "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
            **extra,
        }

    def start_receiver(self) -> None:
        port = free_port()
        self.procs.start(PYTHON, "bench/receiver.py", str(port))
        self.receiver_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(self.receiver_url + "/reset"), timeout=30, what="receiver")

    def received(self) -> dict[str, Any]:
        stats: dict[str, Any] = json.loads(http_get(self.receiver_url + "/stats", timeout=30))
        return stats

    def start_api(self) -> None:
        """``--api-processes`` API processes, and an events:write key for the load generator."""
        for _ in range(self.args.api_processes):
            api, url = self.start_api_process(self.url)
            self.apis.append(api)
            self.api_urls.append(url)
        self.api_key = self.create_key(self.url)

    def start_api_process(self, database_url: str) -> tuple[subprocess.Popen[bytes], str]:
        """An API process on ``database_url``; its URL once it answers."""
        port = free_port()
        api = self.procs.start(
            *(PYTHON, "-m", "notifier", "--log-level", "WARNING", "api", "--port", str(port)),
            env={"NOTIFIER_DATABASE_URL": database_url},
        )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url + "/health"), timeout=60, what="API")
        return api, url

    def create_key(self, database_url: str) -> str:
        """An events:write key of the default tenant, limited far above what the load reaches."""
        created = subprocess.run(
            [
                *(PYTHON, "-m", "notifier", "keys", "create", "--scope", "events:write"),
                *("--name", "bench", "--rate-limit", "1000000", "--burst", "1000000"),
            ],
            cwd=ROOT,
            env={**os.environ, "NOTIFIER_DATABASE_URL": database_url},
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return created.stdout.strip().splitlines()[-1]

    def publish(
        self, clients: int, seconds: float, *, processes: int | None = None
    ) -> dict[str, Any]:
        """The load generator posting events to the first ``processes`` API processes (all)."""
        urls = self.api_urls[:processes] if processes else self.api_urls
        return self.loadgen([url + "/api/v1/events/" for url in urls], clients, seconds)

    def api_rss_mb(self) -> float:
        """The resident memory of the largest API process."""
        return max(rss_mb(api.pid) for api in self.apis)

    def loadgen(
        self,
        urls: list[str],
        clients: int,
        seconds: float,
        expect: int = 201,
        key: str | None = None,
    ) -> dict[str, Any]:
        out = subprocess.run(
            [
                PYTHON,
                "bench/loadgen.py",
                *urls,
                "--clients",
                str(clients),
                "--seconds",
                str(seconds),
                "--expect",
                str(expect),
                "--key",
                key or self.api_key,
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=seconds + 120,
        )
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def seed_due(
        self, count: int, *, at: str = "now()", jobs: bool = True, tenant: str = "default"
    ) -> None:
        """``count`` pending webhook notifications of ``tenant`` (which must exist) due ``at``,
        and (``jobs``) their deliver jobs."""
        with psycopg.connect(self.url, autocommit=True) as conn, conn.transaction():
            conn.execute(
                f"""
                INSERT INTO notifier.notifications
                    (tenant_id, notification_type, channel, recipient, context, send_at, status)
                SELECT %s, 'bench.delivery', 'webhook', %s, jsonb_build_object('n', n), {at},
                       'pending'
                FROM generate_series(1, %s) AS n
                """.encode(),
                [tenant, self.receiver_url + "/hooks", count],
            )
            if jobs:
                # Each job becomes its notification's job, naming its tenant, as the
                # service defers it.
                conn.execute(
                    f"""
                    WITH deferred AS (
                        INSERT INTO procrastinate_jobs
                            (queue_name, task_name, priority, args, scheduled_at)
                        SELECT 'deliveries', 'notifier.deliver', 0,
                               jsonb_build_object('notification_id', id::text,
                                                  'tenant_id', tenant_id),
                               CASE WHEN {at} > now() THEN {at} END
                        FROM notifier.notifications
                        WHERE status = 'pending' AND job_id IS NULL AND tenant_id = %s
                        RETURNING id, (args->>'notification_id')::uuid AS notification_id
                    )
                    UPDATE notifier.notifications AS n SET job_id = deferred.id
                    FROM deferred WHERE n.id = deferred.notification_id
                    """.encode(),
                    [tenant],
                )
        analyze(self.url)

    def sent(self) -> int:
        return int(
            scalar(self.url, "SELECT count(*) FROM notifier.notifications WHERE status = 'sent'")
        )

    # --- 1. ingest ----------------------------------------------------------------------

    def pgbench(self, clients: int, seconds: float) -> dict[str, float]:
        pgbench = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp, "publish.sql")
            script.write_text(PUBLISH_SQL)
            info = psycopg.conninfo.conninfo_to_dict(self.url)
            out = subprocess.run(
                [
                    pgbench,
                    "-n",
                    "-f",
                    str(script),
                    "-c",
                    str(clients),
                    "-j",
                    str(min(clients, 4)),
                    "-T",
                    str(int(seconds)),
                    "-l",
                    "--log-prefix",
                    str(Path(tmp, "log")),
                    "-h",
                    str(info.get("host", "127.0.0.1")),
                    "-p",
                    str(info.get("port", 5432)),
                    "-U",
                    str(info.get("user", "postgres")),
                    str(info["dbname"]),
                ],
                check=True,
                capture_output=True,
                text=True,
                timeout=seconds + 120,
            )
            latencies = [
                int(line.split()[2]) / 1000
                for log in Path(tmp).glob("log*")
                for line in log.read_text().splitlines()
            ]
        match = re.search(r"tps = ([\d.]+) \(without initial", out.stdout)
        assert match, out.stdout
        failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
        assert failed is None or failed.group(1) == "0", out.stdout
        return {
            "per_second": float(match.group(1)),
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
        }

    def ingest(self) -> None:
        seconds = self.args.ingest_seconds
        events_before = scalar(self.url, API_EVENTS_SQL)
        accepted = 0
        for clients in (1, 8, 32):
            ours = self.publish(clients, seconds)
            base = self.pgbench(clients, seconds)
            self.report.raw[f"ingest_{clients}"] = {"notifier": ours, "pgbench": base}
            accepted += ours["ok"]
            ratio = ours["per_second"] / base["per_second"]
            name = f"ingest {clients:>2}c"
            self.report.add(
                name,
                f"events/s, {len(self.apis)} API process{'es' if len(self.apis) > 1 else ''}"
                " (baseline: pgbench same SQL, tps)",
                f"{ours['per_second']:,.0f}",
                f"{base['per_second']:,.0f}",
                f"{ratio:.2f}",
                ">= 0.5 at 8c" if clients == 8 else "",
                verdict(ratio >= 0.5) if clients == 8 else "",
            )
            self.report.add(
                name,
                "p50 / p99 latency, ms",
                f"{ours['p50_ms']:.1f} / {ours['p99_ms']:.1f}",
                f"{base['p50_ms']:.1f} / {base['p99_ms']:.1f}",
                "",
                "p99 < 50 at 8c" if clients == 8 else "",
                verdict(ours["p99_ms"] < 50) if clients == 8 else "",
            )
            self.report.add(
                name,
                "responses checked / bad",
                f"{ours['requests']:,} / {ours['errors']}",
                "",
                "",
                "0 bad",
                verdict(ours["errors"] == 0),
            )
            if clients == 8 and len(self.apis) > 1:
                # What one process does alone: the cost of a request, without the spread.
                alone = self.publish(clients, seconds, processes=1)
                self.report.raw["ingest_8_one_process"] = alone
                accepted += alone["ok"]
                self.report.add(
                    name,
                    "events/s, one API process; p50 / p99 ms; bad",
                    f"{alone['per_second']:,.0f}; {alone['p50_ms']:.1f} / {alone['p99_ms']:.1f};"
                    f" {alone['errors']}",
                    f"{base['per_second']:,.0f}",
                    f"{alone['per_second'] / base['per_second']:.2f}",
                )
        # Every 201 means committed: each accepted event is stored.
        stored = scalar(self.url, API_EVENTS_SQL) - events_before
        assert stored == accepted, f"{accepted} events accepted, {stored} stored"
        self.report.raw["ingest_events_stored"] = stored
        self.report.raw["api_rss_after_ingest"] = self.api_rss_mb()

    def generator_ceiling(self) -> None:
        """The load generator against the bare receiver: far above the API, or it would be the bottleneck."""
        ceiling = self.loadgen(
            [self.receiver_url + "/hooks"], 8, min(5.0, self.args.ingest_seconds), expect=200
        )
        self.report.add(
            "tools",
            "load generator -> bare receiver, req/s (8c)",
            f"{ceiling['per_second']:,.0f}",
        )
        http_get(self.receiver_url + "/reset")

    # --- 2. delivery --------------------------------------------------------------------

    def arrival_span(self, count: int) -> float:
        """Seconds from the first to the last arrival at the receiver, checking every one came."""
        received = self.received()
        assert received["count"] == count, (received["count"], count)
        arrivals = sorted(received["arrivals"].values())
        assert len(arrivals) == count, "a notification arrived twice"
        return (arrivals[-1] - arrivals[0]) * count / max(1, count - 1)

    def drain_notifier(self, processes: int, count: int, **env: str) -> tuple[float, list[int]]:
        """Seconds for ``processes`` workers to deliver ``count`` due notifications.

        Measured at the receiver from the first arrival to the last, so that starting the
        processes (imports, connections) is left out; the same for every contender.
        """
        empty_queue_and_notifications(self.url)
        http_get(self.receiver_url + "/reset")
        self.seed_due(count)
        workers = [
            self.procs.start(
                PYTHON,
                "-m",
                "notifier",
                "--log-level",
                "WARNING",
                "worker",
                "--queue",
                "deliveries",
                env=self.notifier_env(**env),
            )
            for _ in range(processes)
        ]
        wait_until(
            lambda: self.sent() >= count, timeout=self.args.timeout, interval=0.1, what="delivery"
        )
        return self.arrival_span(count), [w.pid for w in workers]

    def drain_noop(self, processes: int, count: int) -> float:
        """Seconds for stock procrastinate to run ``count`` no-op jobs, first fetch to last finish."""
        empty_queue_and_notifications(self.url)
        sql(
            self.url,
            "INSERT INTO procrastinate_jobs (queue_name, task_name, priority, args) "
            "SELECT 'bench_noop', 'bench.noop', 0, '{}' FROM generate_series(1, %s)",
            [count],
        )
        analyze(self.url)
        workers = [
            self.procs.start(PYTHON, "bench/noop_worker.py", self.url) for _ in range(processes)
        ]

        def done() -> bool:
            return (
                int(
                    scalar(
                        self.url,
                        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
                    )
                )
                >= count
            )

        wait_until(done, timeout=self.args.timeout, interval=0.1, what="no-op drain")
        for worker in workers:
            self.procs.stop(worker)
        span = scalar(
            self.url,
            "SELECT extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded') "
            "- min(at) FILTER (WHERE type = 'started')) FROM procrastinate_events",
        )
        return float(span) * count / max(1, count - 1)

    def drain_celery(self, processes: int, count: int) -> float:
        """Seconds for Celery prefork workers to deliver ``count`` queued tasks, first to last arrival."""
        sys.path.insert(0, str(ROOT))
        from bench import celery_app  # noqa: PLC0415 - only the Celery baseline needs it

        celery_app.app.conf.broker_url = REDIS
        empty_queue_and_notifications(self.url)
        http_get(self.receiver_url + "/reset")
        celery_app.app.control.purge()
        self.seed_due(count, jobs=False)
        ids = [row[0] for row in sql(self.url, "SELECT id::text FROM notifier.notifications")]
        with celery_app.app.producer_or_acquire() as producer:
            for notification_id in ids:
                celery_app.deliver.apply_async((notification_id,), producer=producer)
        worker = self.procs.start(
            PYTHON,
            "-m",
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            "-c",
            str(processes),
            "-P",
            "prefork",
            "-l",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            env={"BENCH_DATABASE_URL": self.url, "BENCH_REDIS_URL": REDIS, "PYTHONPATH": str(ROOT)},
        )
        wait_until(
            lambda: self.sent() >= count,
            timeout=self.args.timeout,
            interval=0.1,
            what="Celery drain",
        )
        self.report.raw[f"celery_rss_{processes}"] = rss_mb(worker.pid)
        self.procs.stop(worker)
        return self.arrival_span(count)

    def delivery(self) -> None:
        count = self.args.deliveries
        rates: dict[str, dict[int, float]] = {"notifier": {}, "noop": {}, "celery": {}}
        for processes in (1, 2, 4):
            elapsed, pids = self.drain_notifier(processes, count)
            rates["notifier"][processes] = count / elapsed
            if processes == 1:
                # Memory: the same worker drains a second batch; its RSS must not grow.
                rss_first = rss_mb(pids[0])
                empty_queue_and_notifications(self.url)
                http_get(self.receiver_url + "/reset")
                self.seed_due(count)
                wait_until(
                    lambda: self.sent() >= count,
                    timeout=self.args.timeout,
                    interval=0.1,
                    what="repeat",
                )
                self.report.raw["worker_rss"] = [rss_first, rss_mb(pids[0])]
                self.report.raw["repeat_drain_per_second"] = count / self.arrival_span(count)
            for child in [c for c in self.procs.children if c.pid in pids]:
                self.procs.stop(child)
            rates["noop"][processes] = count / self.drain_noop(processes, count)
            rates["celery"][processes] = count / self.drain_celery(processes, count)
            ours = rates["notifier"][processes]
            noop, celery = rates["noop"][processes], rates["celery"][processes]
            name = f"delivery {processes}p"
            self.report.add(
                name,
                "notifications/s vs procrastinate no-op ceiling",
                f"{ours:,.0f}",
                f"{noop:,.0f}",
                f"{ours / noop:.2f}",
                ">= 0.7",
                verdict(ours / noop >= 0.7),
            )
            self.report.add(
                name,
                "notifications/s vs Celery + Redis (prefork)",
                f"{ours:,.0f}",
                f"{celery:,.0f}",
                f"{ours / celery:.2f}",
                ">= 1.0",
                verdict(ours >= celery),
            )
        self.report.raw["delivery"] = rates
        self.fetch_lever(count)

    def fetch_lever(self, count: int) -> None:
        """Asynchronous-commit fetches against durable ones, one worker, interleaved twice
        (A B A B, a quarter of ``count`` each) so that drift in the machine's load hits both."""
        spans: dict[str, float] = {"true": 0.0, "false": 0.0}
        each = max(100, count // 4)
        for _ in range(2):
            for mode in ("true", "false"):
                elapsed, pids = self.drain_notifier(
                    1, each, NOTIFIER_WORKER_FETCH_ASYNC_COMMIT=mode
                )
                spans[mode] += elapsed
                for child in [c for c in self.procs.children if c.pid in pids]:
                    self.procs.stop(child)
        fast, durable = 2 * each / spans["true"], 2 * each / spans["false"]
        self.report.raw["fetch_lever"] = {"async": fast, "durable": durable}
        self.report.add(
            "lever",
            "async-commit fetch vs durable fetch, 1p, notif/s",
            f"{fast:,.0f}",
            f"{durable:,.0f}",
            f"{fast / durable:.2f}",
        )

    # --- 3. scheduling precision --------------------------------------------------------

    def scheduling(self) -> None:
        count = self.args.scheduled
        empty_queue_and_notifications(self.url)
        http_get(self.receiver_url + "/reset")
        worker = self.procs.start(
            PYTHON, "-m", "notifier", "--log-level", "WARNING", "worker", env=self.notifier_env()
        )
        time.sleep(3)  # let it register and settle into its polling loop
        due = math.ceil(time.time()) + 3
        at = f"to_timestamp({due})"
        self.seed_due(count, at=at)
        assert time.time() < due, "seeding took longer than the lead time"
        wait_until(
            lambda: self.sent() >= count, timeout=self.args.timeout, interval=0.1, what="scheduled"
        )
        self.procs.stop(worker)
        lags = [arrived - due for arrived in self.received()["arrivals"].values()]
        assert len(lags) == count
        p50, p99, worst = percentile(lags, 0.5), percentile(lags, 0.99), max(lags)
        self.report.raw["scheduling_lag_s"] = {"p50": p50, "p99": p99, "max": worst}
        self.report.add(
            "schedule",
            f"lag of {count:,} due in one second, p50/p99/max s",
            f"{p50:.2f}/{p99:.2f}/{worst:.2f}",
            "",
            "",
            "p99 < 1 s",
            verdict(p99 < 1),
        )

    # --- 4. growth ----------------------------------------------------------------------

    def fetch_costs(
        self, urls: dict[str, str], fetch: str = "notifier"
    ) -> dict[str, tuple[float, float, float]]:
        """For each database of ``urls`` with one due job added: (EXPLAIN ANALYZE ms of the
        candidate search, median wall ms of a fetch, buffers the search touches).

        The databases are measured in turn, sample after sample, so that they see the
        machine alike: sub-millisecond walls move by half with whatever else runs at that
        second. ``fetch`` names the function (FETCHES): notifier's, which workers use, or
        procrastinate's own.
        """
        function, candidate_sql = FETCHES[fetch]
        plans: dict[str, list[float]] = {name: [] for name in urls}
        walls: dict[str, list[float]] = {name: [] for name in urls}
        buffers: dict[str, list[float]] = {name: [] for name in urls}
        with contextlib.ExitStack() as stack:
            connections = {}
            for name, url in urls.items():
                sql(url, DUE_JOB_SQL)
                # Its group learns of it, as the fetches between a defer and the next do.
                sql(url, "SELECT notifier.take_job_group_arrivals()")
                stack.callback(
                    sql, url, "DELETE FROM procrastinate_jobs WHERE args = '{\"due\": true}'"
                )
                connections[name] = stack.enter_context(psycopg.connect(url))
            for _ in range(25):
                for name, conn in connections.items():
                    with conn.transaction(force_rollback=True):
                        plan = conn.execute(
                            b"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + candidate_sql.encode()
                        ).fetchone()
                        assert plan is not None
                        plans[name].append(plan[0][0]["Execution Time"])
                        top = plan[0][0]["Plan"]
                        buffers[name].append(top["Shared Hit Blocks"] + top["Shared Read Blocks"])
            for _ in range(200):
                for name, conn in connections.items():
                    with conn.transaction(force_rollback=True):
                        started = time.perf_counter()
                        row = conn.execute(
                            f"SELECT id FROM {function}(ARRAY['deliveries'], NULL)".encode()
                        ).fetchone()
                        walls[name].append((time.perf_counter() - started) * 1000)
                        assert row is not None
                        assert row[0] is not None, "the due job was not found"
            for name, conn in connections.items():
                with conn.transaction(force_rollback=True):
                    plan_text = conn.execute(
                        b"EXPLAIN ANALYZE " + candidate_sql.encode()
                    ).fetchall()
                self.report.raw.setdefault("fetch_plans", []).append(
                    {f"{fetch}, {name}": [line[0] for line in plan_text]}
                )
        return {
            name: (
                statistics.median(plans[name]),
                statistics.median(walls[name]),
                statistics.median(buffers[name]),
            )
            for name in urls
        }

    def as_if_processed(self, url: str) -> None:
        """Mark the ingest's process_event jobs done, as running workers would have.

        Measuring ingest alone leaves them waiting; the fetch is measured in the steady
        state, where the only waiting jobs are the scheduled ones (and one due job), after
        the vacuum that autovacuum runs on the queue tables within a minute (migration 0008):
        otherwise tens of thousands of just-finished jobs lie dead in the fetch's index, in
        front of the due one, for both the empty and the full case.
        """
        sql(
            url,
            "UPDATE procrastinate_jobs SET status = 'succeeded' WHERE queue_name = 'events' AND status = 'todo'",
        )
        sql(url, "VACUUM ANALYZE procrastinate_jobs")
        settle(url)

    def growth(self) -> None:
        empty_queue_and_notifications(self.url)
        # The empty case: a twin database with an API of its own, measured in turn with the
        # full one so that both see the machine alike (sub-millisecond figures move by half
        # with whatever else runs at that second).
        empty_url = fresh_database("notifier_bench_empty")
        twin_api, twin_url = self.start_api_process(empty_url)
        twin_key = self.create_key(empty_url)
        rows = self.args.growth_rows
        started = time.perf_counter()
        with psycopg.connect(self.url, autocommit=True) as conn, conn.transaction():
            conn.execute(
                b"""
                INSERT INTO notifier.notifications
                    (notification_type, channel, recipient, context, send_at, status)
                SELECT 'bench.future', 'webhook', 'http://127.0.0.1:9/never', jsonb_build_object('n', n),
                       now() + interval '30 days' + n * interval '1 second', 'pending'
                FROM generate_series(1, %s) AS n
                """,
                [rows],
            )
            conn.execute(
                b"""
                INSERT INTO procrastinate_jobs (queue_name, task_name, priority, args, scheduled_at)
                SELECT 'deliveries', 'notifier.deliver', 0,
                       jsonb_build_object('notification_id', id::text), send_at
                FROM notifier.notifications WHERE notification_type = 'bench.future'
                """
            )
        sql(self.url, "VACUUM ANALYZE procrastinate_jobs, notifier.notifications")
        settle(self.url)
        self.report.raw["growth_load_seconds"] = time.perf_counter() - started
        empty_ingests, full_ingests = [], []
        for _ in range(4):
            empty_ingests.append(self.loadgen([twin_url + "/api/v1/events/"], 8, 2.0, key=twin_key))
            full_ingests.append(self.publish(8, 2.0))
        self.procs.stop(twin_api)
        empty_ingest = {"p50_ms": statistics.median(r["p50_ms"] for r in empty_ingests)}
        full_ingest = {"p50_ms": statistics.median(r["p50_ms"] for r in full_ingests)}
        for url in (empty_url, self.url):
            self.as_if_processed(url)
        costs = self.fetch_costs({"empty": empty_url, "full": self.url})
        (empty_plan, empty_wall, empty_buffers), (full_plan, full_wall, full_buffers) = (
            costs["empty"],
            costs["full"],
        )
        stock_plan, stock_wall, _ = self.fetch_costs({"full": self.url}, "stock")["full"]
        drop_database("notifier_bench_empty")
        self.report.raw["growth"] = {
            "empty": {
                "ingest": empty_ingest,
                "plan_ms": empty_plan,
                "wall_ms": empty_wall,
                "buffers": empty_buffers,
            },
            "full": {
                "ingest": full_ingest,
                "plan_ms": full_plan,
                "wall_ms": full_wall,
                "buffers": full_buffers,
            },
            "full_stock_fetch": {"plan_ms": stock_plan, "wall_ms": stock_wall},
        }
        label = f"{rows:,} pending"
        for figure, full, empty in (
            ("ingest p50 ms (8c, median of 4 runs)", full_ingest["p50_ms"], empty_ingest["p50_ms"]),
            ("fetch a due job: EXPLAIN ANALYZE ms", full_plan, empty_plan),
            ("fetch a due job: wall ms (median of 200)", full_wall, empty_wall),
        ):
            self.report.add(
                "growth",
                f"{figure}, {label} vs empty",
                f"{full:.2f}",
                f"{empty:.2f}",
                f"{full / empty:.2f}",
                "<= 1.2",
                verdict(full / empty <= 1.2),
            )
        self.report.add(
            "growth",
            f"fetch a due job: buffers touched, {label} vs empty",
            f"{full_buffers:.0f}",
            f"{empty_buffers:.0f}",
            f"{full_buffers / empty_buffers:.2f}",
        )
        self.report.add(
            "lever",
            f"fetch wall ms, {label}: notifier.fetch_job vs procrastinate's own",
            f"{full_wall:.2f}",
            f"{stock_wall:.2f}",
            f"{full_wall / stock_wall:.3f}",
        )
        empty_queue_and_notifications(self.url)

    # --- 5. memory ----------------------------------------------------------------------

    def memory(self) -> None:
        if "api_rss_after_ingest" in self.report.raw:
            # Repeat the 8-client run: the API's memory must not grow.
            self.publish(8, self.args.ingest_seconds)
            first, again = self.report.raw["api_rss_after_ingest"], self.api_rss_mb()
            self.report.add(
                "memory",
                "API RSS MB, after ingest / after a repeat",
                f"{first:.0f} / {again:.0f}",
                "",
                f"{again / first:.2f}",
                "< 150, no growth",
                verdict(again < 150 and again / first < 1.1),
            )
        if "worker_rss" in self.report.raw:
            first, again = self.report.raw["worker_rss"]
            celery = self.report.raw.get("celery_rss_1", math.nan)
            self.report.add(
                "memory",
                "worker RSS MB, after a drain / after a repeat",
                f"{first:.0f} / {again:.0f}",
                f"{celery:.0f}",
                f"{again / first:.2f}",
                "< 150, no growth",
                verdict(again < 150 and again / first < 1.1),
            )

    # --- the outbox bulk insert (bench/outbox_batch.py) ---------------------------------

    def outbox(self) -> None:
        out = subprocess.run(
            [PYTHON, "bench/outbox_batch.py", "--rows", str(self.args.outbox_rows)],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
            timeout=self.args.timeout + 120,
        )
        self.report.raw["outbox"] = out.stdout

        def figure(pattern: str) -> str:
            match = re.search(pattern, out.stdout)
            if match is None:
                raise RuntimeError(f"bench/outbox_batch.py printed no {pattern!r}:\n{out.stdout}")
            return match.group(1)

        base = float(figure(r"plain table \(baseline\)\s+([\d.]+)"))
        box = float(figure(r"notifier\.outbox\s+([\d.]+)"))
        rate = figure(r"\(([\d,]+) events/s")
        self.report.add(
            "outbox",
            f"commit ms, {self.args.outbox_rows:,}-row INSERT..SELECT",
            f"{box:.0f}",
            f"{base:.0f}",
            f"{box / base:.1f}",
        )
        self.report.add("outbox", "events processed and sent per s, 1 worker", rate)


def _answers(url: str) -> bool:
    try:
        http_get(url, timeout=2)
    except OSError:
        return False
    return True


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    memory = psutil.virtual_memory().total / 2**30
    version = scalar(make_conninfo(SERVER, dbname="postgres"), "SHOW server_version")
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB, PostgreSQL {version}, "
        f"Python {platform.python_version()}, load average before: {load}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument(
        "--api-processes",
        type=int,
        default=1,
        help="API processes, the load generator's clients spread over them",
    )
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    parser.add_argument("--ingest-seconds", type=float, default=10.0, help="per ingest run")
    parser.add_argument("--deliveries", type=int, default=20_000, help="notifications per drain")
    parser.add_argument("--scheduled", type=int, default=1_000, help="due in the same second")
    parser.add_argument("--growth-rows", type=int, default=1_000_000, help="future notifications")
    parser.add_argument("--outbox-rows", type=int, default=2_000, help="rows in one insert")
    parser.add_argument("--timeout", type=float, default=900.0, help="per drain, seconds")
    parser.add_argument("--json", type=Path, help="also write every raw figure here")
    args = parser.parse_args(argv)
    if args.quick:
        args.ingest_seconds = min(args.ingest_seconds, 3.0)
        args.deliveries = min(args.deliveries, 2_000)
        args.growth_rows = min(args.growth_rows, 100_000)
        args.outbox_rows = min(args.outbox_rows, 500)
    return args


@contextlib.contextmanager
def running(procs: Processes) -> Iterator[None]:
    try:
        yield
    finally:
        procs.stop_all()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Stopped from outside (Ctrl-C, a timeout): still stop every child process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    selected = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = set(selected) - set(WORKLOADS)
    if unknown:
        print(f"unknown workloads: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    description = machine()
    print(f"# notifier benchmark suite, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# {description}")
    report, procs = Report(), Processes()
    bench = Bench(args, report, procs)
    started = time.perf_counter()
    with running(procs):
        bench.url = fresh_database("notifier_bench")
        bench.start_receiver()
        bench.start_api()
        bench.generator_ceiling()
        for workload in WORKLOADS:
            if workload in selected:
                print(f"## {workload}", flush=True)
                getattr(bench, workload)()
        bench.memory()
    print()
    print(f"# {description}; suite took {time.perf_counter() - started:.0f} s")
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.raw, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
