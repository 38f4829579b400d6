"""The benchmark suite: every workload of docs/performance.md beside its baseline, one table.

Starts everything it needs on loopback (the API, workers, a webhook receiver, Celery
workers, pg-boss workers, pgbench, wrk) against scratch databases on the PostgreSQL at
NOTIFIER_BENCH_SERVER (default postgresql://postgres@127.0.0.1:5432) and the Redis at
BENCH_REDIS_URL (default redis://127.0.0.1:6379/15, the Celery baseline only). Every
workload is bounded in time. The service runs at its default log level (INFO), its logs
written to files (--logs; a temporary directory by default, removed after a good run).

    uv run nox -s bench                 # the full suite (about 40 minutes on a quiet machine)
    uv run nox -s bench -- --quick      # small sizes, for development
    uv run python -m bench.suite --only ingest,delivery --deliveries 5000
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString

import psutil
import psycopg
from cryptography.fernet import Fernet
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench import bulk, code_sql, wrk
from bench.cpu import CpuWatch, postmaster_pid
from bench.loadgen import EVENT
from bench.noop_worker import NOOP_QUEUE, NOOP_TASK
from notifier import migrate
from notifier.queue import DELIVER_TASK, DELIVERIES_QUEUE
from notifier.queue import jobs as queue_jobs
from notifier.queue import tables as queue_tables
from notifier.tenancy import Scope

ROOT = Path(__file__).resolve().parent.parent
PGBOSS_DIR = ROOT / "bench" / "pgboss"
# A target date no burst reaches: the burst's probe of the API's creation rate.
YEAR_AHEAD = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)).isoformat()
SERVER = os.environ.get("NOTIFIER_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
PYTHON = sys.executable
DATABASE = "notifier_bench"
PGBOSS_DATABASE = "notifier_bench_pgboss"
WORKLOADS = ("ingest", "delivery", "scheduling", "growth", "outbox")
# The service's default log level, set explicitly so that NOTIFIER_LOG_LEVEL in the
# caller's environment cannot change what is measured.
LOG_LEVEL = "INFO"
# The events the load generator and wrk publish (user 42); pgbench publishes the same
# payload under a type of the same length, so that each side's events can be counted.
API_EVENTS_SQL = """
SELECT count(*) FROM notifier.events WHERE payload @> '{"user_id": 42}' AND type = 'bench.created'
"""
PGBENCH_EVENT_TYPE = "bench.pgbench"
# The due job a fetch must find (removed after the measurement).
DUE_JOB = queue_jobs.JobToDefer(task=DELIVER_TASK, args={"due": True})
# Sockets a pg-boss worker process sends through (bench/pgboss/work.js, PGBOSS_MAX_SOCKETS).
PGBOSS_SOCKETS = 32
# Where notifier's webhook body carries the notification's id; the pg-boss peer puts its
# job's id there (bench/pgboss/work.js replaces the marker).
ID_MARKER = "{{id}}"


# The key of stored secrets for the processes this benchmark starts (one per run).
BENCH_SECRETS_KEYS = Fernet.generate_key().decode()


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
            f"  {row.workload:<11} {row.figure:<60} {row.notifier:>15} {row.baseline:>15}"
            f" {row.ratio:>11} {row.met:>3}",
            flush=True,
        )

    def skip(self, workload: str, why: str) -> None:
        """A row that could not be measured, and why: printed, and kept in the table."""
        self.add(workload, f"skipped: {why}", "", "", "", "", "")
        self.raw.setdefault("skipped", []).append(f"{workload}: {why}")

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


def pair(first: float, second: float, fmt: str = ",.0f") -> str:
    return f"{first:{fmt}} / {second:{fmt}}"


def ratio_text(ours: float, theirs: float) -> str:
    """``ours / theirs`` for the table; blank where the baseline measured nothing (a drain
    shorter than the CPU sampling interval reads no CPU at all)."""
    return f"{ours / theirs:.2f}" if theirs else ""


# Compiles the packages of the interpreter running it, and the sources in argv[1].
COMPILE_SCRIPT = """
import compileall, sys, sysconfig
paths = sysconfig.get_paths()
for directory in dict.fromkeys([paths["purelib"], paths["platlib"], sys.argv[1]]):
    compileall.compile_dir(directory, quiet=2, workers=0)
"""


def compile_bytecode(python: str = PYTHON, checkout: Path = ROOT) -> float:
    """Compile the packages of ``python`` (a venv's interpreter) and ``checkout``'s sources
    to bytecode where it is missing or stale; the seconds it took.

    The processes the suite starts then load modules as the image's do (the Containerfile
    compiles at build, UV_COMPILE_BYTECODE=1) instead of compiling about 900 of them from
    source at every start: uv does not compile an environment by default, and where
    PYTHONDONTWRITEBYTECODE is set (as on the development machine) nothing ever caches
    them, which cost each worker about 2 s of CPU before its first delivery
    (docs/performance.md, "Worker start-up"). Already compiled files are only looked at.
    """
    started = time.perf_counter()
    subprocess.run([python, "-c", COMPILE_SCRIPT, str(checkout / "src")], check=True)
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def drop_database(name: str) -> None:
    with connect(make_conninfo(SERVER, dbname="postgres")) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


def fresh_database(name: str, *, migrated: bool = True) -> str:
    """A new scratch database (migrated to head unless told otherwise); its URL."""
    url = make_conninfo(SERVER, dbname=name)
    drop_database(name)
    if migrated:
        migrate.create_database_if_missing(url)
        migrate.upgrade(url)
    else:
        with connect(make_conninfo(SERVER, dbname="postgres")) as admin:
            admin.execute(f"CREATE DATABASE {name}".encode())
    return url


def existing_database(name: str) -> str:
    """The scratch database ``name``, kept from an earlier run if there is one, else new."""
    url = make_conninfo(SERVER, dbname=name)
    migrate.create_database_if_missing(url)
    migrate.upgrade(url)
    return url


def connect(url: str, *, patience: float = 60.0) -> psycopg.Connection[Any]:
    """An autocommit connection, waiting up to ``patience`` seconds for a free slot: on a
    shared server other clients may hold every connection for a moment."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError as exc:
            if "too many clients" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def sql(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with connect(url) as conn:
        cursor = conn.execute(statement.encode() if params is None else statement, params)
        return cursor.fetchall() if cursor.description else []


def scalar(url: str, statement: str, params: Any = None) -> Any:
    return sql(url, statement, params)[0][0]


def wal_position(url: str) -> int:
    """Where the server's WAL ends now, in bytes from its start. WAL is the cluster's, not a
    database's: what other databases write meanwhile counts too, so the per-unit figures
    are for a quiet server."""
    return int(scalar(url, "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"))


def add_due_job(url: str) -> None:
    """Defer :data:`DUE_JOB`, as the service defers a job."""
    sql(url, queue_jobs.DEFER_JOBS_SQL, queue_jobs.defer_jobs_parameters([DUE_JOB]))


def remove_due_job(url: str) -> None:
    sql(url, f"DELETE FROM {queue_tables.JOBS} WHERE args = '{{\"due\": true}}'")


def defer_deliveries_sql(
    where: LiteralString, args: LiteralString, scheduled_at: LiteralString = "NULL"
) -> str:
    """A statement deferring, through the queue adapter's defer, a deliver job for each
    pending notification without one that ``where`` selects (on ``notifications``), with
    ``args`` and ``scheduled_at`` (SQL over its columns), each then its notification's job."""
    defer = queue_jobs.defer_jobs_select(
        rows="pending",
        queue="'" + DELIVERIES_QUEUE + "'",
        task="'" + DELIVER_TASK + "'",
        args=args,
        scheduled_at=scheduled_at,
        order_by="pending.id",
    )
    return f"""
    WITH pending AS (
        SELECT * FROM notifier.notifications AS notifications
        WHERE status = 'pending' AND job_id IS NULL AND ({where})
    ), deferred AS ({defer}),
    -- The defer returns the job ids in its rows' order: paired with the ids in that order.
    ordered AS (SELECT array_agg(id ORDER BY id) AS ids FROM pending)
    UPDATE notifier.notifications AS n SET job_id = paired.job_id
    FROM deferred, ordered, unnest(deferred.job_ids, ordered.ids) AS paired (job_id, id)
    WHERE n.id = paired.id
    """


# What a worker logs when it puts deliveries off for a host slot
# (notifier.notifications.host_slots.put_off; tests/notifications/test_host_slots.py reads
# it too): their jobs are deleted once they succeed, so the logs are what is left to count.
PUT_OFF_LOG = re.compile(rb"(\d+) notification\(s\) waited for a host slot")


def put_offs_logged(log: Path, offset: int) -> int:
    """Deliveries put off for a host slot, as logged in ``log`` past ``offset``."""
    if not log.exists():
        return 0
    with log.open("rb") as file:
        file.seek(offset)
        return sum(int(count) for count in PUT_OFF_LOG.findall(file.read()))


def empty_queue_and_notifications(url: str) -> None:
    sql(url, f"TRUNCATE {queue_tables.JOBS}, notifier.notifications CASCADE")


def settle(url: str) -> None:
    """Write out what the last steps dirtied before measuring, so that the checkpoint a bulk
    load brings on (a million rows are gigabytes of WAL) does not land in the measurement."""
    sql(url, "CHECKPOINT")


def analyze(url: str, tables: str = f"{queue_tables.JOBS}, notifier.notifications") -> None:
    """Fresh statistics after a bulk load, as autoanalyze would give within a minute.

    Without them the planner takes the empty table's statistics for the truth and plans
    the fetch as a sort of every waiting job, per fetch (see docs/performance.md).
    """
    sql(url, f"ANALYZE {tables}")


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
    """Child processes, all stopped on exit; what each prints goes to a file in ``logs``."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        log: str = "bench",
        cwd: Path = ROOT,
    ) -> subprocess.Popen[bytes]:
        with (self.logs / f"{log}.log").open("ab") as out:
            child = subprocess.Popen(
                argv,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
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
class Drain:
    """``count`` jobs worked off: when the workers were started, the first and the last
    completion (arrival at the receiver, or a no-op job's start and finish), and the CPU
    the server and the workers used meanwhile."""

    count: int
    started: float
    first: float
    last: float
    watch: CpuWatch
    # Mean size of the bodies POSTed, for drains timed at the receiver.
    body_bytes: float = math.nan
    # WAL the server wrote from the workers' start to the last completion.
    wal_bytes: float = math.nan
    # Webhook deliveries put off for a host slot (notifier.notifications.host_slots): no
    # attempt made, due again a moment later. Each wait of a delivery counts.
    put_offs: int = 0

    @property
    def from_first(self) -> float:
        """Jobs per second from the first completion to the last: start-up left out."""
        return (self.count - 1) / (self.last - self.first)

    @property
    def from_start(self) -> float:
        """Jobs per second from starting the workers to the last completion."""
        return self.count / (self.last - self.started)

    def cpu_us(self) -> dict[str, float]:
        """Microseconds of CPU per job, first completion to last: the PostgreSQL server
        (backends of the database and background processes), the backends alone, the
        workers."""
        used = self.watch.between(self.first, self.last)
        jobs = max(1, self.count - 1)
        return {
            "server": used.server / jobs * 1e6,
            "backends": used.backends / jobs * 1e6,
            "workers": used.processes / jobs * 1e6,
        }

    def raw(self) -> dict[str, Any]:
        whole = self.watch.between(self.started, self.last)
        return {
            "count": self.count,
            "per_second_from_first": self.from_first,
            "per_second_from_start": self.from_start,
            "start_to_first_s": self.first - self.started,
            "wal_bytes_per_job": self.wal_bytes / self.count,
            "host_slot_put_offs": self.put_offs,
            "cpu_us_per_job_first_to_last": self.cpu_us(),
            "cpu_us_per_job_from_start": {
                "server": whole.server / self.count * 1e6,
                "backends": whole.backends / self.count * 1e6,
                "workers": whole.processes / self.count * 1e6,
            },
        }


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
    postmaster: int = 0
    # One connection per database for the suite's own polling during a measurement; its
    # backend is left out of the CPU figures.
    monitors: dict[str, psycopg.Connection[Any]] = field(default_factory=dict)
    # notifier's webhook body, as the receiver got it (the id replaced by ID_MARKER), and
    # its headers: what the pg-boss peer sends.
    webhook_sample: dict[str, Any] = field(default_factory=dict)
    pgboss_ready: bool | None = None

    # --- shared parts -------------------------------------------------------------------

    def notifier_env(self, **extra: str) -> dict[str, str]:
        """A worker's environment: default settings but the database and ``extra``."""
        return {
            "NOTIFIER_DATABASE_URL": self.url,
            "NOTIFIER_SECRETS_KEYS": BENCH_SECRETS_KEYS,
            # Four workers of concurrency 10 each, plus the API, within max_connections.
            "NOTIFIER_DATABASE_POOL_MAX_SIZE": "13",
            # The receiver is on loopback, which webhooks may not reach by default.
            "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
            **extra,
        }

    def start_worker(self, log: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """A ``notifier worker`` at the default log level."""
        return self.procs.start(
            *(PYTHON, "-m", "notifier", "--log-level", LOG_LEVEL, "worker", *args),
            env=self.notifier_env(**env),
            log=log,
        )

    def monitor(self, url: str) -> psycopg.Connection[Any]:
        if url not in self.monitors:
            self.monitors[url] = connect(url)
        return self.monitors[url]

    def count(self, url: str, query: str, params: Any = None) -> int:
        """``query``'s single number, read on the suite's monitoring connection."""
        row = self.monitor(url).execute(query.encode() if params is None else query, params)
        found = row.fetchone()
        assert found is not None
        return int(found[0])

    def cpu_watch(self, url: str, processes: list[int] | None = None) -> CpuWatch:
        """A CPU watch of the server's processes working for ``url``'s database (but the
        suite's monitoring connection) and of ``processes``; not yet started."""
        database = str(conninfo_to_dict(url)["dbname"])
        monitor_pid = self.monitor(url).info.backend_pid
        return CpuWatch(self.postmaster, [database], processes or [], exclude=[monitor_pid])

    def start_receiver(self) -> None:
        port = free_port()
        self.procs.start(PYTHON, "bench/receiver.py", str(port), log="receiver")
        self.receiver_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(self.receiver_url + "/reset"), timeout=30, what="receiver")

    def received(self) -> dict[str, Any]:
        stats: dict[str, Any] = json.loads(http_get(self.receiver_url + "/stats", timeout=30))
        return stats

    def reset_receiver(self) -> None:
        http_get(self.receiver_url + "/reset")

    def start_api(self) -> None:
        """``--api-processes`` API processes, and an events:write key for the load generator."""
        for _ in range(self.args.api_processes):
            api, url = self.start_api_process(self.url)
            self.apis.append(api)
            self.api_urls.append(url)
        self.api_key = self.create_key(self.url)

    def start_api_process(self, database_url: str) -> tuple[subprocess.Popen[bytes], str]:
        """An API process on ``database_url`` at the default log level; its URL once it answers."""
        port = free_port()
        api = self.procs.start(
            *(PYTHON, "-m", "notifier", "--log-level", LOG_LEVEL, "api", "--port", str(port)),
            env={
                "NOTIFIER_DATABASE_URL": database_url,
                "NOTIFIER_SECRETS_KEYS": BENCH_SECRETS_KEYS,
                # Notifications created through the API may name the loopback receiver.
                "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
            },
            log="api",
        )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url + "/health"), timeout=60, what="API")
        return api, url

    def create_key(self, database_url: str, scope: Scope = Scope.EVENTS_WRITE) -> str:
        """A ``scope`` key of the default tenant, limited far above what the load reaches."""
        created = subprocess.run(
            [
                *(PYTHON, "-m", "notifier", "keys", "create", "--scope", str(scope)),
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
        *,
        body: str | None = None,
        requests: int | None = None,
    ) -> dict[str, Any]:
        extra = []
        if body is not None:
            extra += ["--body", body]
        if requests is not None:
            extra += ["--requests", str(requests)]
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
                *extra,
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
        with connect(self.url) as conn, conn.transaction():
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
                    defer_deliveries_sql(
                        "tenant_id = %s",
                        args="jsonb_build_object('notification_id', id::text, 'tenant_id', tenant_id)",
                        # ``at`` is the bench's own SQL expression.
                        scheduled_at=f"CASE WHEN {at} > now() THEN {at} END",
                    ).encode(),
                    [tenant],
                )
        analyze(self.url)

    def sent(self) -> int:
        return self.count(
            self.url, "SELECT count(*) FROM notifier.notifications WHERE status = 'sent'"
        )

    # --- 1. ingest ----------------------------------------------------------------------

    def stored_events(self) -> int:
        return int(scalar(self.url, API_EVENTS_SQL))

    def pgbench(self, clients: int, seconds: float) -> dict[str, float]:
        """pgbench running the statement a publish runs (``code_sql.publish_script``),
        prepared, as psycopg prepares the API's statements after their fifth run."""
        pgbench = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
        if "pgbench_script" not in self.report.raw:
            self.report.raw["pgbench_script"] = code_sql.publish_script(
                self.url, PGBENCH_EVENT_TYPE, EVENT["payload"]
            )
        script_text = self.report.raw["pgbench_script"]
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp, "publish.sql")
            script.write_text(script_text)
            info = conninfo_to_dict(self.url)
            wal_before = wal_position(self.url)
            watch = self.cpu_watch(self.url).start()
            started = time.time()
            out = subprocess.run(
                [
                    pgbench,
                    "-n",
                    "-M",
                    "prepared",
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
            ended = time.time()
            watch.stop()
            wal_bytes = wal_position(self.url) - wal_before
            latencies = [
                int(line.split()[2]) / 1000
                for log in Path(tmp).glob("log*")
                for line in log.read_text().splitlines()
            ]
        match = re.search(r"tps = ([\d.]+) \(without initial", out.stdout)
        assert match, out.stdout
        failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
        assert failed is None or failed.group(1) == "0", out.stdout
        done = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
        assert done, out.stdout
        transactions = int(done.group(1))
        return {
            "per_second": float(match.group(1)),
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
            "transactions": transactions,
            "server_cpu_us": watch.between(started, ended).server / transactions * 1e6,
            "wal_bytes": wal_bytes / transactions,
        }

    def measured(self, run: Callable[[], dict[str, Any]], accepted: str) -> dict[str, Any]:
        """``run`` (a load against the API) with the CPU the API processes and the server
        spent per accepted event (``run()[accepted]``), and every accepted event checked
        stored (all of them, and at most one per client more: wrk counts no answer it cut
        off when its time was up, though the API still stores that event)."""
        before = self.stored_events()
        wal_before = wal_position(self.url)
        watch = self.cpu_watch(self.url, [api.pid for api in self.apis]).start()
        started = time.time()
        result = run()
        ended = time.time()
        watch.stop()
        wal_bytes = wal_position(self.url) - wal_before
        stored = self.stored_events() - before
        ok = int(result[accepted])
        slack = result.get("cut_off", 0)
        assert ok <= stored <= ok + slack, f"{ok} events accepted, {stored} stored"
        used = watch.between(started, ended)
        result["api_cpu_us"] = used.processes / max(1, ok) * 1e6
        result["server_cpu_us"] = used.server / max(1, ok) * 1e6
        result["wal_bytes"] = wal_bytes / max(1, ok)
        result["stored"] = stored
        return result

    def ingest(self) -> None:
        seconds = self.args.ingest_seconds
        for clients in (1, 8, 32):
            ours = self.measured(functools.partial(self.publish, clients, seconds), "ok")
            base = self.pgbench(clients, seconds)
            self.report.raw[f"ingest_{clients}"] = {"notifier": ours, "pgbench": base}
            ratio = ours["per_second"] / base["per_second"]
            name = f"ingest {clients:>2}c"
            self.report.add(
                name,
                f"events/s, {len(self.apis)} API process{'es' if len(self.apis) > 1 else ''},"
                " bench generator (baseline: pgbench same SQL, tps)",
                f"{ours['per_second']:,.0f}",
                f"{base['per_second']:,.0f}",
                f"{ratio:.2f}",
                ">= 1.0 at 8c" if clients == 8 else "",
                verdict(ratio >= 1.0) if clients == 8 else "",
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
            if clients == 8:
                self.ingest_wrk(clients, seconds, ours, base)
                if len(self.apis) > 1:
                    # What one process does alone: the cost of a request, without the spread.
                    alone = self.measured(
                        functools.partial(self.publish, clients, seconds, processes=1), "ok"
                    )
                    self.report.raw["ingest_8_one_process"] = alone
                    self.report.add(
                        name,
                        "events/s, one API process; p50 / p99 ms; bad",
                        f"{alone['per_second']:,.0f}; {alone['p50_ms']:.1f} /"
                        f" {alone['p99_ms']:.1f}; {alone['errors']}",
                        f"{base['per_second']:,.0f}",
                        f"{alone['per_second'] / base['per_second']:.2f}",
                    )
        self.report.raw["api_rss_after_ingest"] = self.api_rss_mb()

    def ingest_wrk(
        self, clients: int, seconds: float, ours: dict[str, Any], base: dict[str, Any]
    ) -> None:
        """The 8-client ingest again with wrk as the load generator, and what a request
        costs the API and the server, by either generator."""
        name = f"ingest {clients:>2}c"
        theirs: dict[str, Any] | None = None
        if not wrk.available():
            self.report.skip(name, "wrk not installed (Debian: apt-get install wrk)")
        elif len(self.apis) > 1:
            self.report.skip(name, "wrk posts to one URL: run it with --api-processes 1")
        else:
            url = self.api_urls[0] + "/api/v1/events/"
            theirs = self.measured(
                lambda: wrk.run(
                    url,
                    clients,
                    seconds,
                    body=json.dumps(EVENT),
                    headers={
                        "Content-Type": "application/json",
                        "Authorization": f"Bearer {self.api_key}",
                    },
                ),
                "ok",
            )
            self.report.raw[f"ingest_{clients}"]["wrk"] = theirs
            ratio = theirs["per_second"] / base["per_second"]
            self.report.add(
                name,
                "events/s, 1 API process, wrk (baseline: pgbench same SQL, tps)",
                f"{theirs['per_second']:,.0f}",
                f"{base['per_second']:,.0f}",
                f"{ratio:.2f}",
                ">= 1.0",
                verdict(ratio >= 1.0),
            )
            self.report.add(
                name,
                "wrk p50 / p99 latency, ms",
                f"{theirs['p50_ms']:.1f} / {theirs['p99_ms']:.1f}",
                f"{base['p50_ms']:.1f} / {base['p99_ms']:.1f}",
                "",
                "p99 < 50",
                verdict(theirs["p99_ms"] < 50),
            )
            self.report.add(
                name,
                "wrk responses / bad (not 2xx, socket errors)",
                f"{theirs['requests']:,} / {theirs['errors']}",
                "",
                "",
                "0 bad",
                verdict(theirs["errors"] == 0),
            )
        cpu = [ours["api_cpu_us"]] + ([theirs["api_cpu_us"]] if theirs else [])
        server = [ours["server_cpu_us"]] + ([theirs["server_cpu_us"]] if theirs else [])
        label = "bench generator / wrk" if theirs else "bench generator"
        self.report.add(
            name,
            f"API CPU us per accepted event ({label})",
            " / ".join(f"{value:.0f}" for value in cpu),
            "",
            "",
            "<= 350",
            verdict(max(cpu) <= 350),
        )
        self.report.add(
            name,
            f"PostgreSQL CPU us per event ({label}; baseline: pgbench per tx)",
            " / ".join(f"{value:.0f}" for value in server),
            f"{base['server_cpu_us']:.0f}",
            ratio_text(server[0], base["server_cpu_us"]),
        )
        wal = [ours["wal_bytes"]] + ([theirs["wal_bytes"]] if theirs else [])
        self.report.add(
            name,
            f"WAL bytes per event ({label}; baseline: pgbench per tx)",
            " / ".join(f"{value:,.0f}" for value in wal),
            f"{base['wal_bytes']:,.0f}",
            ratio_text(wal[0], base["wal_bytes"]),
        )

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
        if wrk.available():
            theirs = wrk.run(
                self.receiver_url + "/hooks",
                8,
                min(5.0, self.args.ingest_seconds),
                body=json.dumps(EVENT),
                headers={"Content-Type": "application/json"},
            )
            self.report.add(
                "tools", "wrk -> bare receiver, req/s (8c)", f"{theirs['per_second']:,.0f}"
            )
        self.reset_receiver()

    # --- 2. delivery --------------------------------------------------------------------

    def arrivals(self, count: int) -> tuple[float, float, float]:
        """The first and the last arrival at the receiver, checking every one came, once;
        and the mean size of the bodies."""
        received = self.received()
        assert received["count"] == count, (received["count"], count)
        arrivals = sorted(received["arrivals"].values())
        assert len(arrivals) == count, "a notification arrived twice"
        return arrivals[0], arrivals[-1], received["bytes"] / count

    def drain_notifier(self, processes: int, count: int, **env: str) -> tuple[Drain, list[int]]:
        """``processes`` workers delivering ``count`` due notifications to the receiver.

        Timed at the receiver, from the first arrival to the last, and from the start of the
        worker processes (imports, connecting) to the last arrival; the same for every
        contender.
        """
        empty_queue_and_notifications(self.url)
        self.reset_receiver()
        self.seed_due(count)
        log = self.procs.logs / f"worker-{processes}p.log"
        log_offset = log.stat().st_size if log.exists() else 0
        wal_before = wal_position(self.url)
        watch = self.cpu_watch(self.url).start()
        started = time.time()
        workers = [
            self.start_worker(f"worker-{processes}p", "--queue", "deliveries", **env)
            for _ in range(processes)
        ]
        for worker in workers:
            watch.watch(worker.pid)
        wait_until(
            lambda: self.sent() >= count, timeout=self.args.timeout, interval=0.1, what="delivery"
        )
        watch.stop()
        wal_bytes = wal_position(self.url) - wal_before
        if not self.webhook_sample:
            self.keep_webhook_sample()
        first, last, body_bytes = self.arrivals(count)
        put_offs = put_offs_logged(log, log_offset)
        drain = Drain(count, started, first, last, watch, body_bytes, wal_bytes, put_offs)
        return drain, [w.pid for w in workers]

    def keep_webhook_sample(self) -> None:
        """notifier's webhook as the receiver got it: what the pg-boss peer sends."""
        sample = json.loads(http_get(self.receiver_url + "/sample"))
        notification_id = json.loads(sample["body"])["data"]["notification_id"]
        self.webhook_sample = {
            "body": sample["body"].replace(notification_id, ID_MARKER),
            "user_agent": sample["headers"].get("user-agent", ""),
            "headers": sorted(sample["headers"]),
        }
        self.report.raw["webhook_sample"] = self.webhook_sample

    def drain_noop(self, processes: int, count: int) -> Drain:
        """Stock procrastinate running ``count`` no-op jobs: first start to last finish."""
        empty_queue_and_notifications(self.url)
        sql(
            self.url,
            queue_jobs.defer_jobs_select(
                rows="generate_series(1, %s)",
                queue="'" + NOOP_QUEUE + "'",
                task="'" + NOOP_TASK + "'",
                args="'{}'",
            ),
            [count],
        )
        analyze(self.url)
        watch = self.cpu_watch(self.url).start()
        started = time.time()
        workers = [
            self.procs.start(PYTHON, "bench/noop_worker.py", self.url, log="noop")
            for _ in range(processes)
        ]
        for worker in workers:
            watch.watch(worker.pid)

        def done() -> bool:
            return (
                self.count(
                    self.url, f"SELECT count(*) FROM {queue_tables.JOBS} WHERE status = 'succeeded'"
                )
                >= count
            )

        wait_until(done, timeout=self.args.timeout, interval=0.1, what="no-op drain")
        watch.stop()
        for worker in workers:
            self.procs.stop(worker)
        first, last = sql(
            self.url,
            "SELECT extract(epoch FROM min(at) FILTER (WHERE type = 'started')),"
            " extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded'))"
            f" FROM {queue_tables.JOB_EVENTS}",
        )[0]
        return Drain(count, started, float(first), float(last), watch)

    def drain_celery(self, processes: int, count: int) -> Drain:
        """Celery prefork workers delivering ``count`` queued tasks, timed at the receiver."""
        from bench import celery_app  # noqa: PLC0415 - only the Celery baseline needs it

        celery_app.app.conf.broker_url = REDIS
        empty_queue_and_notifications(self.url)
        self.reset_receiver()
        celery_app.app.control.purge()
        self.seed_due(count, jobs=False)
        ids = [row[0] for row in sql(self.url, "SELECT id::text FROM notifier.notifications")]
        with celery_app.app.producer_or_acquire() as producer:
            for notification_id in ids:
                celery_app.deliver.apply_async((notification_id,), producer=producer)
        watch = self.cpu_watch(self.url).start()
        started = time.time()
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
            log="celery",
        )
        watch.watch(worker.pid)
        wait_until(
            lambda: self.sent() >= count,
            timeout=self.args.timeout,
            interval=0.1,
            what="Celery drain",
        )
        watch.stop()
        self.report.raw[f"celery_rss_{processes}"] = rss_mb(worker.pid)
        self.procs.stop(worker)
        first, last, body_bytes = self.arrivals(count)
        return Drain(count, started, first, last, watch, body_bytes)

    # --- the pg-boss peer (bench/pgboss) ------------------------------------------------

    def pgboss_available(self) -> bool:
        """Whether the pg-boss peer can run: Node 20 or later, its packages installed by
        ``npm ci`` (into bench/pgboss/node_modules) unless they are already, a database."""
        if self.pgboss_ready is not None:
            return self.pgboss_ready
        self.pgboss_ready = False
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            self.report.skip("delivery", "pg-boss rows: Node.js and npm not installed")
            return False
        version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
        major = int(version.stdout.strip().lstrip("v").split(".")[0])
        if major < 20:
            self.report.skip("delivery", f"pg-boss rows: Node {major}, pg-boss 10 needs 20")
            return False
        locked = json.loads((PGBOSS_DIR / "package-lock.json").read_text())
        wanted = locked["packages"]["node_modules/pg-boss"]["version"]
        installed = PGBOSS_DIR / "node_modules" / "pg-boss" / "package.json"
        if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=PGBOSS_DIR,
                check=True,
                capture_output=True,
                timeout=600,
            )
        self.report.raw["pgboss"] = {"version": wanted, "node": version.stdout.strip()}
        fresh_database(PGBOSS_DATABASE, migrated=False)
        self.pgboss_ready = True
        return True

    def drain_pgboss(self, mode: str, processes: int, count: int) -> Drain:
        """``processes`` pg-boss worker processes working off ``count`` jobs of a queue of
        their own: ``noop`` (timed from the first job's start to the last one's completion)
        or ``http`` (each job POSTs notifier's webhook body, timed at the receiver)."""
        url = make_conninfo(SERVER, dbname=PGBOSS_DATABASE)
        queue = f"bench_{mode}_{processes}p_{len(self.report.raw.setdefault('pgboss_runs', []))}"
        node = shutil.which("node") or "node"
        subprocess.run(
            [node, "produce.js", url_for_node(url), queue, str(count)],
            cwd=PGBOSS_DIR,
            check=True,
            capture_output=True,
            timeout=self.args.timeout,
        )
        sql(url, "ANALYZE pgboss.job")
        argv = [node, "work.js", url_for_node(url), queue, mode]
        if mode == "http":
            body = Path(self.procs.logs, "pgboss-body.json")
            body.write_text(self.webhook_sample["body"])
            argv += [self.receiver_url + "/hooks", str(body)]
        self.reset_receiver()
        wal_before = wal_position(url)
        watch = self.cpu_watch(url).start()
        started = time.time()
        workers = [
            self.procs.start(
                *argv,
                cwd=PGBOSS_DIR,
                env={"PGBOSS_USER_AGENT": self.webhook_sample.get("user_agent", "")},
                log=f"pgboss-{mode}",
            )
            for _ in range(processes)
        ]
        for worker in workers:
            watch.watch(worker.pid)
        completed = "SELECT count(*) FROM pgboss.job WHERE name = %s AND state = 'completed'"
        wait_until(
            lambda: self.count(url, completed, [queue]) >= count,
            timeout=self.args.timeout,
            interval=0.1,
            what=f"pg-boss {mode} drain",
        )
        watch.stop()
        wal_bytes = wal_position(url) - wal_before
        for worker in workers:
            self.procs.stop(worker)
        self.report.raw["pgboss_runs"].append(queue)
        if mode == "http":
            first, last, body_bytes = self.arrivals(count)
            return Drain(count, started, first, last, watch, body_bytes, wal_bytes)
        first, last = sql(
            url,
            "SELECT extract(epoch FROM min(started_on)), extract(epoch FROM max(completed_on))"
            " FROM pgboss.job WHERE name = %s",
            [queue],
        )[0]
        return Drain(count, started, float(first), float(last), watch, wal_bytes=wal_bytes)

    def compare(
        self, name: str, figure: str, ours: Drain, base: Drain, target: float | None
    ) -> None:
        """A rate row: from the first completion / from the workers' start, both ways."""
        ratios = (ours.from_first / base.from_first, ours.from_start / base.from_start)
        self.report.add(
            name,
            figure,
            pair(ours.from_first, ours.from_start),
            pair(base.from_first, base.from_start),
            pair(*ratios, fmt=".2f"),
            f">= {target}" if target is not None else "",
            verdict(min(ratios) >= target) if target is not None else "",
        )

    def delivery(self) -> None:
        count = self.args.deliveries
        drains: dict[str, dict[int, Drain]] = {}
        for processes in (1, 2, 4):
            ours, pids = self.drain_notifier(processes, count)
            drains.setdefault("notifier", {})[processes] = ours
            if processes == 1:
                # Memory: the same worker drains a second batch; its RSS must not grow.
                rss_first = rss_mb(pids[0])
                empty_queue_and_notifications(self.url)
                self.reset_receiver()
                self.seed_due(count)
                wait_until(
                    lambda: self.sent() >= count,
                    timeout=self.args.timeout,
                    interval=0.1,
                    what="repeat",
                )
                self.report.raw["worker_rss"] = [rss_first, rss_mb(pids[0])]
                first, last, _ = self.arrivals(count)
                self.report.raw["repeat_drain_per_second"] = (count - 1) / (last - first)
            for child in [c for c in self.procs.children if c.pid in pids]:
                self.procs.stop(child)
            runs = {"default settings": ours}
            if processes <= 2:
                # pg-boss's worker sends through up to PGBOSS_SOCKETS sockets per process;
                # notifier's default caps a host at 8 requests in flight across all workers.
                # The same concurrency to the receiver, as a row of its own.
                sockets = str(PGBOSS_SOCKETS * processes)
                equal, pids = self.drain_notifier(
                    processes, count, NOTIFIER_WEBHOOK_MAX_IN_FLIGHT_PER_HOST=sockets
                )
                drains.setdefault("notifier_pgboss_concurrency", {})[processes] = equal
                runs[f"MAX_IN_FLIGHT_PER_HOST={sockets} as pg-boss"] = equal
                for child in [c for c in self.procs.children if c.pid in pids]:
                    self.procs.stop(child)
            for label, drain in runs.items():
                self.report.add(
                    f"delivery {processes}p",
                    f"deliveries put off for a host slot (no attempt), {label}",
                    f"{drain.put_offs:,}",
                    "",
                    f"{drain.put_offs / count:.3f}/n",
                    "",
                    "",
                )
            one_by_one, pids = self.drain_notifier(
                processes, count, NOTIFIER_DELIVERY_BATCH_SIZE="1"
            )
            drains.setdefault("notifier_unbatched", {})[processes] = one_by_one
            for child in [c for c in self.procs.children if c.pid in pids]:
                self.procs.stop(child)
            noop = drains.setdefault("noop", {})[processes] = self.drain_noop(processes, count)
            celery = drains.setdefault("celery", {})[processes] = self.drain_celery(
                processes, count
            )
            name = f"delivery {processes}p"
            self.compare(
                name,
                "notif/s (first arrival / worker start), default batches,"
                " vs procrastinate no-op ceiling",
                ours,
                noop,
                0.7,
            )
            self.compare(
                name,
                "notif/s, batching off (NOTIFIER_DELIVERY_BATCH_SIZE=1),"
                " vs procrastinate no-op ceiling",
                one_by_one,
                noop,
                0.7,
            )
            self.compare(name, "notif/s vs Celery + Redis (prefork)", ours, celery, 1.0)
            if processes <= 2 and self.pgboss_available():
                self.versus_pgboss(name, processes, count, runs, drains)
        self.report.raw["delivery"] = {
            contender: {processes: drain.raw() for processes, drain in runs.items()}
            for contender, runs in drains.items()
        }
        self.report.raw["delivery_processes"] = sorted(drains["notifier"])
        self.fetch_lever(count)

    def versus_pgboss(
        self,
        name: str,
        processes: int,
        count: int,
        runs: dict[str, Drain],
        drains: dict[str, dict[int, Drain]],
    ) -> None:
        """notifier against pg-boss doing the same HTTP work, and pg-boss's no-op ceiling:
        one set of rows per notifier drain in ``runs`` (by label: default settings, and
        the same concurrency to the receiver as pg-boss)."""
        http = drains.setdefault("pgboss_http", {})[processes] = self.drain_pgboss(
            "http", processes, count
        )
        noop = drains.setdefault("pgboss_noop", {})[processes] = self.drain_pgboss(
            "noop", processes, count
        )
        for label, ours in runs.items():
            self.versus_pgboss_http(name, label, count, ours, http)
        ours = runs["default settings"]
        self.compare(name, "deliveries/s vs pg-boss 10 no-op ceiling", ours, noop, None)
        if processes == 1:
            self.report.add(
                "delivery",
                "webhook body bytes per POST, notifier vs pg-boss (same receiver)",
                f"{ours.body_bytes:.0f}",
                f"{http.body_bytes:.0f}",
                ratio_text(ours.body_bytes, http.body_bytes),
            )

    def versus_pgboss_http(
        self, name: str, label: str, count: int, ours: Drain, http: Drain
    ) -> None:
        """Rate, CPU and WAL of one notifier drain (``label``) against pg-boss's HTTP drain."""
        self.compare(
            name, f"deliveries/s vs pg-boss 10 doing the same HTTP POSTs, {label}", ours, http, 1.0
        )
        mine, theirs = ours.cpu_us(), http.cpu_us()
        self.report.add(
            name,
            f"PostgreSQL CPU us per delivery (first to last arrival) vs pg-boss, {label}",
            f"{mine['server']:.0f}",
            f"{theirs['server']:.0f}",
            ratio_text(mine["server"], theirs["server"]),
            "<= 150",
            verdict(mine["server"] <= 150),
        )
        self.report.add(
            name,
            f"worker CPU us per delivery (first to last arrival) vs pg-boss, {label}",
            f"{mine['workers']:.0f}",
            f"{theirs['workers']:.0f}",
            ratio_text(mine["workers"], theirs["workers"]),
            "<= 300",
            verdict(mine["workers"] <= 300),
        )
        self.report.add(
            name,
            f"WAL bytes per delivery (workers' start to last arrival) vs pg-boss, {label}",
            f"{ours.wal_bytes / count:,.0f}",
            f"{http.wal_bytes / count:,.0f}",
            ratio_text(ours.wal_bytes, http.wal_bytes),
        )

    def fetch_lever(self, count: int) -> None:
        """Asynchronous-commit fetches against durable ones, one worker, interleaved twice
        (A B A B, a quarter of ``count`` each) so that drift in the machine's load hits both."""
        spans: dict[str, float] = {"true": 0.0, "false": 0.0}
        each = max(100, count // 4)
        for _ in range(2):
            for mode in ("true", "false"):
                drain, pids = self.drain_notifier(1, each, NOTIFIER_WORKER_FETCH_ASYNC_COMMIT=mode)
                spans[mode] += (each - 1) / drain.from_first
                for child in [c for c in self.procs.children if c.pid in pids]:
                    self.procs.stop(child)
        fast, durable = 2 * (each - 1) / spans["true"], 2 * (each - 1) / spans["false"]
        self.report.raw["fetch_lever"] = {"async": fast, "durable": durable}
        self.report.add(
            "lever",
            "async-commit fetch vs durable fetch, 1p, notif/s",
            f"{fast:,.0f}",
            f"{durable:,.0f}",
            f"{fast / durable:.2f}",
        )

    # --- 3. bursts ----------------------------------------------------------------------

    def scheduling(self) -> None:
        for count in sorted(self.args.bursts):
            self.burst(count)

    def burst(self, count: int) -> None:
        """``count`` notifications created through the API, all due at the same second, one
        worker with the default configuration; the lag from the due time to arrival."""
        empty_queue_and_notifications(self.url)
        self.reset_receiver()
        key = self.create_key(self.url, Scope.NOTIFICATIONS_WRITE)
        worker = self.start_worker("worker-burst")
        # Registered and polling: the worker is idle when the burst falls due.
        wait_until(
            lambda: self.count(self.url, f"SELECT count(*) FROM {queue_tables.WORKERS}") > 0,
            timeout=60,
            what="worker registered",
        )
        body = {
            "notification_type": "bench.burst",
            "entity_id": "burst",
            "lead_time_days": 0,
            "channel": "webhook",
            "recipient": self.receiver_url + "/hooks",
        }
        # Time enough to create them all through the API first, then the instant they fall
        # due. How fast the API creates them here and now decides it (a loaded machine
        # makes far fewer than a quiet one): a two-second probe of notifications due in a
        # year, which never arrive and so never count.
        probe = self.loadgen(
            [self.api_urls[0] + "/api/v1/notifications/"],
            8,
            2,
            key=key,
            body=json.dumps({**body, "entity_id": "probe", "target_date": YEAR_AHEAD}),
        )
        lead = 3 + count / (0.7 * max(probe["per_second"], 50))
        due = math.ceil(time.time() + lead)
        body["target_date"] = datetime.datetime.fromtimestamp(due, datetime.UTC).isoformat()
        created = self.loadgen(
            [self.api_urls[0] + "/api/v1/notifications/"],
            8,
            lead,
            key=key,
            body=json.dumps(body),
            requests=count,
        )
        assert created["ok"] == count, created
        assert time.time() < due, f"creating {count} took longer than the lead time"
        wait_until(
            lambda: self.sent() >= count, timeout=self.args.timeout, interval=0.1, what="burst"
        )
        self.procs.stop(worker)
        lags = [arrived - due for arrived in self.received()["arrivals"].values()]
        assert len(lags) == count
        p50, p99, worst = percentile(lags, 0.5), percentile(lags, 0.99), max(lags)
        # The first arrival's lag is the start (finding the due work); the rest, the drain.
        first = min(lags)
        self.report.raw[f"burst_{count}_lag_s"] = {
            "first": first,
            "p50": p50,
            "p99": p99,
            "max": worst,
            "drain_per_second": count / max(worst - first, 1e-3),
            "created_per_second": created["per_second"],
            "lead_s": lead,
        }
        target = 0.5 if count <= 1_000 else 1.5
        self.report.add(
            "schedule",
            f"lag of {count:,} due in one second (made through the API), first/p50/p99/max s",
            f"{first:.2f}/{p50:.2f}/{p99:.2f}/{worst:.2f}",
            "",
            "",
            f"p99 < {target} s",
            verdict(p99 < target),
        )

    # --- 4. growth ----------------------------------------------------------------------

    def fetch_costs(
        self, urls: dict[str, str], fetch: str = "notifier", *, samples: tuple[int, int] = (25, 200)
    ) -> dict[str, tuple[float, float, float]]:
        """For each database of ``urls`` with one due job added: (EXPLAIN ANALYZE ms of the
        fetch, median wall ms of a fetch, buffers the fetch touches, its nested statements
        included).

        The databases are measured in turn, sample after sample, so that they see the
        machine alike: sub-millisecond walls move by half with whatever else runs at that
        second. ``fetch`` names the query (code_sql.FETCHES): notifier's, which workers
        use, or procrastinate's own. The plans of the fetch's nested statements go into
        the raw figures (auto_explain). ``samples``: how many EXPLAIN ANALYZE runs and how
        many timed fetches per database.
        """
        explains, timed = samples
        query = code_sql.FETCHES[fetch]
        parameters = code_sql.FETCH_PARAMETERS
        plans: dict[str, list[float]] = {name: [] for name in urls}
        walls: dict[str, list[float]] = {name: [] for name in urls}
        buffers: dict[str, list[float]] = {name: [] for name in urls}
        with contextlib.ExitStack() as stack:
            connections = {}
            for name, url in urls.items():
                add_due_job(url)
                # Its group learns of it, as the fetches between a defer and the next do.
                sql(url, "SELECT notifier.take_job_group_arrivals()")
                stack.callback(remove_due_job, url)
                connections[name] = stack.enter_context(psycopg.connect(url))
            for _ in range(explains):
                for name, conn in connections.items():
                    with conn.transaction(force_rollback=True):
                        plan = conn.execute(
                            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, parameters
                        ).fetchone()
                        assert plan is not None
                        plans[name].append(plan[0][0]["Execution Time"])
                        top = plan[0][0]["Plan"]
                        buffers[name].append(top["Shared Hit Blocks"] + top["Shared Read Blocks"])
            for _ in range(timed):
                for name, conn in connections.items():
                    with conn.transaction(force_rollback=True):
                        started = time.perf_counter()
                        row = conn.execute(query, parameters).fetchone()
                        walls[name].append((time.perf_counter() - started) * 1000)
                        assert row is not None
                        assert row[0] is not None, "the due job was not found"
            for name, url in urls.items():
                with psycopg.connect(url) as conn:
                    nested = code_sql.enable_auto_explain(conn)
                    with conn.transaction(force_rollback=True):
                        conn.execute(query, parameters)
                self.report.raw.setdefault("fetch_plans", []).append({f"{fetch}, {name}": nested})
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
            f"UPDATE {queue_tables.JOBS} SET status = 'succeeded'"
            " WHERE queue_name = 'events' AND status = 'todo'",
        )
        sql(url, f"VACUUM ANALYZE {queue_tables.JOBS}")
        settle(url)

    def queue_bytes(self, url: str) -> int:
        """Disk of the notifications, jobs and job events, indexes and TOAST included."""
        return int(
            scalar(
                url,
                "SELECT sum(pg_total_relation_size(relation)) FROM unnest(ARRAY["
                f"'notifier.notifications', '{queue_tables.JOBS}', '{queue_tables.JOB_EVENTS}'"
                "]::regclass[]) AS relation",
            )
        )

    def growth(self) -> None:
        rows = self.args.growth_rows
        reuse = self.args.growth_reuse and self.pending() >= rows
        if not reuse:
            empty_queue_and_notifications(self.url)
        # The empty case: a twin database with an API of its own, measured in turn with the
        # full one so that both see the machine alike (sub-millisecond figures move by half
        # with whatever else runs at that second).
        empty_url = fresh_database("notifier_bench_empty")
        twin_api, twin_url = self.start_api_process(empty_url)
        twin_key = self.create_key(empty_url)
        if reuse:
            # Loaded by an earlier run (--growth-reuse): against the empty twin's tables.
            bytes_before = self.queue_bytes(empty_url)
            sql(self.url, f"VACUUM ANALYZE {queue_tables.JOBS}, notifier.notifications")
        else:
            sql(
                self.url,
                f"VACUUM {queue_tables.JOBS}, {queue_tables.JOB_EVENTS}, notifier.notifications",
            )
            bytes_before = self.queue_bytes(self.url)
            started = time.perf_counter()
            bulk.load_pending(self.url, rows)
            self.report.raw["growth_load_seconds"] = time.perf_counter() - started
            sql(
                self.url,
                f"VACUUM ANALYZE {queue_tables.JOBS}, {queue_tables.JOB_EVENTS},"
                " notifier.notifications",
            )
            settle(self.url)
            self.report.raw["growth_prepare_seconds"] = time.perf_counter() - started
        disk_per_row = (self.queue_bytes(self.url) - bytes_before) / rows
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
        # procrastinate's own fetch reads every waiting job: seconds each at ten million
        # pending, so a few samples tell its cost.
        stock_plan, stock_wall, _ = self.fetch_costs({"full": self.url}, "stock", samples=(3, 5))[
            "full"
        ]
        drop_database("notifier_bench_empty")
        self.report.raw["growth"] = {
            "rows": rows,
            "disk_bytes_per_pending": disk_per_row,
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
            "growth",
            "disk bytes per pending notification (row, job, job events, indexes)",
            f"{disk_per_row:,.0f}",
        )
        self.report.add(
            "lever",
            f"fetch wall ms, {label}: notifier.fetch_job vs procrastinate's own",
            f"{full_wall:.2f}",
            f"{stock_wall:.2f}",
            f"{full_wall / stock_wall:.3f}",
        )
        if not self.args.growth_reuse:
            empty_queue_and_notifications(self.url)

    def pending(self) -> int:
        return self.count(
            self.url, "SELECT count(*) FROM notifier.notifications WHERE status = 'pending'"
        )

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
        rows = self.args.outbox_rows
        out = subprocess.run(
            [
                *(PYTHON, "bench/outbox_batch.py", "--rows", str(rows)),
                *("--receiver", self.receiver_url, "--log", str(self.procs.logs / "outbox.log")),
                *("--timeout", str(self.args.timeout)),
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
            timeout=self.args.timeout + 120,
        )
        self.report.raw["outbox"] = out.stdout

        def figure(pattern: str) -> float:
            match = re.search(pattern, out.stdout)
            if match is None:
                raise RuntimeError(f"bench/outbox_batch.py printed no {pattern!r}:\n{out.stdout}")
            return float(match.group(1).replace(",", ""))

        base = figure(r"plain table \(baseline\)\s+([\d.]+)")
        box = figure(r"notifier\.outbox\s+([\d.]+)")
        from_start = figure(r"from the worker's start\s+[\d.]+ s\s+\(([\d,]+) events/s")
        from_first = figure(r"from the first delivery\s+[\d.]+ s\s+\(([\d,]+) events/s")
        self.report.add(
            "outbox",
            f"commit ms, {rows:,}-row INSERT..SELECT",
            f"{box:.0f}",
            f"{base:.0f}",
            f"{box / base:.1f}",
        )
        self.report.add(
            "outbox",
            f"events/s processed and delivered, {rows:,} rows, 1 worker"
            " (first delivery / worker start)",
            pair(from_first, from_start),
            "",
            "",
            ">= 1500",
            verdict(min(from_first, from_start) >= 1500),
        )


def url_for_node(conninfo: str) -> str:
    """A postgresql:// URL for pg-boss (node-postgres reads no key=value strings)."""
    info = conninfo_to_dict(conninfo)
    user = info.get("user", "postgres")
    password = f":{info['password']}" if info.get("password") else ""
    host, port = info.get("host", "127.0.0.1"), info.get("port", 5432)
    return f"postgresql://{user}{password}@{host}:{port}/{info['dbname']}"


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
    admin = make_conninfo(SERVER, dbname="postgres")
    version = scalar(admin, "SHOW server_version")
    settings = ", ".join(
        f"{name} {scalar(admin, f'SHOW {name}')}"
        for name in ("shared_buffers", "synchronous_commit", "autovacuum")
    )
    node = shutil.which("node")
    node_version = (
        subprocess.run(
            [node, "--version"], check=True, capture_output=True, text=True
        ).stdout.strip()
        if node
        else "absent"
    )
    wrk_state = "present" if wrk.available() else "absent"
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB, PostgreSQL {version} ({settings}), "
        f"Python {platform.python_version()}, Node {node_version}, wrk {wrk_state}, "
        f"load average before: {load}"
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
    parser.add_argument(
        "--deliveries", type=int, default=20_000, help="notifications (pg-boss jobs) per drain"
    )
    parser.add_argument(
        "--bursts",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1_000, 5_000],
        help="comma-separated sizes of bursts due in the same second",
    )
    parser.add_argument(
        "--growth-rows", type=int, default=10_000_000, help="pending notifications for growth"
    )
    parser.add_argument(
        "--growth-reuse",
        action="store_true",
        help="growth only: keep the loaded database for the next run, and use it when it"
        " already holds --growth-rows pending (loading ten million takes half an hour)",
    )
    parser.add_argument("--outbox-rows", type=int, default=10_000, help="rows in one insert")
    parser.add_argument("--timeout", type=float, default=900.0, help="per drain, seconds")
    parser.add_argument("--json", type=Path, help="also write every raw figure here")
    parser.add_argument(
        "--logs", type=Path, help="keep the processes' logs here (default: a temporary directory)"
    )
    args = parser.parse_args(argv)
    if args.growth_reuse and args.only != "growth":
        parser.error("--growth-reuse goes with --only growth")
    if args.quick:
        args.ingest_seconds = min(args.ingest_seconds, 3.0)
        args.deliveries = min(args.deliveries, 2_000)
        args.growth_rows = min(args.growth_rows, 100_000)
        args.outbox_rows = min(args.outbox_rows, 1_000)
    return args


@contextlib.contextmanager
def running(procs: Processes, bench: Bench) -> Iterator[None]:
    try:
        yield
    finally:
        procs.stop_all()
        for conn in bench.monitors.values():
            conn.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Stopped from outside (Ctrl-C, a timeout): still stop every child process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    selected = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = set(selected) - set(WORKLOADS)
    if unknown:
        print(f"unknown workloads: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    logs = args.logs or Path(tempfile.mkdtemp(prefix="notifier-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    description = machine()
    print(f"# notifier benchmark suite, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# {description}")
    print(f"# logs: {logs}", flush=True)
    print(f"# bytecode compiled where missing ({compile_bytecode():.0f} s)", flush=True)
    report, procs = Report(), Processes(logs)
    bench = Bench(args, report, procs)
    started = time.perf_counter()
    with running(procs, bench):
        if args.growth_reuse:
            bench.url = existing_database(DATABASE)
        else:
            bench.url = fresh_database(DATABASE)
        bench.postmaster = postmaster_pid(bench.url)
        bench.start_receiver()
        bench.start_api()
        bench.generator_ceiling()
        for workload in WORKLOADS:
            if workload in selected:
                print(f"## {workload}", flush=True)
                getattr(bench, workload)()
        bench.memory()
    if bench.pgboss_ready:
        drop_database(PGBOSS_DATABASE)
    print()
    print(f"# {description}; suite took {time.perf_counter() - started:.0f} s")
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.raw, indent=2, default=str))
    if args.logs is None:
        shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
