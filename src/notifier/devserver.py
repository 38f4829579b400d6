"""``notifier dev`` on a machine without PostgreSQL: an embedded server from ``pgserver``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from notifier.settings import Settings

logger = logging.getLogger("notifier.dev")


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
        import pgserver  # noqa: PLC0415 - optional, installed with the dev dependencies
    except ImportError:
        raise SystemExit(
            "no PostgreSQL answers at NOTIFIER_DATABASE_URL and the embedded server is not "
            "installed: run `uv sync` (dev dependencies include pgserver)"
        ) from None
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    logger.warning(
        "no PostgreSQL answers at %s; starting an embedded one with its data in %s",
        _without_password(settings.database_url),
        path,
    )
    server = pgserver.get_server(path, cleanup_mode="stop")  # type: ignore[attr-defined]
    dbname = str(conninfo_to_dict(settings.database_url).get("dbname") or "notifier")
    try:
        yield settings.replace(database_url=server.get_uri(database=dbname))
    finally:
        server.cleanup()


def _without_password(database_url: str) -> str:
    params = conninfo_to_dict(database_url)
    params.pop("password", None)
    return make_conninfo("", **params)
