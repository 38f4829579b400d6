"""CPU time of what a benchmark measures: PostgreSQL's processes and the contenders' own.

A thread samples, every ``interval``, the CPU time (user + system) of

- ``server``: the PostgreSQL processes working for the databases watched: their backends
  (autovacuum workers on them included) and the server's own background processes (WAL
  writer, checkpointer, background writer, the postmaster, which forks every backend).
  Backends of other databases are left out (the server may be shared), and so are the
  backends named in ``exclude`` (the measuring side's own connections);
- ``backends``: the backends of the databases watched alone, without the background ones;
- ``processes``: the processes given (a worker, an API), with their children.

Each process counts from its first sample (from zero if it started after the watch did) to
its last, so one that exits between two samples loses at most one interval. A window's
figures (``between``) are read from the samples on either side of its ends, interpolated,
so a drain can be measured from its first arrival to its last, leaving out the start-up of
the processes, or from their start.

Linux only: it reads ``/proc`` directly (one small file per process and sample), because
psutil finds a process's children by reading every process's status, which at ten samples
a second cost a twentieth of a core.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
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
# A process: its pid and its start time (clock ticks after boot), so a reused pid is new.
Key = tuple[int, int]


@dataclass(frozen=True)
class Sample:
    at: float  # time.time()
    server: float
    backends: float
    processes: float


def read_stat(pid: int) -> tuple[float, int, int] | None:
    """(CPU seconds used, start time in ticks, parent pid) of a process; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count from after it.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime, start, parent = fields[11], fields[12], fields[19], fields[1]
    return (int(utime) + int(stime)) / CLOCK_TICKS, int(start), int(parent)


def children(pid: int) -> list[int]:
    """The direct children of a process (any of its threads may have started them)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", "rb") as file:
                found += [int(child) for child in file.read().split()]
    except OSError:
        pass
    return found


def title(pid: int) -> str:
    """A process's title: for PostgreSQL's, what ``ps`` shows (``postgres: ...``)."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, UnicodeDecodeError):
        return ""


def database_of(process_title: str) -> str | None:
    """The database a PostgreSQL process title names, if any.

    Backends read ``postgres: [cluster: ]USER DATABASE HOST(PORT) STATE``, autovacuum
    workers ``postgres: [cluster: ]autovacuum worker DATABASE``.
    """
    words = process_title.removeprefix("postgres:").split()
    if words and words[0].endswith(":"):  # the cluster_name, when one is set
        words = words[1:]
    if words[:2] == ["autovacuum", "worker"]:
        return words[2] if len(words) > 2 else None
    return words[1] if len(words) > 1 else None


def is_background(process_title: str) -> bool:
    return any(name in process_title for name in BACKGROUND)


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
        if not PROC.joinpath("self", "stat").exists():
            raise RuntimeError("CPU figures read /proc: Linux only")
        self.postmaster = postmaster_pid
        self.databases = frozenset(databases)
        self.exclude = frozenset(exclude)
        self.interval = interval
        self.samples: list[Sample] = []
        self._roots = list(processes)
        # Per group: process -> [CPU at first sight, CPU at last sight].
        self._seen: dict[str, dict[Key, list[float]]] = {
            "server": {},
            "backends": {},
            "processes": {},
        }
        self._groups: dict[Key, tuple[str, ...]] = {}  # a server process's groups, once read
        self._started_ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-watch", daemon=True)

    def watch(self, pid: int) -> None:
        """Count ``pid`` (and its children) among ``processes`` from now on."""
        self._roots.append(pid)

    def start(self) -> CpuWatch:
        # Processes that started before this instant count from their first sample only.
        uptime = float((PROC / "uptime").read_text().split()[0])
        self._started_ticks = int(uptime * CLOCK_TICKS)
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
        for pid in [self.postmaster, *children(self.postmaster)]:
            if pid not in self.exclude:
                self._count(pid, self._server_groups)
        pending = list(self._roots)
        while pending:
            pid = pending.pop()
            self._count(pid, lambda key: ("processes",))
            pending += children(pid)
        totals = {
            group: sum(last - first for first, last in seen.values())
            for group, seen in self._seen.items()
        }
        sample = Sample(now, totals["server"], totals["backends"], totals["processes"])
        self.samples.append(sample)
        return sample

    def _count(self, pid: int, groups_of: Callable[[Key], tuple[str, ...]]) -> None:
        stat = read_stat(pid)
        if stat is None:  # it exited: its last sample stands
            return
        used, start, _ = stat
        key = (pid, start)
        for group in groups_of(key):
            seen = self._seen[group]
            if key not in seen:
                seen[key] = [used if start < self._started_ticks else 0.0, used]
            seen[key][1] = used

    def _server_groups(self, key: Key) -> tuple[str, ...]:
        # A backend's title changes with its state, never its database: read it once.
        if key not in self._groups:
            process_title = title(key[0])
            if key[0] == self.postmaster or is_background(process_title):
                self._groups[key] = ("server",)
            elif database_of(process_title) in self.databases:
                self._groups[key] = ("server", "backends")
            else:
                self._groups[key] = ()
        return self._groups[key]

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


class ServerElsewhere(RuntimeError):
    """The PostgreSQL server's processes are not this machine's to read (another host, or
    a container with its own process ids)."""


def postmaster_pid(url: str) -> int:
    """The PostgreSQL server's main process, found as the parent of a backend of ours."""
    with psycopg.connect(url, autocommit=True) as conn:
        backend, database = conn.info.backend_pid, conn.info.dbname
        stat = read_stat(backend)
        backend_title = title(backend)
    if stat is None or database_of(backend_title) != database:
        raise ServerElsewhere(
            f"process {backend} here is not our backend on {database!r} ({backend_title!r}):"
            " CPU figures need the PostgreSQL server on this machine, in its process namespace"
        )
    return stat[2]
