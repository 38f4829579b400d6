"""Schema management: the migrations are the only way notifier's schema is made."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import create_engine, exc, pool

from notifier.settings import Settings


def migrations_dir() -> Path:
    """The Alembic scripts: beside ``src/`` in a checkout, packaged inside the wheel."""
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    return Path(str(resources.files("notifier") / "_migrations"))


def alembic_config(database_url: str) -> Config:
    """An Alembic config aimed at ``database_url`` (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = database_url
    return config


def create_database_if_missing(database_url: str) -> bool:
    """Create the database named in ``database_url`` unless it exists. True if created."""
    params = conninfo_to_dict(database_url)
    dbname = str(params.get("dbname") or params.get("user") or "postgres")
    maintenance_url = make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return True


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the schema to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the schema to ``revision`` (``base`` removes everything)."""
    command.downgrade(alembic_config(database_url), revision)


class UnknownRevisionError(LookupError):
    """The database is at a revision these migrations do not contain (a newer release's)."""


def pending_revisions(database_url: str) -> list[str]:
    """Revisions not yet applied to the database, oldest first; empty when it is at head.

    Only reads. A database that is missing or unreachable raises ``psycopg.OperationalError``;
    one migrated by a newer release raises :class:`UnknownRevisionError`.
    """
    script = ScriptDirectory.from_config(alembic_config(database_url))
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(database_url),
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
    created = create_database_if_missing(settings.database_url)
    upgrade(settings.database_url)
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
