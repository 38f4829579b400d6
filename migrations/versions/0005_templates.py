"""Message templates each tenant manages through ``/api/v1/templates/``.

Built-in templates ship with the code; a tenant's template of the same name overrides one.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE notifier.templates (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   text NOT NULL REFERENCES notifier.tenants (id),
    name        text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$'),
    description text NOT NULL DEFAULT '',
    subject     text NOT NULL,
    text_body   text NOT NULL,
    -- NULL: text only (SMS, or plain email).
    html_body   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT templates_tenant_id_name_key UNIQUE (tenant_id, name)
);
"""

DOWNGRADE = "DROP TABLE notifier.templates;"


def execute_script(sql: str) -> None:
    """Run a multi-statement script as is: no bind-parameter parsing of ':' or '%'."""
    op.get_bind().connection.driver_connection.execute(sql)  # type: ignore[union-attr]


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
