"""SQL for tenants' templates. Functions never commit."""

from __future__ import annotations

import uuid

from notifier.db import Connection
from notifier.templates.schemas import Template, TemplateReplace, template_from_row

# Both writes insert the same way and differ in what a clash of names does.
_INSERT = """
INSERT INTO notifier.templates (tenant_id, name, description, subject, text_body, html_body)
VALUES (%(tenant_id)s, %(name)s, %(description)s, %(subject)s, %(text_body)s, %(html_body)s)
"""


async def get_template(conn: Connection, tenant_id: str, name: str) -> Template | None:
    """The tenant's template called ``name``, or None."""
    cursor = await conn.execute(
        "SELECT * FROM notifier.templates WHERE tenant_id = %s AND name = %s", [tenant_id, name]
    )
    row = await cursor.fetchone()
    return template_from_row(row) if row else None


async def get_templates(conn: Connection, tenant_id: str, names: list[str]) -> dict[str, Template]:
    """Those of the tenant's templates called one of ``names``, by name."""
    cursor = await conn.execute(
        "SELECT * FROM notifier.templates WHERE tenant_id = %s AND name = ANY(%s)",
        [tenant_id, names],
    )
    return {row["name"]: template_from_row(row) for row in await cursor.fetchall()}


async def list_templates(conn: Connection, tenant_id: str) -> list[Template]:
    """The tenant's templates by name."""
    cursor = await conn.execute(
        "SELECT * FROM notifier.templates WHERE tenant_id = %s ORDER BY name", [tenant_id]
    )
    return [template_from_row(row) for row in await cursor.fetchall()]


async def insert_template(
    conn: Connection, tenant_id: str, name: str, data: TemplateReplace
) -> Template | None:
    """Store a new template; None if the tenant already has one called ``name``."""
    cursor = await conn.execute(
        _INSERT + "ON CONFLICT (tenant_id, name) DO NOTHING RETURNING *",
        _values(tenant_id, name, data),
    )
    row = await cursor.fetchone()
    return template_from_row(row) if row else None


async def upsert_template(
    conn: Connection, tenant_id: str, name: str, data: TemplateReplace
) -> tuple[Template, bool]:
    """Create or replace the tenant's template ``name``; True if it was created."""
    cursor = await conn.execute(
        _INSERT
        + """
        ON CONFLICT (tenant_id, name) DO UPDATE
        SET description = excluded.description,
            subject = excluded.subject,
            text_body = excluded.text_body,
            html_body = excluded.html_body,
            updated_at = now()
        -- xmax is 0 on a freshly inserted row version, set on an updated one.
        RETURNING *, (xmax = 0) AS created
        """,
        _values(tenant_id, name, data),
    )
    row = await cursor.fetchone()
    assert row is not None
    return template_from_row(row), bool(row["created"])


async def delete_template(conn: Connection, tenant_id: str, name: str) -> bool:
    """Remove the tenant's template ``name``. True if it existed."""
    cursor = await conn.execute(
        "DELETE FROM notifier.templates WHERE tenant_id = %s AND name = %s", [tenant_id, name]
    )
    return cursor.rowcount == 1


async def rules_using(conn: Connection, tenant_id: str, name: str) -> list[uuid.UUID]:
    """The tenant's routing rules that name template ``name``."""
    cursor = await conn.execute(
        """
        SELECT id FROM notifier.routing_rules
        WHERE tenant_id = %s AND template = %s
        ORDER BY created_at, id
        """,
        [tenant_id, name],
    )
    return [row["id"] for row in await cursor.fetchall()]


def _values(tenant_id: str, name: str, data: TemplateReplace) -> dict[str, object]:
    return {
        "tenant_id": tenant_id,
        "name": name,
        "description": data.description,
        "subject": data.subject,
        "text_body": data.text_body,
        "html_body": data.html_body,
    }
