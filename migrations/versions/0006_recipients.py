"""Recipient opt-outs, quiet hours and time zones, per-channel delivery rate limits.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- One row per opt-out. NULL channel: every channel; NULL notification_type: every type
-- ('invoice.*' is a prefix pattern, as in routing rules). Recipients compare case-insensitively.
CREATE TABLE notifier.recipient_preferences (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         text NOT NULL REFERENCES notifier.tenants (id),
    recipient         text NOT NULL CHECK (recipient <> ''),
    channel           text CHECK (channel <> ''),
    notification_type text CHECK (notification_type <> ''),
    reason            text NOT NULL DEFAULT '',
    -- 'api' or 'unsubscribe_link': who recorded it.
    source            text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'unsubscribe_link')),
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX recipient_preferences_scope_key ON notifier.recipient_preferences
    (tenant_id, lower(recipient), coalesce(channel, ''), coalesce(notification_type, ''));

-- Opted-out notifications end 'suppressed', never sent.
ALTER TABLE notifier.notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifier.notifications ADD CONSTRAINT notifications_status_check CHECK (status IN (
    'pending', 'sent', 'cancelled', 'expired', 'skipped', 'failed', 'dead', 'suppressed'));

-- The recipient's IANA zone (lead times in days are counted in it) and a quiet window in
-- its local time ({"start": "22:00", "end": "08:00"}) that send times are moved out of.
-- A rule may read each recipient's zone from the event payload (timezone_field), falling back
-- to its fixed timezone.
ALTER TABLE notifier.routing_rules
    ADD COLUMN timezone text,
    ADD COLUMN timezone_field text,
    ADD COLUMN quiet_hours jsonb;
ALTER TABLE notifier.notifications
    ADD COLUMN timezone text,
    ADD COLUMN quiet_hours jsonb;

-- Per-tenant overrides of the NOTIFIER_RATE_LIMIT_<CHANNEL>_PER_SECOND defaults.
CREATE TABLE notifier.rate_limits (
    tenant_id  text NOT NULL REFERENCES notifier.tenants (id),
    channel    text NOT NULL CHECK (channel <> ''),
    per_second double precision NOT NULL CHECK (per_second > 0),
    burst      integer NOT NULL DEFAULT 1 CHECK (burst >= 1),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, channel)
);

-- GCRA state shared by every worker: `tat` is the theoretical arrival time of the next send;
-- `queue_tat` spreads the retry times handed to sends that found no token.
CREATE TABLE notifier.rate_limit_buckets (
    tenant_id text NOT NULL REFERENCES notifier.tenants (id),
    channel   text NOT NULL,
    tat       timestamptz NOT NULL,
    queue_tat timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, channel)
);
"""

DOWNGRADE = r"""
DROP TABLE notifier.rate_limit_buckets;
DROP TABLE notifier.rate_limits;
ALTER TABLE notifier.notifications DROP COLUMN quiet_hours, DROP COLUMN timezone;
ALTER TABLE notifier.routing_rules
    DROP COLUMN quiet_hours, DROP COLUMN timezone_field, DROP COLUMN timezone;
UPDATE notifier.notifications SET status = 'cancelled' WHERE status = 'suppressed';
ALTER TABLE notifier.notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifier.notifications ADD CONSTRAINT notifications_status_check CHECK (status IN (
    'pending', 'sent', 'cancelled', 'expired', 'skipped', 'failed', 'dead'));
DROP TABLE notifier.recipient_preferences;
"""


def execute_script(sql: str) -> None:
    """Run a multi-statement script as is: no bind-parameter parsing of ':' or '%'."""
    op.get_bind().connection.driver_connection.execute(sql)  # type: ignore[union-attr]


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
