"""Where PostgreSQL's work per delivered notification goes: one worker drains due webhook
notifications (as `bench.suite`'s delivery workload seeds them) and pg_stat_statements
counts every statement, nested ones (functions, triggers, foreign-key checks) included.
With ``-c pg_stat_statements.track_planning=on`` it counts planning too (plans/n, plan
us/n): a statement PostgreSQL plans again at every run costs CPU the execution time hides.

It needs a server that loads pg_stat_statements, which a shared development server does
not: start a scratch cluster of your own on another port, for example

    initdb -D /tmp/pgss -U postgres -A trust
    pg_ctl -D /tmp/pgss -o "-p 55433 -c shared_preload_libraries=pg_stat_statements \\
        -c pg_stat_statements.track=all" -l /tmp/pgss.log start
    NOTIFIER_BENCH_SERVER=postgresql://postgres@127.0.0.1:55433 \\
        uv run python -m bench.delivery_statements --deliveries 5000

Per statement: calls and rows per delivered notification, and its execution time per
notification (wall time inside the server: on a loaded machine it includes waiting for a
CPU and for locks, so compare shares, not absolute figures). The suite's own polling
(`SELECT count(*) ... WHERE status`) is listed too, and is not part of a delivery.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import suite
from bench.cpu import postmaster_pid

DATABASE = "notifier_bench_statements"
STATEMENTS_SQL = """
SELECT calls, rows, total_exec_time, plans, total_plan_time, toplevel,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 150) AS query
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time + total_plan_time DESC
LIMIT %s
"""


class StatementsBench(suite.Bench):
    """The suite's bench, forgetting the statements of seeding: counted is the drain."""

    def seed_due(
        self, count: int, *, at: str = "now()", jobs: bool = True, tenant: str = "default"
    ) -> None:
        super().seed_due(count, at=at, jobs=jobs, tenant=tenant)
        suite.sql(self.url, "SELECT pg_stat_statements_reset()")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--top", type=int, default=25, help="statements listed")
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="notifier-statements-"))
    procs = suite.Processes(logs)
    bench = StatementsBench(suite.parse_args([]), suite.Report(), procs)
    with suite.running(procs, bench):
        bench.url = suite.fresh_database(DATABASE)
        bench.postmaster = postmaster_pid(bench.url)
        suite.sql(bench.url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        bench.start_receiver()
        drain, _ = bench.drain_notifier(1, args.deliveries)
        count = args.deliveries
        cpu = drain.cpu_us()
        print(
            f"{drain.from_first:.0f} notifications/s; CPU per delivery: PostgreSQL"
            f" {cpu['server']:.0f} us, worker {cpu['workers']:.0f} us"
        )
        print(
            f"{'calls/n':>8} {'rows/n':>7} {'us/n':>7} {'plans/n':>8} {'plan us/n':>9} top  statement"
        )
        for calls, rows, total_ms, plans, plan_ms, toplevel, query in suite.sql(
            bench.url, STATEMENTS_SQL, [args.top]
        ):
            print(
                f"{calls / count:8.3f} {rows / count:7.2f} {total_ms * 1000 / count:7.1f}"
                f" {plans / count:8.3f} {plan_ms * 1000 / count:9.1f}"
                f" {'T' if toplevel else ' ':>3}  {query}"
            )
    suite.drop_database(DATABASE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
