"""``notifier dev`` on a machine without PostgreSQL: an embedded server from ``pgserver``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from notifier.settings import Settings

logger = logging.getLogger("notifier.dev")
# The user pgserver runs PostgreSQL as when started by root (pgserver.postgres_server).
EMBEDDED_SYSTEM_USER = "pgserver"


def server_answers(database_url: str) -> bool:
    """Whether a PostgreSQL server accepts connections at ``database_url``'s address."""
    maintenance = make_conninfo(database_url, dbname="postgres", connect_timeout=3)
    try:
        with psycopg.connect(maintenance):
            return True
    except psycopg.OperationalError:
        return False


@contextmanager
def local_database(settings: Settings, data_dir: str) -> Iterator[Settings]:
    """Settings aimed at a reachable PostgreSQL: the configured one, or an embedded one."""
    if server_answers(settings.database_url):
        logger.info("using PostgreSQL at %s", _without_password(settings.database_url))
        yield settings
        return
    try:
        import pgserver  # noqa: PLC0415 - optional: the package's `embedded` extra
    except ImportError:
        raise SystemExit(
            "no PostgreSQL answers at NOTIFIER_DATABASE_URL and the embedded one is not "
            "installed: run `uv run --no-dev --extra embedded notifier dev` (installed: "
            "pip install 'notifier[embedded]')"
        ) from None
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    logger.warning(
        "no PostgreSQL answers at %s; starting an embedded one with its data in %s",
        _without_password(settings.database_url),
        path,
    )
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root; pgserver does this without a word.
        logger.warning(
            "running as root: the embedded PostgreSQL runs as the system user %r, which "
            "pgserver creates with useradd if it is missing, and pgserver makes the "
            "directories above %s traversable for that user",
            EMBEDDED_SYSTEM_USER,
            path,
        )
    server = pgserver.get_server(path, cleanup_mode="stop")  # type: ignore[attr-defined]
    dbname = str(conninfo_to_dict(settings.database_url).get("dbname") or "notifier")
    try:
        url = server.get_uri(database=dbname)
        # stdout, like the key: what the developer copies into another terminal.
        print(f"NOTIFIER_DATABASE_URL={url}", flush=True)  # noqa: T201
        logger.info(
            "the embedded database's URL is printed above: export it for `notifier tenants "
            "...` and the other commands, or run `psql '%s'`",
            url,
        )
        yield settings.replace(database_url=url)
    finally:
        # Also on SIGTERM (the dev command turns it into KeyboardInterrupt), so that the
        # server stops and pgserver forgets this process.
        server.cleanup()
        if (path / "postmaster.pid").exists():
            logger.info("left the embedded PostgreSQL running for another process using it")
        else:
            logger.info("stopped the embedded PostgreSQL")


def _without_password(database_url: str) -> str:
    params = conninfo_to_dict(database_url)
    params.pop("password", None)
    return make_conninfo("", **params)
