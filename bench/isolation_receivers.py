"""Benchmark: receivers that try to take a worker down, and what they cost everyone else.

(a) A webhook receiver answering 200 with a 1 GiB body (made as it is sent, never held
    whole): the peak resident memory (VmHWM) of the `notifier worker` process that delivers
    to it. Target: under 150 MB.
(b) One host that never answers, with a backlog of notifications, then 40 notifications to
    a healthy host: their lag from being due to arriving. Target: p99 under 2 s. Run with
    the per-host cap (NOTIFIER_WEBHOOK_MAX_IN_FLIGHT_PER_HOST, default) and without it
    (0), to show what the cap buys; and the most requests the hanging host ever had open.

Everything on loopback: real `notifier worker` processes with default settings (but for
the receivers' loopback addresses) against a scratch database on the PostgreSQL at
NOTIFIER_BENCH_SERVER (default postgresql://postgres@127.0.0.1:5432), and the misbehaving
receivers of tests/hostile_receiver.py in this process.

    uv run python bench/isolation_receivers.py --quick     # small sizes, for development
    uv run python bench/isolation_receivers.py             # the measurement
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile_receiver import HostileReceiver, hostile_receiver  # noqa: E402

from bench.suite import (  # noqa: E402 - after the path that makes them importable
    PYTHON,
    Processes,
    defer_deliveries_sql,
    drop_database,
    fresh_database,
    percentile,
    scalar,
    wait_until,
)
from notifier.queue import tables as queue_tables  # noqa: E402

DATABASE = "notifier_bench_isolation_receivers"
RSS_TARGET_MB = 150.0
LAG_TARGET_SECONDS = 2.0


# The key of stored secrets for the processes this benchmark starts (one per run).
BENCH_SECRETS_KEYS = Fernet.generate_key().decode()


def seed(url: str, recipient: str, count: int) -> float:
    """``count`` pending webhook notifications to ``recipient``, due now, with their deliver
    jobs (as the service records them); the monotonic time they were committed."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            """
            INSERT INTO notifier.notifications
                (notification_type, channel, recipient, context, send_at, status)
            SELECT 'bench.isolation', 'webhook', %s, jsonb_build_object('n', n), now(),
                   'pending'
            FROM generate_series(1, %s) AS n
            """,
            [recipient, count],
        )
        conn.execute(
            defer_deliveries_sql(
                "recipient = %s", args="jsonb_build_object('notification_id', id::text)"
            ).encode(),
            [recipient],
        )
    return time.monotonic()


def notification_ids(url: str, recipient: str) -> set[str]:
    """The webhook-ids of the notifications to ``recipient``."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT 'msg_' || replace(id::text, '-', '') FROM notifier.notifications "
            "WHERE recipient = %s",
            [recipient],
        ).fetchall()
    return {row[0] for row in rows}


def peak_rss_mb(pid: int) -> float:
    """The most resident memory the process ever had (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError("no VmHWM in /proc: Linux only")


class Run:
    def __init__(self, args: argparse.Namespace, procs: Processes) -> None:
        self.args = args
        self.procs = procs
        self.url = ""
        self.rows: list[tuple[str, str, str, str]] = []

    def worker(self, **settings: str) -> int:
        """A `notifier worker` process with default settings but ``settings``; its pid."""
        env = {
            "NOTIFIER_DATABASE_URL": self.url,
            "NOTIFIER_SECRETS_KEYS": BENCH_SECRETS_KEYS,
            "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
            **{f"NOTIFIER_{name.upper()}": value for name, value in settings.items()},
        }
        child = self.procs.start(
            PYTHON, "-m", "notifier", "--log-level", "WARNING", "worker", "--queue",
            "deliveries", env=env,
        )  # fmt: skip
        return child.pid

    def stop_workers(self) -> None:
        self.procs.stop_all()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {queue_tables.JOBS}, notifier.notifications CASCADE".encode())

    def report(self, figure: str, value: str, target: str, met: bool | None) -> None:
        """A figure beside its target (``met`` None: a comparison, no target)."""
        verdict = "" if met is None else "yes" if met else "NO"
        self.rows.append((figure, value, target, verdict))
        print(f"  {figure:<72} {value:>10}   {target:<8} {verdict}", flush=True)

    def warm(self, receiver: HostileReceiver) -> None:
        """One ordinary delivery: the worker is up and has sent before the measurement."""
        recipient = receiver.url + "/warm"
        seed(self.url, recipient, 1)
        wanted = notification_ids(self.url, recipient)
        wait_until(lambda: wanted <= receiver.ids(), timeout=120, what="warm-up delivery")

    # --- (a) ------------------------------------------------------------------------------

    def huge_answer(self) -> None:
        print("## (a) a 1 GiB answer", flush=True)
        with hostile_receiver() as receiver:
            pid = self.worker()
            self.warm(receiver)
            before = peak_rss_mb(pid)
            count = self.args.huge_answers
            seed(self.url, receiver.url + "/huge", count)
            started = time.monotonic()
            wait_until(
                lambda: len(receiver.ids("/huge")) >= count and self.sent("/huge") >= count,
                timeout=300,
                what="1 GiB answers",
            )
            took = time.monotonic() - started
            after = peak_rss_mb(pid)
            sent_out = max(receiver.body_bytes_sent, default=0) / 1e6
        self.stop_workers()
        self.report(
            f"worker peak RSS, {count} answer(s) of 1 GiB (before: {before:.0f} MB)",
            f"{after:.0f} MB",
            f"< {RSS_TARGET_MB:.0f} MB",
            after < RSS_TARGET_MB,
        )
        print(
            f"    all {count} marked sent in {took:.2f} s; at most {sent_out:.1f} MB of an "
            "answer left the receiver before the worker closed the connection"
        )

    def sent(self, path_end: str) -> int:
        return int(
            scalar(
                self.url,
                "SELECT count(*) FROM notifier.notifications WHERE status = 'sent' "
                "AND recipient LIKE %s",
                ["%" + path_end],
            )
        )

    # --- (b) ------------------------------------------------------------------------------

    def hanging_host(self, cap: str) -> None:
        """(b) with the default cap (``cap`` ""), or with ``cap`` ("0": no cap, the baseline)."""
        label = "default cap" if cap == "" else "no cap" if cap == "0" else f"cap {cap}"
        print(f"## (b) one host hanging, 40 notifications to another ({label})", flush=True)
        settings = {} if cap == "" else {"webhook_max_in_flight_per_host": cap}
        with hostile_receiver() as hanging, hostile_receiver() as healthy:
            self.worker(**settings)
            self.warm(healthy)
            seed(self.url, hanging.url + "/hang", self.args.hanging)
            # The hanging host's deliveries are under way before the others are due.
            wait_until(lambda: bool(hanging.snapshot()), timeout=60, what="hanging requests")
            recipient = healthy.url + "/hooks"
            due = seed(self.url, recipient, 40)
            wanted = notification_ids(self.url, recipient)
            wait_until(
                lambda: wanted <= healthy.ids("/hooks"),
                timeout=self.args.timeout,
                what="healthy deliveries",
            )
            arrived = {a.webhook_id: a.arrived for a in healthy.snapshot()}
            lags = [arrived[webhook_id] - due for webhook_id in wanted]
            most_open = hanging.max_open_requests
        self.stop_workers()
        p99 = percentile(lags, 0.99)
        baseline = cap == "0"
        self.report(
            f"healthy host's p99 lag, {self.args.hanging} to a hanging host, {label}",
            f"{p99:.2f} s",
            "(baseline)" if baseline else f"< {LAG_TARGET_SECONDS:.0f} s",
            None if baseline else p99 < LAG_TARGET_SECONDS,
        )
        print(
            f"    lag median {percentile(lags, 0.5):.2f} s, max {max(lags):.2f} s; the "
            f"hanging host had at most {most_open} requests open at once"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--huge-answers", type=int, default=3, help="1 GiB answers in (a)")
    parser.add_argument(
        "--hanging", type=int, default=200, help="notifications to the hanging host"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip (b) with the cap off")
    parser.add_argument("--timeout", type=float, default=600.0, help="per wait, seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.huge_answers = 1
        args.hanging = min(args.hanging, 20)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs = Processes(Path(tempfile.mkdtemp(prefix="notifier-bench-")))
    run = Run(args, procs)
    try:
        run.url = fresh_database(DATABASE)
        run.huge_answer()
        run.hanging_host("")
        if not args.no_baseline:
            run.hanging_host("0")
    finally:
        procs.stop_all()
        drop_database(DATABASE)
    print()
    print("| figure | measured | target | met |")
    print("|---|---|---|---|")
    for figure, value, target, met in run.rows:
        print(f"| {figure} | {value} | {target} | {met} |")
    return 0 if all(met != "NO" for *_, met in run.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
