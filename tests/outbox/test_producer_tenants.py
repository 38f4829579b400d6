"""Each SQL producer role publishes for its own tenant, and only for it."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from notifier import cli, outbox


def role_name(database_url: str) -> str:
    """A role name no other test (or parallel run) uses: roles are cluster-wide."""
    return f"producer_{conninfo_to_dict(database_url)['dbname']}_{secrets.token_hex(3)}"


@pytest.fixture
def acme_producer_url(database_url: str) -> Iterator[str]:
    """A producer login role publishing for tenant "acme"."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO notifier.tenants (id) VALUES ('acme')")
    name = role_name(database_url)
    password = outbox.create_producer(database_url, name, tenant_id="acme")
    yield make_conninfo(database_url, user=name, password=password)
    outbox.drop_producer(database_url, name)


async def tenants_of_events(db: psycopg.AsyncConnection[Any]) -> list[tuple[str, str]]:
    cursor = await db.execute("SELECT tenant_id, type FROM notifier.events ORDER BY type")
    return [(row["tenant_id"], row["type"]) for row in await cursor.fetchall()]


async def test_a_producers_rows_belong_to_its_tenant(
    db: psycopg.AsyncConnection[Any], acme_producer_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(acme_producer_url) as producer:
        await producer.execute("INSERT INTO notifier.outbox (type) VALUES ('a.implicit')")
        await producer.execute(
            "INSERT INTO notifier.outbox (tenant_id, type) VALUES ('acme', 'b.explicit')"
        )
        await producer.commit()

    assert await tenants_of_events(db) == [("acme", "a.implicit"), ("acme", "b.explicit")]


@pytest.mark.parametrize("switch_role", [False, True])
async def test_a_producer_cannot_publish_for_another_tenant(
    db: psycopg.AsyncConnection[Any], acme_producer_url: str, switch_role: bool
) -> None:
    async with await psycopg.AsyncConnection.connect(acme_producer_url) as producer:
        if switch_role:
            # SET ROLE changes current_user, not the login role the tenant comes from.
            await producer.execute("SET ROLE notifier_producer")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="for tenant 'acme' only"):
            await producer.execute(
                "INSERT INTO notifier.outbox (tenant_id, type) "
                "VALUES ('acme', 'ok'), ('default', 'smuggled')"
            )

    assert await tenants_of_events(db) == []


async def test_an_unmapped_role_is_refused_with_the_fix_in_the_hint(
    db: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    name = role_name(database_url)
    await db.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw' IN ROLE notifier_producer").format(
            sql.Identifier(name)
        )
    )
    try:
        url = make_conninfo(database_url, user=name, password="pw")
        async with await psycopg.AsyncConnection.connect(url) as unmapped:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                await unmapped.execute("INSERT INTO notifier.outbox (type) VALUES ('a.b')")
        assert "publishes for no tenant" in str(refused.value)
        assert refused.value.diag.message_hint is not None
        assert "--tenant" in refused.value.diag.message_hint
    finally:
        await db.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
    assert await tenants_of_events(db) == []


async def test_the_owner_may_name_any_tenant_and_defaults_to_default(
    db: psycopg.AsyncConnection[Any],
) -> None:
    await db.execute("INSERT INTO notifier.tenants (id) VALUES ('acme')")

    await db.execute("INSERT INTO notifier.outbox (tenant_id, type) VALUES ('acme', 'a.b')")
    await db.execute("INSERT INTO notifier.outbox (type) VALUES ('c.d')")

    assert await tenants_of_events(db) == [("acme", "a.b"), ("default", "c.d")]


async def test_producer_create_maps_the_role_and_drop_unmaps_it(
    db: psycopg.AsyncConnection[Any],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await db.execute("INSERT INTO notifier.tenants (id) VALUES ('acme')")
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", database_url)
    name = role_name(database_url)

    created = await asyncio.to_thread(cli.main, ["producer", "create", name, "--tenant", "acme"])
    password = capsys.readouterr().out.strip()
    cursor = await db.execute("SELECT role_name, tenant_id FROM notifier.producer_tenants")
    mapped = await cursor.fetchall()
    dropped = await asyncio.to_thread(cli.main, ["producer", "drop", name])
    cursor = await db.execute("SELECT count(*) AS n FROM notifier.producer_tenants")
    remaining = await cursor.fetchone()

    assert (created, dropped) == (0, 0)
    assert password
    assert mapped == [{"role_name": name, "tenant_id": "acme"}]
    assert remaining == {"n": 0}


async def test_producer_create_for_an_unknown_tenant_creates_nothing(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NOTIFIER_DATABASE_URL", database_url)
    name = role_name(database_url)

    status = await asyncio.to_thread(cli.main, ["producer", "create", name, "--tenant", "nope"])

    assert status == 2
    assert "no tenant 'nope'" in capsys.readouterr().err
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone() is None


async def test_a_producers_events_are_processed_by_jobs_naming_its_tenant(
    db: psycopg.AsyncConnection[Any], acme_producer_url: str
) -> None:
    """Workers share out due jobs by tenant (migration 0011)."""
    async with await psycopg.AsyncConnection.connect(acme_producer_url) as producer:
        await producer.execute("INSERT INTO notifier.outbox (type) VALUES ('a.one'), ('b.two')")
        await producer.commit()

    cursor = await db.execute(
        "SELECT args->>'tenant_id' AS tenant_id FROM procrastinate_jobs "
        "WHERE task_name = 'notifier.process_event'"
    )
    assert await cursor.fetchall() == [{"tenant_id": "acme"}, {"tenant_id": "acme"}]
