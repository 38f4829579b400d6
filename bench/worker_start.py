"""Benchmark: a worker's start, from the exec of `python -m notifier worker` (as bench/suite.py
starts it) to the first webhook arriving at the receiver, with due notifications waiting.

Seeds ``--pending`` due webhook notifications with their deliver jobs (the suite's
``seed_due``), starts one `notifier --log-level INFO worker --queue deliveries`, and times
exec -> first arrival at the receiver (bench/receiver.py, polled every 5 ms); then stops the
worker and starts over. With several ``--python`` interpreters (each the venv of a checkout,
whose `notifier` it runs, from that checkout) the runs are interleaved, one of each in
turn, so that a loaded machine weighs on all alike; the medians are printed per
interpreter, with the CPU the worker and its children had used by the first arrival (the
figure a loaded machine disturbs least). Each checkout's venv and sources are first
compiled to bytecode as the suite compiles them (``--source``: left as they are). Uses the PostgreSQL at NOTIFIER_BENCH_SERVER and the scratch database
``notifier_bench_start``.

    uv run python -m bench.worker_start --runs 5 --python ../base/.venv/bin/python \\
        --python .venv/bin/python
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cpu import children, read_stat
from bench.suite import (
    LOG_LEVEL,
    Bench,
    Processes,
    Report,
    compile_bytecode,
    empty_queue_and_notifications,
    fresh_database,
)

DATABASE = "notifier_bench_start"


def checkout_of(python: str) -> Path:
    """The checkout whose venv ``python`` is (``<checkout>/.venv/bin/python``)."""
    return Path(python).absolute().parents[2]


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and its children (the template sandboxes), read
    from /proc as bench.cpu reads it: psutil's children() reads every process's status,
    which at a poll every 5 ms would compete with the worker being timed."""
    total, pending = 0.0, [pid]
    while pending:
        each = pending.pop()
        stat = read_stat(each)
        if stat is not None:  # None: it exited meanwhile
            total += stat[0]
            pending += children(each)
    return total


def first_arrival(
    bench: Bench, worker: subprocess.Popen[bytes], timeout: float
) -> tuple[float, float]:
    """When the receiver had its first POST, and the worker's CPU seconds by then (the worker
    must stay up meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        cpu = cpu_seconds(worker.pid)
        if bench.received()["count"]:
            return time.time(), cpu
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode} before delivering")
        if time.monotonic() > deadline:
            raise TimeoutError("no delivery within the timeout")
        time.sleep(0.005)


def start_to_first(bench: Bench, python: str, pending: int, timeout: float) -> tuple[float, float]:
    """One run: seconds from the worker's exec to the first arrival, and the CPU seconds the
    worker (with its children) had used by then (read just before the arrival was seen)."""
    empty_queue_and_notifications(bench.url)
    bench.reset_receiver()
    bench.seed_due(pending)
    checkout = checkout_of(python)
    started = time.time()
    worker = bench.procs.start(
        *(python, "-m", "notifier", "--log-level", LOG_LEVEL, "worker", "--queue", "deliveries"),
        env=bench.notifier_env(),
        log="worker-start",
        cwd=checkout,
    )
    try:
        arrived, cpu = first_arrival(bench, worker, timeout)
        return arrived - started, cpu
    finally:
        bench.procs.stop(worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--python",
        action="append",
        help="a checkout's venv interpreter; repeat to compare (default: this one)",
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per interpreter")
    parser.add_argument("--pending", type=int, default=5000, help="due notifications")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument(
        "--source",
        action="store_true",
        help="leave the bytecode as it is (the suite compiles it where missing; see there)",
    )
    args = parser.parse_args()
    pythons = args.python or [sys.executable]
    if not args.source:
        for python in pythons:
            compile_bytecode(python, checkout_of(python))
    with tempfile.TemporaryDirectory() as logs:
        bench = Bench(args, Report(), Processes(Path(logs)))
        try:
            bench.url = fresh_database(DATABASE)
            bench.start_receiver()
            walls: dict[str, list[float]] = {python: [] for python in pythons}
            cpus: dict[str, list[float]] = {python: [] for python in pythons}
            for run in range(args.runs):
                for python in pythons:
                    wall, cpu = start_to_first(bench, python, args.pending, args.timeout)
                    walls[python].append(wall)
                    cpus[python].append(cpu)
                    print(f"run {run + 1} {python}: {wall:.3f} s, CPU {cpu:.3f} s", flush=True)
            for python in pythons:
                taken = walls[python]
                print(
                    f"{python}: median {statistics.median(taken):.3f} s "
                    f"(min {min(taken):.3f}, max {max(taken):.3f}), "
                    f"CPU median {statistics.median(cpus[python]):.3f} s, {len(taken)} runs"
                )
        finally:
            bench.procs.stop_all()


if __name__ == "__main__":
    main()
