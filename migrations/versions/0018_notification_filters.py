"""Indexes for finding a tenant's notifications by recipient and by channel, newest first.

The dashboard's list and the API's (``GET /api/v1/notifications/?recipient=...``) filter
by recipient and channel, newest first, a page at a time. With only the tenant's
``(tenant_id, created_at DESC, id DESC)`` index, a page of a recipient's notifications walks
the tenant's newer rows one by one until it has found a page of matches (3.3 s at p95 among
1,000,000 of them); with ``(tenant_id, recipient, created_at DESC, id DESC)`` it reads the
page's rows and no others, as the status and type filters already did. Likewise for the
channel: a rare channel among millions of webhooks is found as fast as a common one.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE INDEX notifications_tenant_recipient_created_at_idx
    ON notifier.notifications (tenant_id, recipient, created_at DESC, id DESC);
CREATE INDEX notifications_tenant_channel_created_at_idx
    ON notifier.notifications (tenant_id, channel, created_at DESC, id DESC);
"""

DOWNGRADE = r"""
DROP INDEX notifier.notifications_tenant_channel_created_at_idx;
DROP INDEX notifier.notifications_tenant_recipient_created_at_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
