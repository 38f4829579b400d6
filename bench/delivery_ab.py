"""Interleaved delivery drains (A B C A B C ...): one worker (or ``--processes``) draining
``count`` due webhooks per drain, each configuration a Python (whose installed notifier runs
the worker: another worktree's ``.venv/bin/python`` for a before-and-after) and worker
environment.

    NOTIFIER_BENCH_SERVER=postgresql://postgres@127.0.0.1:5501 uv run python -m bench.delivery_ab \\
        10000 3 "50=.venv/bin/python:NOTIFIER_DELIVERY_BATCH_SIZE=50" \\
        "200=.venv/bin/python:NOTIFIER_DELIVERY_BATCH_SIZE=200"

Per drain and as means: deliveries per second from the first arrival to the last, CPU per
delivery of PostgreSQL and the worker over that span and from the worker's start, and the
deliveries put off for a host slot.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import suite
from bench.cpu import postmaster_pid

DATABASE = "notifier_bench_delivery_ab"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, help="due webhooks per drain")
    parser.add_argument("rounds", type=int)
    parser.add_argument("configs", nargs="+", help="LABEL=PYTHON:NAME=VALUE;NAME=VALUE")
    parser.add_argument("--processes", type=int, default=1, help="workers per drain")
    args = parser.parse_args(argv)
    configs = []
    for spec in args.configs:
        label, rest = spec.split("=", 1)
        python, _, names = rest.partition(":")
        env = dict(pair.split("=", 1) for pair in names.split(";") if pair)
        configs.append((label, python, env))
    procs = suite.Processes(Path(tempfile.mkdtemp(prefix="notifier-delivery-ab-")))
    bench = suite.Bench(suite.parse_args([]), suite.Report(), procs)
    runs: dict[str, list[tuple[float, float, float, float, float, int]]] = {}
    with suite.running(procs, bench):
        bench.url = suite.fresh_database(DATABASE)
        bench.postmaster = postmaster_pid(bench.url)
        bench.start_receiver()
        for round_number in range(args.rounds):
            for label, python, env in configs:
                suite.PYTHON = python
                drain, pids = bench.drain_notifier(args.processes, args.count, **env)
                for child in [c for c in procs.children if c.pid in pids]:
                    procs.stop(child)
                cpu = drain.cpu_us()
                whole = drain.raw()["cpu_us_per_job_from_start"]
                run = (
                    drain.from_first,
                    cpu["server"],
                    cpu["workers"],
                    whole["server"],
                    whole["workers"],
                    drain.put_offs,
                )
                runs.setdefault(label, []).append(run)
                load = Path("/proc/loadavg").read_text().split()[0]
                print(f"round {round_number} {label:>10}: {line(run)}  load {load}", flush=True)
    for label, done in runs.items():
        mean = tuple(sum(run[i] for run in done) / len(done) for i in range(6))
        print(f"mean    {label:>10}: {line(mean)}")
    suite.drop_database(DATABASE)
    return 0


def line(run: tuple[float, ...]) -> str:
    rate, server, workers, server_all, workers_all, put_offs = run
    return (
        f"{rate:6.0f}/s PostgreSQL {server:4.0f} us worker {workers:4.0f} us"
        f" (from start {server_all:4.0f} / {workers_all:4.0f}), put off {put_offs:.0f}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
