"""Notifications remember the W3C trace context they were created in.

A deliver job may run days later; the worker continues the trace of the request or event
that scheduled it from this column, as process_event does from ``events.traceparent``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE notifier.notifications ADD COLUMN traceparent text")


def downgrade() -> None:
    op.execute("ALTER TABLE notifier.notifications DROP COLUMN traceparent")
