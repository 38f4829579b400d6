"""A PostgreSQL cluster a test owns, so it can stop and start it without touching anyone else's.

Made with the machine's ``initdb``/``pg_ctl`` in a temporary directory on a free loopback
port. PostgreSQL refuses to run as root, so as root the commands run as the ``postgres``
OS user (``runuser``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from psycopg.conninfo import make_conninfo

from tests.support import free_port


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are, newest version first; None if PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found:
        # Resolved: a pg_ctl linked into /usr/local/bin has no pg_basebackup beside it.
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class OwnedCluster:
    """initdb, start, stop (immediate: like a crash) and start again on the same port.

    ``settings`` are extra server settings (``-c name=value``) on top of the defaults here,
    e.g. ``max_connections`` for the chaos suite's 300 idle connections, or
    ``synchronous_standby_names`` for a primary with a synchronous standby.
    """

    def __init__(self, bindir: Path, settings: Mapping[str, str] | None = None) -> None:
        self.bindir = bindir
        self.settings = {"fsync": "off", "max_connections": "200", **(settings or {})}
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="notifier-faults-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.run_as: str | None = None
        if os.geteuid() == 0:
            self.run_as = "postgres"
            owner = pwd.getpwnam(self.run_as)
            os.chown(self.base, owner.pw_uid, owner.pw_gid)

    def _run(self, *command: str) -> None:
        argv = [str(self.bindir / command[0]), *command[1:]]
        if self.run_as is not None:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def base_backup_from(self, primary: OwnedCluster) -> None:
        """Make this cluster a streaming standby of ``primary`` (instead of :meth:`init`):
        ``pg_basebackup -R`` writes ``standby.signal`` and the connection to the primary.
        Its ``application_name`` is ``standby``, the name ``synchronous_standby_names``
        gives on the primary."""
        self._run(
            "pg_basebackup",
            "-D",
            str(self.data),
            "-d",
            make_conninfo(primary.url("postgres"), application_name="standby"),
            "-X",
            "stream",
            "--checkpoint=fast",
            "-R",
            "--no-sync",
        )

    def start(self) -> None:
        options = " ".join(
            [f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"]
            + [f"-c {name}={value}" for name, value in self.settings.items()]
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def promote(self) -> None:
        """A standby becomes a primary (``pg_ctl promote``, waiting until it accepts writes)."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

    def url(self, dbname: str) -> str:
        return make_conninfo("", host="127.0.0.1", port=self.port, user="postgres", dbname=dbname)

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
