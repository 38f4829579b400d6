"""A real PgBouncer in transaction mode, in front of one database of the test's PostgreSQL.

Debian's ``pgbouncer`` (``.ci/run`` installs it). PgBouncer refuses to run as root, so as
root it runs as ``nobody``, in a temporary directory it owns. Its config names only the
test's database: like a pooler an operator is given, it exposes nothing else (no
``postgres`` database to create one from).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.support import free_port

RUN_AS_WHEN_ROOT = "nobody"


def find_pgbouncer() -> str | None:
    """The pgbouncer binary (Debian installs it in /usr/sbin, outside a user's PATH)."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")


class PgBouncer:
    """Start, reconfigure and stop one PgBouncer on a free loopback port."""

    def __init__(self, binary: str, database_url: str, *, pool_size: int = 4) -> None:
        self.binary = binary
        target = conninfo_to_dict(database_url)
        self.dbname = str(target["dbname"])
        self.server = f"host={target['host']} port={target['port']} dbname={self.dbname}"
        self.user = str(target.get("user") or "postgres")
        self.pool_size = pool_size
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="notifier-pgbouncer-"))
        self.config = self.base / "pgbouncer.ini"
        self.log = self.base / "pgbouncer.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.run_as: str | None = RUN_AS_WHEN_ROOT if os.geteuid() == 0 else None

    def url(self) -> str:
        """Where clients connect: the database's name, through PgBouncer."""
        return make_conninfo(
            "", host="127.0.0.1", port=self.port, user=self.user, dbname=self.dbname
        )

    def write_config(self, server: str | None = None) -> None:
        """The config: one database (``server``: its libpq target), transaction pooling."""
        (self.base / "users.txt").write_text(f'"{self.user}" ""\n')
        self.config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"{self.dbname} = {server or self.server}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {self.base / 'users.txt'}",
                    # The admin console, reached through the pgbouncer database.
                    f"admin_users = {self.user}",
                    "pool_mode = transaction",
                    # Few server connections for many clients: every client's transactions
                    # land on connections that other clients' transactions used before.
                    f"default_pool_size = {self.pool_size}",
                    "max_client_conn = 500",
                    f"logfile = {self.log}",
                    # Fail fast when the server cannot be reached (default 15 s).
                    "server_login_retry = 1",
                    "query_wait_timeout = 2",
                    "",
                ]
            )
        )
        if self.run_as is not None:
            owner = pwd.getpwnam(self.run_as)
            for path in (self.base, *self.base.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)

    def start(self) -> None:
        """Run PgBouncer in the foreground of a child process; return once it accepts."""
        self.write_config()
        owner = pwd.getpwnam(self.run_as) if self.run_as is not None else None
        self.process = subprocess.Popen(
            [self.binary, str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            extra_groups=[] if owner else None,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, f"pgbouncer exited: {self.log_text()}"
            with (
                contextlib.suppress(psycopg.OperationalError),
                psycopg.connect(self.admin_url(), autocommit=True, connect_timeout=2),
            ):
                return
            assert time.monotonic() < deadline, f"pgbouncer did not start: {self.log_text()}"
            time.sleep(0.1)

    def admin_url(self) -> str:
        return make_conninfo(
            "", host="127.0.0.1", port=self.port, user=self.user, dbname="pgbouncer"
        )

    def admin(self, command: str) -> list[tuple[object, ...]]:
        """Run an admin console command (``SHOW POOLS``, ``RELOAD``...): its rows, if any."""
        with psycopg.connect(self.admin_url(), autocommit=True, prepare_threshold=None) as conn:
            cursor = conn.execute(command.encode())  # the console takes no parameters
            return cursor.fetchall() if cursor.description else []

    def point_at(self, server: str) -> None:
        """Send the database's new server connections to ``server`` (libpq key=value)."""
        self.write_config(server)
        self.admin("RELOAD")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.base, ignore_errors=True)
