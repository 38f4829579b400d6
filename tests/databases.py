"""Each test's own database, cloned from the migrated template before the test asks for it.

``CREATE DATABASE ... TEMPLATE`` takes 0.15 to 0.3 s (0.1 s of the server's CPU): PostgreSQL
copies every page of the template, its catalogs included, through the WAL. ``DROP DATABASE``
waits for a checkpoint (PostgreSQL 15), 0.4 s to over a second on the shared machine.
Tests spend most of their time waiting (on workers, receivers, the database), so one thread
clones the next tests' databases while the current test runs and others drop used ones,
both off the tests' path. Every test still gets a fresh, untouched clone of the template.

Drops run a few at a time: the checkpoint one drop waits for serves the others waiting with
it, so they keep up with the tests where one at a time fell behind (hundreds of databases
left at the end of a parallel run). Only a few: each holds a connection while it waits,
and the server's ``max_connections`` is shared by every test run on the machine.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable
from types import TracebackType

import psycopg
from psycopg import sql


class Clones:
    """Keeps ``ahead`` clones of ``template`` ready; :meth:`take` hands one out and
    :meth:`give_back` has it dropped, by up to ``drop_connections`` at once.
    ``conninfo`` names a maintenance database (``postgres``)."""

    def __init__(
        self, conninfo: str, template: str, *, ahead: int = 2, drop_connections: int = 4
    ) -> None:
        self._conninfo = conninfo
        self._template = template
        self._ahead = ahead
        self._drop_connections = drop_connections
        self._numbers = itertools.count(1)
        self._ready: collections.deque[str] = collections.deque()
        self._used: list[str] = []
        self._closing = False
        self._finished = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._cloner = threading.Thread(target=self._guarded, args=(self._clone,), daemon=True)
        self._dropper = threading.Thread(target=self._guarded, args=(self._drop,), daemon=True)

    def __enter__(self) -> Clones:
        self._cloner.start()
        self._dropper.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._cloner.join(timeout=120)
        with self._changed:
            # Clones made ahead that no test took are dropped too.
            self._used.extend(self._ready)
            self._ready.clear()
            self._finished = True
            self._changed.notify_all()
        self._dropper.join(timeout=300)
        if self._error is not None:
            raise RuntimeError(f"cloning or dropping {self._template}'s clones failed") from (
                self._error
            )

    def take(self, *, timeout: float = 60.0) -> str:
        """The name of a fresh clone, now the caller's."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: self._ready or self._error is not None, timeout=timeout
            ):
                raise TimeoutError(f"no clone of {self._template} within {timeout} s")
            if self._error is not None:
                raise RuntimeError(f"cloning or dropping {self._template}'s clones failed") from (
                    self._error
                )
            name = self._ready.popleft()
            self._changed.notify_all()
            return name

    def give_back(self, name: str) -> None:
        """Have ``name`` dropped (connections still open to it are ended)."""
        with self._changed:
            self._used.append(name)
            self._changed.notify_all()

    def _clone(self) -> None:
        with _connect(self._conninfo) as conn:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._closing or len(self._ready) < self._ahead)
                    if self._closing:
                        return
                    name = f"{self._template.removesuffix('_tmpl')}_{next(self._numbers)}"
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(self._template)
                    )
                )
                with self._changed:
                    self._ready.append(name)
                    self._changed.notify_all()

    def _drop(self) -> None:
        # One connection per drop thread, kept: connecting costs as much as a drop's own work.
        connections: list[psycopg.Connection[tuple[object, ...]]] = []
        local = threading.local()

        def drop(name: str) -> None:
            if not hasattr(local, "conn"):
                local.conn = _connect(self._conninfo)
                connections.append(local.conn)
            local.conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

        try:
            with concurrent.futures.ThreadPoolExecutor(self._drop_connections) as drops:
                pending: list[concurrent.futures.Future[None]] = []
                while True:
                    with self._changed:
                        self._changed.wait_for(lambda: self._finished or self._used)
                        used, self._used = self._used, []
                    if not used:
                        break
                    pending += [drops.submit(drop, name) for name in used]
                    for done in [future for future in pending if future.done()]:
                        pending.remove(done)
                        done.result()
                for future in pending:
                    future.result()
        finally:
            for conn in connections:
                conn.close()

    def _guarded(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as error:  # handed to the next take(), which fails its test
            with self._changed:
                self._error = error
                self._changed.notify_all()


def _connect(conninfo: str, *, patience: float = 30.0) -> psycopg.Connection[tuple[object, ...]]:
    """A connection, waiting out moments when the shared server has no slot left
    ("too many clients": other test runs on the machine use it too)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return psycopg.connect(conninfo, autocommit=True)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
