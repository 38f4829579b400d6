"""Reminder keys can be pruned: when each was last written.

``notifier.reminder_keys`` keeps the latest event of every (tenant, rule, key) ever seen, so
it grows with every new user or subscription. ``held_at`` is when its row was last written
(its latest event was processed); the maintenance task deletes rows written longer ago than
``NOTIFIER_REMINDER_KEYS_RETENTION_DAYS`` whose key has no pending notification of the rule
left. Rows there are on upgrade count as written then, so none goes before a full retention.
``reminder_keys_held_at_idx`` finds the old ones without reading the table.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE notifier.reminder_keys ADD COLUMN held_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX reminder_keys_held_at_idx ON notifier.reminder_keys (held_at);
"""

DOWNGRADE = r"""
DROP INDEX notifier.reminder_keys_held_at_idx;
ALTER TABLE notifier.reminder_keys DROP COLUMN held_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
