"""Fair share between tenants (issue 14): one tenant's burst against another's single notification.

Two measurements, each on scratch databases of the PostgreSQL at NOTIFIER_BENCH_SERVER
(bench/suite.py's helpers start the processes and take the figures):

* burst: tenant B has ``--burst`` webhook notifications due at the same second, tenant A one,
  due at that second too. One worker with the default settings (concurrency 10, batches of
  50) delivers them to a loopback receiver. Figures: A's arrival lag after the due time
  (target: under 1 s), B's drain time, and how many of B's arrived before A's.
* fetch: the cost of a fetch with ``--pending`` jobs due in a month or later, spread over
  ``--tenants`` tenants, against an empty twin database (EXPLAIN ANALYZE of the fetch's
  candidate search, wall time of ``notifier.fetch_job``, buffers), then the same with
  ``--tenants`` tenants having due work at once.

    uv run python bench/isolation_fairness.py --quick     # 5,000 due, 100,000 pending
    uv run python bench/isolation_fairness.py             # 50,000 due, 1,000,000 pending
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import LiteralString

import psycopg

# Run as a script: the checkout's root makes bench/suite.py importable as bench.suite.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.suite import (
    PYTHON,
    ROOT,
    Bench,
    Processes,
    Report,
    add_due_job,
    drop_database,
    fresh_database,
    machine,
    remove_due_job,
    running,
    scalar,
    settle,
    sql,
    verdict,
    wait_until,
)
from notifier.queue import DELIVER_TASK, DELIVERIES_QUEUE, jobs
from notifier.queue import tables as queue_tables

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
BURST_DATABASE = "notifier_bench_fairness"
FULL_DATABASE = "notifier_bench_fairness_full"
EMPTY_DATABASE = "notifier_bench_fairness_empty"


def burst(bench: Bench) -> None:
    args = bench.args
    bench.url = fresh_database(BURST_DATABASE)
    sql(bench.url, "INSERT INTO notifier.tenants (id) VALUES (%s), (%s)", [TENANT_A, TENANT_B])
    bench.start_receiver()
    bench.procs.start(
        *(PYTHON, "-m", "notifier", "--log-level", "WARNING", "worker"), env=bench.notifier_env()
    )
    wait_until(
        lambda: int(scalar(bench.url, f"SELECT count(*) FROM {queue_tables.WORKERS}")) > 0,
        timeout=60,
        what="worker start",
    )
    # Both due at the same whole second, far enough ahead to seed B's burst first.
    due = math.ceil(time.time()) + args.lead
    at = f"to_timestamp({due})"
    bench.seed_due(args.burst, at=at, tenant=TENANT_B)
    bench.seed_due(1, at=at, tenant=TENANT_A)
    left = due - time.time()
    if left <= 0:
        raise SystemExit(f"seeding took longer than --lead {args.lead}s: raise it")
    wait_until(
        lambda: bench.sent() >= args.burst + 1,
        timeout=args.timeout,
        interval=0.2,
        what="the burst",
    )
    a_id = str(
        scalar(
            bench.url,
            "SELECT id::text FROM notifier.notifications WHERE tenant_id = %s",
            [TENANT_A],
        )
    )
    arrivals = bench.received()["arrivals"]
    a_arrival = arrivals.pop(a_id)
    b_arrivals = sorted(arrivals.values())
    assert len(b_arrivals) == args.burst, (len(b_arrivals), args.burst)
    a_lag = a_arrival - due
    b_before_a = sum(1 for t in b_arrivals if t < a_arrival)
    bench.report.raw["burst"] = {
        "a_lag_s": a_lag,
        "b_first_s": b_arrivals[0] - due,
        "b_last_s": b_arrivals[-1] - due,
        "b_before_a": b_before_a,
        "seeded_with_s_to_spare": left,
    }
    label = f"B {args.burst:,} due, A 1"
    bench.report.add(
        "burst",
        f"{label}: A's arrival lag after its due time, s",
        f"{a_lag:.2f}",
        "",
        "",
        "< 1 s",
        verdict(a_lag < 1),
    )
    bench.report.add(
        "burst",
        f"{label}: B's drain, due time to last arrival, s",
        f"{b_arrivals[-1] - due:.1f}",
        "",
        "",
        "",
        "",
    )
    bench.report.add(
        "burst",
        f"{label}: B's notifications that arrived before A's",
        f"{b_before_a:,}",
        "",
        "",
        "",
        "",
    )
    bench.procs.stop_all()
    drop_database(BURST_DATABASE)


def load_future_jobs(url: str, pending: int, tenants: int) -> None:
    """``pending`` deliver jobs due in a month or later, of ``tenants`` tenants, settled."""
    sql(
        url,
        deliver_jobs_sql("now() + interval '30 days' + n * interval '1 second'"),
        [
            tenants,
            pending,
        ],
    )
    ready(url)


def deliver_jobs_sql(scheduled_at: LiteralString) -> LiteralString:
    """Deliver jobs of made-up notifications, due at ``scheduled_at`` (SQL over ``n``), spread
    over tenants; parameters: the number of tenants, and of jobs."""
    return jobs.defer_jobs_select(
        rows="generate_series(1, %s) AS n",
        queue="'" + DELIVERIES_QUEUE + "'",
        task="'" + DELIVER_TASK + "'",
        args="""jsonb_build_object('notification_id', gen_random_uuid()::text,
                                   'tenant_id', 'tenant-' || n %% %s)""",
        scheduled_at=scheduled_at,
    )


def ready(url: str) -> None:
    """The steady state a fetch meets: groups up to date, statistics fresh, nothing dirty."""
    sql(url, "SELECT notifier.take_job_group_arrivals()")
    sql(url, f"VACUUM ANALYZE {queue_tables.JOBS}, notifier.job_groups")
    settle(url)


# Before migration 0011: migration 0009's fetch (oldest due first, all tenants alike), with
# its indexes, installed beside the fair one in the full database for the lever's baseline.
OLDEST_FIRST = "notifier.fetch_job_oldest_first"
OLDEST_FIRST_INDEXES = f"""
CREATE INDEX bench_jobs_run_now_idx ON {queue_tables.JOBS} (priority DESC, id)
    WHERE status = 'todo' AND scheduled_at IS NULL;
CREATE INDEX bench_jobs_scheduled_idx ON {queue_tables.JOBS} (scheduled_at, id)
    WHERE status = 'todo' AND scheduled_at IS NOT NULL;
"""


def oldest_first_fetch_sql() -> str:
    """Migration 0009's notifier.fetch_job, as migration 0011's downgrade restores it."""
    path = ROOT / "migrations" / "versions" / "0011_fair_share_between_tenants.py"
    spec = importlib.util.spec_from_file_location("revision_0011", path)
    assert spec is not None
    assert spec.loader is not None
    revision = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(revision)
    match = re.search(
        r"CREATE OR REPLACE FUNCTION notifier\.fetch_job\(.*?\n\$\$;", revision.DOWNGRADE, re.S
    )
    assert match is not None
    return match.group(0).replace("notifier.fetch_job(", f"{OLDEST_FIRST}(")


def fetch_walls(url: str, functions: list[str], rounds: int = 10, each: int = 50) -> list[float]:
    """Median wall ms of a fetch (rolled back) by each of ``functions`` on ``url``, the
    functions taking turns, ``each`` fetches at a time, so that the machine's drift hits all."""
    walls: dict[str, list[float]] = {function: [] for function in functions}
    with psycopg.connect(url) as conn:
        for _ in range(rounds):
            for function in functions:
                for _ in range(each):
                    with conn.transaction(force_rollback=True):
                        started = time.perf_counter()
                        row = conn.execute(
                            f"SELECT id FROM {function}(ARRAY['deliveries'], NULL)".encode()
                        ).fetchone()
                        walls[function].append((time.perf_counter() - started) * 1000)
                        assert row is not None
                        assert row[0] is not None, "no due job found"
    return [statistics.median(walls[function]) for function in functions]


def oldest_first_lever(bench: Bench, url: str, label: str) -> None:
    """The fair fetch against the oldest-first one, on the same database and due job."""
    add_due_job(url)
    sql(url, "SELECT notifier.take_job_group_arrivals()")
    fair, oldest = fetch_walls(url, ["notifier.fetch_job", OLDEST_FIRST])
    remove_due_job(url)
    bench.report.add(
        "lever",
        f"fetch wall ms, {label}: fair vs oldest first (0009)",
        f"{fair:.2f}",
        f"{oldest:.2f}",
        f"{fair / oldest:.2f}",
    )


def fetch_growth(bench: Bench) -> None:
    args = bench.args
    empty = fresh_database(EMPTY_DATABASE)
    full = fresh_database(FULL_DATABASE)
    started = time.perf_counter()
    load_future_jobs(full, args.pending, args.tenants)
    bench.report.raw["fetch_load_seconds"] = time.perf_counter() - started
    costs = bench.fetch_costs({"empty": empty, "full": full})
    label = f"{args.pending:,} pending of {args.tenants} tenants"
    (empty_plan, empty_wall, empty_buffers) = costs["empty"]
    (full_plan, full_wall, full_buffers) = costs["full"]
    for figure, ours, base in (
        ("EXPLAIN ANALYZE ms", full_plan, empty_plan),
        ("wall ms (median of 200)", full_wall, empty_wall),
    ):
        bench.report.add(
            "fetch",
            f"{figure}, {label} vs empty",
            f"{ours:.2f}",
            f"{base:.2f}",
            f"{ours / base:.2f}",
            "<= 1.2",
            verdict(ours / base <= 1.2),
        )
    bench.report.add(
        "fetch",
        f"buffers touched, {label} vs empty",
        f"{full_buffers:.0f}",
        f"{empty_buffers:.0f}",
        f"{full_buffers / empty_buffers:.2f}",
    )
    sql(full, oldest_first_fetch_sql())
    sql(full, OLDEST_FIRST_INDEXES)
    ready(full)
    oldest_first_lever(bench, full, f"{label}, 1 due")
    # The same with every one of those tenants having due work: the fetch reads one row of
    # notifier.job_groups per tenant with due work, and still one group's jobs.
    sql(full, deliver_jobs_sql("now() - interval '1 minute'"), [args.tenants, 10 * args.tenants])
    ready(full)
    busy = bench.fetch_costs({"empty": empty, "busy": full})
    (_, empty_wall, _), (busy_plan, busy_wall, busy_buffers) = busy["empty"], busy["busy"]
    bench.report.add(
        "fetch",
        f"wall ms, {label}, all {args.tenants} with due work, vs empty",
        f"{busy_wall:.2f}",
        f"{empty_wall:.2f}",
        f"{busy_wall / empty_wall:.2f}",
    )
    bench.report.add(
        "fetch",
        f"EXPLAIN ANALYZE ms / buffers, {args.tenants} tenants with due work",
        f"{busy_plan:.2f} / {busy_buffers:.0f}",
    )
    oldest_first_lever(bench, full, f"{label}, all with due work")
    drop_database(FULL_DATABASE)
    drop_database(EMPTY_DATABASE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--burst", type=int, default=50_000, help="B's notifications due at once")
    parser.add_argument("--pending", type=int, default=1_000_000, help="jobs due later")
    parser.add_argument("--tenants", type=int, default=100, help="tenants of the pending jobs")
    parser.add_argument("--lead", type=float, default=30.0, help="seconds to seed before due")
    parser.add_argument("--only", default="burst,fetch", help="burst, fetch or both")
    parser.add_argument("--timeout", type=float, default=900.0, help="for the drain, seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.burst = min(args.burst, 5_000)
        args.pending = min(args.pending, 100_000)
        args.lead = min(args.lead, 10.0)
    # bench/suite.py's Bench reads these.
    args.api_processes = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    description = machine()
    print(f"# notifier fair share, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# {description}")
    report, procs = Report(), Processes(Path(tempfile.mkdtemp(prefix="notifier-bench-")))
    bench = Bench(args, report, procs)
    selected = {part.strip() for part in args.only.split(",")}
    with running(procs, bench):
        if "burst" in selected:
            burst(bench)
        if "fetch" in selected:
            fetch_growth(bench)
    print()
    print(report.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
