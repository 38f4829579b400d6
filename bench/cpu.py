"""CPU time of what a benchmark measures: PostgreSQL's processes and the contenders' own.

A thread samples, every ``interval``, the CPU time (user + system) of

- ``server``: the PostgreSQL processes working for the databases watched: their backends
  (autovacuum workers on them included) and the server's own background processes (WAL
  writer, checkpointer, background writer, the postmaster, which forks every backend).
  Backends of other databases are left out: the server may be shared;
- ``backends``: the backends of the databases watched alone, without the background ones;
- ``processes``: the processes given (a worker, an API), with their children.

Each process counts from its first sample (or from zero if it started after the watch
did) to its last, so one that exits between two samples loses at most one interval. A
window's figures (``between``) are read from the samples on either side of its ends,
interpolated, so a drain can be measured from its first arrival to its last, leaving out
the start-up of the processes, or from their start.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

import psutil
import psycopg

# What PostgreSQL calls its background processes in their titles ("postgres: 15/main: walwriter").
BACKGROUND = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "archiver",
    "stats collector",
    "walsender",
)


@dataclass(frozen=True)
class Sample:
    at: float  # time.time()
    server: float
    backends: float
    processes: float


def database_of(title: str) -> str | None:
    """The database a PostgreSQL process title names, if any.

    Backends read ``postgres: [cluster: ]USER DATABASE HOST(PORT) STATE``, autovacuum
    workers ``postgres: [cluster: ]autovacuum worker DATABASE``.
    """
    words = title.removeprefix("postgres:").split()
    if words and words[0].endswith(":"):  # the cluster_name, when one is set
        words = words[1:]
    if words[:2] == ["autovacuum", "worker"]:
        return words[2] if len(words) > 2 else None
    return words[1] if len(words) > 1 else None


def is_background(title: str) -> bool:
    return any(name in title for name in BACKGROUND)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


class CpuWatch:
    """Samples CPU time in a thread from ``start`` (or ``with``) to ``stop``."""

    def __init__(
        self,
        postmaster_pid: int,
        databases: Iterable[str],
        processes: Iterable[int] = (),
        *,
        exclude: Iterable[int] = (),
        interval: float = 0.1,
    ) -> None:
        self.postmaster = psutil.Process(postmaster_pid)
        self.databases = frozenset(databases)
        # Backends not to count: the measuring side's own connections.
        self.exclude = frozenset(exclude)
        self.interval = interval
        self.samples: list[Sample] = []
        self._roots = [psutil.Process(pid) for pid in processes]
        # (pid, start time) -> [CPU at first sight, CPU at last sight], per group.
        self._seen: dict[str, dict[tuple[int, float], list[float]]] = {
            "server": {},
            "backends": {},
            "processes": {},
        }
        self._titles: dict[tuple[int, float], str] = {}
        self._started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-watch", daemon=True)

    def watch(self, pid: int) -> None:
        """Count ``pid`` (and its children) among ``processes`` from now on."""
        self._roots.append(psutil.Process(pid))

    def start(self) -> CpuWatch:
        self._started = time.time()
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def __enter__(self) -> CpuWatch:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> Sample:
        """Read every process's CPU time now; the totals since the watch began."""
        now = time.time()
        for group, members in self._members().items():
            seen = self._seen[group]
            for key, process in members:
                try:
                    used = cpu_seconds(process)
                except psutil.Error:  # it exited: its last sample stands
                    continue
                if key not in seen:
                    started_before = key[1] < self._started
                    seen[key] = [used if started_before else 0.0, used]
                seen[key][1] = used
        totals = {
            group: sum(last - first for first, last in seen.values())
            for group, seen in self._seen.items()
        }
        sample = Sample(now, totals["server"], totals["backends"], totals["processes"])
        self.samples.append(sample)
        return sample

    def _members(self) -> dict[str, list[tuple[tuple[int, float], psutil.Process]]]:
        members: dict[str, list[tuple[tuple[int, float], psutil.Process]]] = {
            "server": [],
            "backends": [],
            "processes": [],
        }
        server = [self.postmaster]
        with contextlib.suppress(psutil.Error):  # the server stopped: nothing more to read
            server += self.postmaster.children()
        for process in server:
            key = self._key(process)
            if key is None or process.pid in self.exclude:
                continue
            title = self._title(key, process)
            if process.pid == self.postmaster.pid or is_background(title):
                members["server"].append((key, process))
            elif database_of(title) in self.databases:
                members["server"].append((key, process))
                members["backends"].append((key, process))
        for root in self._roots:
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                family = [root]
            for process in family:
                key = self._key(process)
                if key is not None:
                    members["processes"].append((key, process))
        return members

    @staticmethod
    def _key(process: psutil.Process) -> tuple[int, float] | None:
        try:
            return process.pid, process.create_time()
        except psutil.Error:
            return None

    def _title(self, key: tuple[int, float], process: psutil.Process) -> str:
        # A backend's title changes with its state, never its database: read it once.
        if key not in self._titles:
            try:
                command = process.cmdline()
            except psutil.Error:
                command = []
            self._titles[key] = command[0] if command else ""
        return self._titles[key]

    def at(self, moment: float) -> Sample:
        """The totals at ``moment``, interpolated between the samples around it."""
        if not self.samples:
            raise ValueError("no samples: the watch never started")
        times = [sample.at for sample in self.samples]
        index = bisect.bisect_left(times, moment)
        if index == 0:
            return self.samples[0]
        if index == len(self.samples):
            return self.samples[-1]
        before, after = self.samples[index - 1], self.samples[index]
        share = (moment - before.at) / (after.at - before.at) if after.at > before.at else 1.0

        def between(a: float, b: float) -> float:
            return a + (b - a) * share

        return Sample(
            moment,
            between(before.server, after.server),
            between(before.backends, after.backends),
            between(before.processes, after.processes),
        )

    def between(self, start: float, end: float) -> Sample:
        """CPU seconds used from ``start`` to ``end`` (``at`` is the window's length)."""
        first, last = self.at(start), self.at(end)
        return Sample(
            end - start,
            last.server - first.server,
            last.backends - first.backends,
            last.processes - first.processes,
        )


def postmaster_pid(url: str) -> int:
    """The PostgreSQL server's main process, found as the parent of a backend of ours."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    parent = psutil.Process(int(row[0])).parent()
    if parent is None:
        raise RuntimeError("the backend has no parent: is PostgreSQL on this machine?")
    return parent.pid
