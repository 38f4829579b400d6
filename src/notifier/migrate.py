"""Schema management: the migrations are the only way notifier's schema is made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import create_engine, exc, pool

from notifier.db import connect_options
from notifier.settings import Settings


def migrations_dir() -> Path:
    """The Alembic scripts: beside ``src/`` in a checkout, packaged inside the wheel."""
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    return Path(str(resources.files("notifier") / "_migrations"))


def alembic_config(database_url: str, connect: Mapping[str, Any] | None = None) -> Config:
    """An Alembic config aimed at ``database_url`` (no alembic.ini needed).

    ``connect``: keyword arguments of the connection (:func:`notifier.db.connect_options`).
    """
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = database_url
    config.attributes["connect_options"] = dict(connect or {})
    return config


def create_database_if_missing(database_url: str, connect: Mapping[str, Any] | None = None) -> bool:
    """Create the database named in ``database_url`` unless it exists. True if created.

    The database itself is tried first: a pooler such as PgBouncer often exposes only it,
    not the ``postgres`` database that creating one needs. Only when it does not answer is
    ``postgres`` asked; if that fails too, the first error is the one that explains.
    """
    options = dict(connect or {})
    try:
        with psycopg.connect(database_url, **options):
            return False
    except psycopg.OperationalError as unreachable:
        target_error = unreachable
    params = conninfo_to_dict(database_url)
    dbname = str(params.get("dbname") or params.get("user") or "postgres")
    maintenance_url = make_conninfo(database_url, dbname="postgres")
    try:
        with psycopg.connect(maintenance_url, autocommit=True, **options) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [dbname]
            ).fetchone()
            if exists:
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            return True
    except psycopg.OperationalError:
        raise target_error from None


def upgrade(
    database_url: str, revision: str = "head", connect: Mapping[str, Any] | None = None
) -> None:
    """Upgrade the schema to ``revision``."""
    command.upgrade(alembic_config(database_url, connect), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the schema to ``revision`` (``base`` removes everything)."""
    command.downgrade(alembic_config(database_url), revision)


class UnknownRevisionError(LookupError):
    """The database is at a revision these migrations do not contain (a newer release's)."""


def pending_revisions(database_url: str, connect: Mapping[str, Any] | None = None) -> list[str]:
    """Revisions not yet applied to the database, oldest first; empty when it is at head.

    Only reads. A database that is missing or unreachable raises ``psycopg.OperationalError``;
    one migrated by a newer release raises :class:`UnknownRevisionError`.
    """
    script = ScriptDirectory.from_config(alembic_config(database_url))
    options = dict(connect or {})
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(database_url, **options),
        poolclass=pool.NullPool,
    )
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_heads()
    except exc.DBAPIError as error:
        if isinstance(error.orig, psycopg.Error):
            raise error.orig from None  # the driver's own error, as everywhere else in notifier
        raise
    finally:
        engine.dispose()
    try:
        pending = list(script.iterate_revisions(tuple(script.get_heads()), current or "base"))
    except RevisionError as error:
        raise UnknownRevisionError(f"database at revision {', '.join(current)}") from error
    return [revision.revision for revision in reversed(pending)]


def migrate(settings: Settings) -> bool:
    """Create the database if needed and upgrade it to head. True if it was created."""
    options = connect_options(settings)
    created = create_database_if_missing(settings.database_url, options)
    upgrade(settings.database_url, connect=options)
    return created


@dataclass(frozen=True, slots=True)
class SchemaScripts:
    """The revisions this code ships: its heads, and every revision it knows."""

    heads: frozenset[str]
    known: frozenset[str]


def schema_scripts() -> SchemaScripts:
    """Read the migration scripts (files only; no database)."""
    scripts = ScriptDirectory.from_config(alembic_config(""))
    return SchemaScripts(
        heads=frozenset(scripts.get_heads()),
        known=frozenset(revision.revision for revision in scripts.walk_revisions()),
    )
