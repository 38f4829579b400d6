"""Benchmark: one 10,000-row INSERT ... SELECT into notifier.outbox, committed, processed and
delivered.

Prints the commit time against a baseline (the same rows into a plain table with the same
columns, no trigger), the wake-ups sent, and the time until one real `notifier worker`
process (at the default log level, INFO, its log to --log) has processed every event and
delivered every notification to a webhook receiver on loopback: from the worker's start,
and from the first delivery; and, per event processed and delivered, the CPU the server
(bench/cpu.py) and the worker used and the WAL written from the worker's start. Uses the receiver at --receiver (bench/receiver.py), or
starts one; the PostgreSQL at NOTIFIER_BENCH_SERVER (default
postgresql://postgres@127.0.0.1:5432) and a scratch database.

    uv run python bench/outbox_batch.py [--rows 10000] [--concurrency 10] [--receiver URL]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
from cryptography.fernet import Fernet
from psycopg.conninfo import make_conninfo

from notifier import migrate
from notifier.queue import tables as queue_tables

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpu import CpuWatch, Sample, postmaster_pid  # noqa: E402 - after the path above
from bench.suite import wal_position  # noqa: E402

INSERT_SELECT = (
    "INSERT INTO {table} (type, payload) "
    "SELECT 'bulk.created', jsonb_build_object('n', n, 'email', 'user' || n || '@example.com') "
    "FROM generate_series(1, %s) AS n"
)


# The key of stored secrets for the processes this benchmark starts (one per run).
BENCH_SECRETS_KEYS = Fernet.generate_key().decode()


def timed_insert(url: str, table: str, rows: int) -> float:
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        conn.execute(INSERT_SELECT.format(table=table).encode(), [rows])
        conn.commit()
        return time.perf_counter() - started


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # loopback only
        body: bytes = response.read()
        return body


@contextlib.contextmanager
def receiver(given: str | None) -> Iterator[str]:
    """The receiver's URL: the one given, or one started here for the run."""
    if given:
        yield given.rstrip("/")
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "receiver.py"), str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(OSError):
                get(url + "/reset")
                break
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def all_delivered(url: str, rows: int, deadline: float) -> bool:
    """Wait until every event is processed and ``rows`` notifications are sent."""
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE processed_at IS NULL), "
                "(SELECT count(*) FROM notifier.notifications WHERE status = 'sent')"
                " FROM notifier.events"
            ).fetchone()
            assert row is not None
            pending, sent = row
            if pending == 0 and sent == rows:
                return True
            if time.time() > deadline:
                print(f"timed out: {pending} events unprocessed, {sent} sent")
                return False
            time.sleep(0.2)


def drain(url: str, args: argparse.Namespace) -> tuple[float, Sample, int] | None:
    """One `notifier worker` processing and delivering everything: when it started, the CPU
    the server and the worker used until the last delivery, the WAL written meanwhile; None
    if it timed out."""
    env = {
        **os.environ,
        "NOTIFIER_DATABASE_URL": url,
        "NOTIFIER_SECRETS_KEYS": BENCH_SECRETS_KEYS,
        "NOTIFIER_DATABASE_POOL_MAX_SIZE": str(args.concurrency + 5),
        "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    }
    wal_before = wal_position(url)
    watch = CpuWatch(postmaster_pid(url), ["notifier_bench_outbox"], []).start()
    with args.log.open("ab") as log:
        started = time.time()
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "notifier", "--log-level", "INFO", "worker"),
                *("--concurrency", str(args.concurrency)),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    watch.watch(worker.pid)
    try:
        if not all_delivered(url, args.rows, started + args.timeout):
            return None
        ended = time.time()
    finally:
        watch.stop()
        worker.terminate()
        worker.wait(timeout=60)
    return started, watch.between(started, ended), wal_position(url) - wal_before


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--receiver", help="a running bench/receiver.py (default: start one)")
    parser.add_argument(
        "--log",
        type=Path,
        default=Path(tempfile.gettempdir()) / "notifier-bench-outbox.log",
        help="the worker's log (default: %(default)s)",
    )
    args = parser.parse_args()

    server = os.environ.get("NOTIFIER_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432")
    url = make_conninfo(server, dbname="notifier_bench_outbox")
    with psycopg.connect(make_conninfo(server, dbname="postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS notifier_bench_outbox WITH (FORCE)")
    migrate.create_database_if_missing(url)
    migrate.upgrade(url)
    with receiver(args.receiver) as receiver_url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE baseline (LIKE notifier.outbox INCLUDING ALL)")
            # The outbox's tenant comes from a trigger; the plain copy takes it as a default.
            conn.execute("ALTER TABLE baseline ALTER COLUMN tenant_id SET DEFAULT 'default'")
            # Every event becomes one webhook to the receiver, as deliveries elsewhere in
            # the suite.
            conn.execute(
                "INSERT INTO notifier.routing_rules (event_type, channel, recipient) "
                "VALUES ('bulk.*', 'webhook', %s)",
                [receiver_url + "/hooks"],
            )
        get(receiver_url + "/reset")

        baseline = timed_insert(url, "baseline", args.rows)
        with psycopg.connect(url, autocommit=True) as listener:
            listener.execute(f"LISTEN {queue_tables.ANY_QUEUE_CHANNEL}".encode())
            outbox = timed_insert(url, "notifier.outbox", args.rows)
            wake_ups = sum(1 for _ in listener.notifies(timeout=1.0))

        drained = drain(url, args)
        if drained is None:
            return 1
        started, used, wal_bytes = drained
        stats = json.loads(get(receiver_url + "/stats"))

    arrivals = sorted(stats["arrivals"].values())
    if stats["count"] != args.rows or len(arrivals) != args.rows:
        print(f"the receiver got {stats['count']} POSTs for {len(arrivals)} notifications")
        return 1
    from_start = arrivals[-1] - started
    from_first = (arrivals[-1] - arrivals[0]) * args.rows / max(1, args.rows - 1)
    print(f"rows per transaction            {args.rows:>10,}")
    print(f"commit, plain table (baseline)  {baseline * 1000:>10.0f} ms")
    print(
        f"commit, notifier.outbox         {outbox * 1000:>10.0f} ms   ({outbox / baseline:.1f}x baseline)"
    )
    print(f"wake-up notifications sent      {wake_ups:>10}")
    print(
        f"processed and delivered, 1 worker (concurrency {args.concurrency}), timed\n"
        f"  from the worker's start        {from_start:>10.1f} s    "
        f"({args.rows / from_start:,.0f} events/s)\n"
        f"  from the first delivery        {from_first:>10.1f} s    "
        f"({args.rows / from_first:,.0f} events/s)"
    )
    print(
        "per event processed and delivered, from the worker's start:\n"
        f"  PostgreSQL CPU                 {used.server / args.rows * 1e6:>10.0f} us\n"
        f"  worker CPU                     {used.processes / args.rows * 1e6:>10.0f} us\n"
        f"  WAL                            {wal_bytes / args.rows:>10,.0f} bytes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
