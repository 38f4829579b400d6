"""Database roles for SQL producers: they may INSERT into ``notifier.outbox`` and nothing else.

The schema side (table, triggers, the ``notifier_producer`` group role and its grants) is
made by the migrations; this module manages the login roles that join the group, and the
tenant each one publishes for (``notifier.producer_tenants``, read by the outbox trigger).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql

from notifier.tenancy import DEFAULT_TENANT

PRODUCER_GROUP = "notifier_producer"


def create_producer(
    database_url: str,
    name: str,
    password: str | None = None,
    *,
    tenant_id: str = DEFAULT_TENANT,
    connect: Mapping[str, Any] | None = None,
) -> str:
    """Create login role ``name`` in the producer group, publishing for ``tenant_id``.

    Returns its password (generated if None). Role and mapping are one transaction.
    ``connect``: the connection's options (:func:`notifier.db.connect_options`).
    """
    password = password or secrets.token_urlsafe(24)
    with psycopg.connect(database_url, **dict(connect or {})) as conn, conn.transaction():
        if (
            conn.execute("SELECT 1 FROM notifier.tenants WHERE id = %s", [tenant_id]).fetchone()
            is None
        ):
            raise ValueError(f"no tenant {tenant_id!r}; create it with `notifier tenants create`")
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(name), sql.Literal(password), sql.Identifier(PRODUCER_GROUP)
            )
        )
        conn.execute(
            "INSERT INTO notifier.producer_tenants (role_name, tenant_id) VALUES (%s, %s)",
            [name, tenant_id],
        )
    return password


def drop_producer(
    database_url: str, name: str, *, connect: Mapping[str, Any] | None = None
) -> None:
    """Remove a producer's login role, revoking what it was granted in this database."""
    with psycopg.connect(database_url, **dict(connect or {})) as conn, conn.transaction():
        is_producer = conn.execute(
            """
            SELECT 1 FROM pg_auth_members m
            JOIN pg_roles member ON member.oid = m.member
            JOIN pg_roles grp ON grp.oid = m.roleid
            WHERE member.rolname = %s AND grp.rolname = %s
            """,
            [name, PRODUCER_GROUP],
        ).fetchone()
        if is_producer is None:
            raise ValueError(f"{name!r} is not a notifier producer role")
        # Privileges a DBA granted it on the producer's own tables would block DROP ROLE.
        conn.execute("DELETE FROM notifier.producer_tenants WHERE role_name = %s", [name])
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
