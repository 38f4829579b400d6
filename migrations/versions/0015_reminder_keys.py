"""Reminders that follow the data: superseding keys, cancel rules, keys on notifications.

* ``routing_rules.key``: a template over payload fields (``"{user_id}"``); a new event for a
  key supersedes the rule's pending reminders of that key. ``routing_rules.action``:
  ``notify`` (every rule so far) or ``cancel`` (cancels the pending reminders of the rules
  with the same key template, making none; such a rule has no channel or recipient).
* ``notifications.key``: the rendered key (rules) or the one the API was given;
  ``cancelled_by_event_id``: the event whose rule superseded or cancelled it;
  ``replaced_by_id``: the notification that replaced it through the API. Status
  ``superseded``: a newer event or request for its key took its place.
* ``notifications_pending_key_idx``: finding a tenant's pending notifications of one key,
  which every event of a keyed rule does.
* Digests: ``routing_rules.digest`` (``{"window": "PT10M"}``) collects a key's events into
  one notification per window. ``notifications.digest_count`` counts the events in a digest
  (NULL: no digest), ``digest_open`` says whether events may still join it; the unique
  index allows one open pending digest per (tenant, rule, key) at any time.
* ``notifier.reminder_keys``: the latest event of each (tenant, rule, key), by
  ``occurred_at`` (else when it was stored). An event older than it arrives late: it does
  not supersede, its own reminders are stored superseded instead.

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE notifier.routing_rules
    ADD COLUMN key text CHECK (key <> '' AND length(key) <= 200),
    ADD COLUMN action text NOT NULL DEFAULT 'notify' CHECK (action IN ('notify', 'cancel')),
    ALTER COLUMN channel DROP NOT NULL;
ALTER TABLE notifier.routing_rules DROP CONSTRAINT routing_rules_one_recipient_check;
ALTER TABLE notifier.routing_rules ADD CONSTRAINT routing_rules_action_fields_check CHECK (
    CASE action
        WHEN 'notify' THEN channel IS NOT NULL AND (recipient_field IS NULL) <> (recipient IS NULL)
        ELSE key IS NOT NULL AND channel IS NULL AND recipient_field IS NULL AND recipient IS NULL
    END);

ALTER TABLE notifier.notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifier.notifications ADD CONSTRAINT notifications_status_check CHECK (status IN (
    'pending', 'sent', 'cancelled', 'expired', 'skipped', 'failed', 'dead', 'suppressed',
    'superseded'));
ALTER TABLE notifier.notifications
    ADD COLUMN key text CHECK (key <> '' AND length(key) <= 200),
    ADD COLUMN cancelled_by_event_id uuid,
    ADD COLUMN replaced_by_id uuid;
CREATE INDEX notifications_pending_key_idx ON notifier.notifications (tenant_id, key)
    WHERE status = 'pending' AND key IS NOT NULL;

ALTER TABLE notifier.routing_rules
    ADD COLUMN digest jsonb CHECK (digest IS NULL OR (jsonb_typeof(digest) = 'object' AND key IS NOT NULL));
ALTER TABLE notifier.notifications
    ADD COLUMN digest_count integer CHECK (digest_count >= 1),
    ADD COLUMN digest_open boolean CHECK ((digest_open IS NULL) = (digest_count IS NULL));
CREATE UNIQUE INDEX notifications_open_digest_idx
    ON notifier.notifications (tenant_id, rule_id, key)
    WHERE status = 'pending' AND digest_open;

CREATE TABLE notifier.reminder_keys (
    tenant_id  text NOT NULL REFERENCES notifier.tenants (id),
    rule_id    uuid NOT NULL REFERENCES notifier.routing_rules (id) ON DELETE CASCADE,
    key        text NOT NULL,
    event_id   uuid NOT NULL,
    -- The event's occurred_at, else its created_at.
    event_time timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, rule_id, key)
);
"""

DOWNGRADE = r"""
DROP TABLE notifier.reminder_keys;
DROP INDEX notifier.notifications_open_digest_idx;
ALTER TABLE notifier.notifications DROP COLUMN digest_count, DROP COLUMN digest_open;
ALTER TABLE notifier.routing_rules DROP COLUMN digest;
DROP INDEX notifier.notifications_pending_key_idx;
UPDATE notifier.notifications SET status = 'cancelled' WHERE status = 'superseded';
ALTER TABLE notifier.notifications
    DROP COLUMN key, DROP COLUMN cancelled_by_event_id, DROP COLUMN replaced_by_id;
ALTER TABLE notifier.notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifier.notifications ADD CONSTRAINT notifications_status_check CHECK (status IN (
    'pending', 'sent', 'cancelled', 'expired', 'skipped', 'failed', 'dead', 'suppressed'));
DELETE FROM notifier.routing_rules WHERE action = 'cancel';
ALTER TABLE notifier.routing_rules DROP CONSTRAINT routing_rules_action_fields_check;
ALTER TABLE notifier.routing_rules ADD CONSTRAINT routing_rules_one_recipient_check
    CHECK ((recipient_field IS NULL) <> (recipient IS NULL));
ALTER TABLE notifier.routing_rules
    ALTER COLUMN channel SET NOT NULL, DROP COLUMN key, DROP COLUMN action;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
