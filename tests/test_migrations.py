"""The schema is made by the migrations only, and every revision walks up and down cleanly."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory
from procrastinate.schema import SchemaManager
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from notifier import migrate
from notifier.rate_limits.gcra import MAX_BURST, MIN_PER_SECOND


def load_revision(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def schema_objects(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """
            SELECT table_schema || '.' || table_name FROM information_schema.tables
            WHERE table_schema IN ('public', 'notifier') AND table_name <> 'alembic_version'
            UNION ALL
            SELECT 'function ' || p.proname FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
            UNION ALL
            SELECT 'type ' || t.typname FROM pg_type t
            JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE n.nspname = 'public' AND t.typname LIKE 'procrastinate%'
            """
        ).fetchall()
    return {row[0] for row in rows}


def test_every_revision_upgrades_downgrades_and_upgrades_again(database_url: str) -> None:
    at_head = schema_objects(database_url)
    assert {"notifier.events", "notifier.notifications", "public.procrastinate_jobs"} <= at_head

    revisions = list(
        reversed(
            list(ScriptDirectory.from_config(migrate.alembic_config(database_url)).walk_revisions())
        )
    )
    migrate.downgrade(database_url, "base")
    assert schema_objects(database_url) == set()
    for revision in revisions:
        migrate.upgrade(database_url, revision.revision)
        previous = revision.down_revision or "base"
        assert isinstance(previous, str), "merge revisions are not expected"
        migrate.downgrade(database_url, previous)
        migrate.upgrade(database_url, revision.revision)

    assert schema_objects(database_url) == at_head


def test_initial_revision_matches_the_installed_procrastinate_schema() -> None:
    """Fails loudly when procrastinate ships schema changes that need a new revision."""
    initial = load_revision(migrate.migrations_dir() / "versions" / "0001_initial.py")
    shipped = sorted(Path(SchemaManager.get_migrations_path()).glob("*.sql"))

    assert shipped[-1].stem == initial.PROCRASTINATE_SCHEMA_VERSION, (
        "procrastinate ships newer schema migrations: add an Alembic revision applying "
        f"{[p.name for p in shipped if p.stem > initial.PROCRASTINATE_SCHEMA_VERSION]}"
    )


def test_migrate_command_creates_a_missing_database_and_upgrades_it(database_url: str) -> None:
    fresh_name = str(conninfo_to_dict(database_url)["dbname"]) + "_fresh"
    fresh_url = make_conninfo(database_url, dbname=fresh_name)
    maintenance_url = make_conninfo(database_url, dbname="postgres")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "notifier", "migrate"],
            env={"NOTIFIER_DATABASE_URL": fresh_url, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "database created" in result.stderr
        assert "notifier.events" in schema_objects(fresh_url)

        again = subprocess.run(
            [sys.executable, "-m", "notifier", "migrate"],
            env={"NOTIFIER_DATABASE_URL": fresh_url, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 0, again.stderr
        assert "database exists" in again.stderr
    finally:
        with psycopg.connect(maintenance_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{fresh_name}" WITH (FORCE)')


def test_notifier_tables_live_in_their_own_schema(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows: list[Any] = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema IN ('public', 'notifier')"
        ).fetchall()
    public = {name for schema, name in rows if schema == "public"}
    notifier = {name for schema, name in rows if schema == "notifier"}
    assert {"events", "notifications", "outbox", "routing_rules", "tenants"} <= notifier
    # public holds only the queue's tables and Alembic's bookkeeping.
    assert all(name.startswith("procrastinate_") for name in public - {"alembic_version"})


def test_pending_revisions_names_what_an_upgrade_would_apply(database_url: str) -> None:
    head = ScriptDirectory.from_config(migrate.alembic_config(database_url)).get_current_head()
    assert migrate.pending_revisions(database_url) == []

    migrate.downgrade(database_url, "-1")
    assert migrate.pending_revisions(database_url) == [head]

    migrate.downgrade(database_url, "base")
    assert len(migrate.pending_revisions(database_url)) == len(
        list(ScriptDirectory.from_config(migrate.alembic_config(database_url)).walk_revisions())
    )


def test_pending_revisions_refuses_a_revision_it_does_not_know(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")

    with pytest.raises(migrate.UnknownRevisionError, match="9999"):
        migrate.pending_revisions(database_url)


def test_rate_limits_stored_outside_the_bounds_are_clamped_and_their_buckets_restarted(
    database_url: str,
) -> None:
    """Before revision 0012 the API stored a limit of 1e-300 per second, which made every
    delivery of the channel fail; the revision brings such rows within the bounds."""
    migrate.downgrade(database_url, "0011")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO notifier.rate_limits (tenant_id, channel, per_second, burst) VALUES"
            " ('default', 'webhook', 1e-300, 1), ('default', 'sms', 1e-9, 5000000),"
            " ('default', 'email', 5, 2)"
        )
        # A bucket a limit of one send in 31 years pushed out (sms), and ordinary ones.
        conn.execute(
            "INSERT INTO notifier.rate_limit_buckets (tenant_id, channel, tat, queue_tat)"
            " VALUES ('default', 'sms', now() + interval '31 years', now()),"
            " ('default', 'webhook', now(), now()), ('default', 'email', now(), now())"
        )
        conn.execute(
            "INSERT INTO notifier.api_keys (id, tenant_id, secret_sha256, scopes,"
            " rate_limit_per_second, rate_limit_burst)"
            " VALUES ('0123456789abcdef', 'default', sha256(''), '{admin}', 1e-300, 2000000000)"
        )

    migrate.upgrade(database_url)

    with psycopg.connect(database_url) as conn:
        limits = conn.execute(
            "SELECT channel, per_second, burst FROM notifier.rate_limits ORDER BY channel"
        ).fetchall()
        buckets = conn.execute(
            "SELECT channel FROM notifier.rate_limit_buckets ORDER BY channel"
        ).fetchall()
        key = conn.execute(
            "SELECT rate_limit_per_second, rate_limit_burst FROM notifier.api_keys"
            " WHERE id = '0123456789abcdef'"
        ).fetchone()
    assert limits == [
        ("email", 5.0, 2),
        ("sms", MIN_PER_SECOND, MAX_BURST),
        ("webhook", MIN_PER_SECOND, 1),
    ]
    assert buckets == [("email",)]
    assert key == (MIN_PER_SECOND, MAX_BURST)
