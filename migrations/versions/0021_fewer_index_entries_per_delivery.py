"""Fewer index entries per delivered notification.

A delivery changes a notification's ``status``, ``sent_at`` and ``updated_at``, all indexed,
so its update is never HOT: PostgreSQL writes a new entry into every index whose predicate
the new row satisfies, whether or not that index's columns changed. With the indexes of
revisions up to 0020 a webhook sent without an event, entity or endpoint got nine (the key,
the event, the entity, the lag and the five list indexes), one with an endpoint ten, and its
attempt row four more and a foreign-key check. Now six (seven with an endpoint), and no check. Each
costs CPU and WAL on every delivery, and a pruning vacuum later.

* ``notifications_event_id_idx`` and ``notifications_tenant_entity_id_idx`` leave out rows
  without an event (made through the API) or an entity: every query using them asks for one
  (``event_id = ...``, the foreign key's cascade included; ``entity_id = ...``), which
  PostgreSQL knows implies NOT NULL.
* ``notifications_endpoint_status_idx`` keeps the statuses its queries ask for (pending:
  held notifications, failing an endpoint's; failed and dead: recovering them) and leaves
  out the sent ones, the bulk of every endpoint's rows.
* ``notifications_tenant_sent_at_idx`` (0013) is gone: the overview's delivery lag is read
  from the delivered attempts instead, each now carrying the time its notification was due
  (``delivery_attempts.due_at``, in the index the attempts chart already reads). The attempt
  is written anyway; the notification's lag entry was one more per delivery. The attempts of
  the last day (what the overview charts) get theirs from their notifications.
* ``delivery_attempts.notification_id`` no longer references ``notifications``: its check
  locked the notification row again for every attempt (a row lock, with its WAL record,
  on a row the same statement has just updated), and the statement that writes attempts
  only writes them for the notifications it updated (a join on the UPDATE's RETURNING).
  Nothing deletes notifications, so the cascade never ran.

Revision ID: 0021 (the lead may renumber this on merge)
Revises: 0020
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

UPGRADE = r"""
DROP INDEX notifier.notifications_event_id_idx;
CREATE INDEX notifications_event_id_idx ON notifier.notifications (event_id)
    WHERE event_id IS NOT NULL;
DROP INDEX notifier.notifications_tenant_entity_id_idx;
CREATE INDEX notifications_tenant_entity_id_idx ON notifier.notifications (tenant_id, entity_id)
    WHERE entity_id IS NOT NULL;
DROP INDEX notifier.notifications_endpoint_status_idx;
CREATE INDEX notifications_endpoint_status_idx
    ON notifier.notifications (endpoint_id, status, updated_at)
    WHERE endpoint_id IS NOT NULL AND status IN ('pending', 'failed', 'dead');

ALTER TABLE notifier.delivery_attempts ADD COLUMN due_at timestamptz;
COMMENT ON COLUMN notifier.delivery_attempts.due_at IS
    'A delivered attempt: when its notification was due (its send_at then); the lag is finished_at - due_at.';
UPDATE notifier.delivery_attempts AS a SET due_at = n.send_at
FROM notifier.notifications AS n
WHERE n.id = a.notification_id AND a.outcome = 'delivered'
  AND a.finished_at >= now() - interval '1 day';
DROP INDEX notifier.delivery_attempts_tenant_finished_at_idx;
CREATE INDEX delivery_attempts_tenant_finished_at_idx
    ON notifier.delivery_attempts (tenant_id, finished_at) INCLUDE (outcome, due_at);
DROP INDEX notifier.notifications_tenant_sent_at_idx;

ALTER TABLE notifier.delivery_attempts DROP CONSTRAINT delivery_attempts_notification_id_fkey;
"""

DOWNGRADE = r"""
DELETE FROM notifier.delivery_attempts AS a
WHERE NOT EXISTS (SELECT FROM notifier.notifications AS n WHERE n.id = a.notification_id);
ALTER TABLE notifier.delivery_attempts ADD CONSTRAINT delivery_attempts_notification_id_fkey
    FOREIGN KEY (notification_id) REFERENCES notifier.notifications (id) ON DELETE CASCADE;

CREATE INDEX notifications_tenant_sent_at_idx
    ON notifier.notifications (tenant_id, sent_at) INCLUDE (send_at) WHERE sent_at IS NOT NULL;
DROP INDEX notifier.delivery_attempts_tenant_finished_at_idx;
CREATE INDEX delivery_attempts_tenant_finished_at_idx
    ON notifier.delivery_attempts (tenant_id, finished_at) INCLUDE (outcome);
ALTER TABLE notifier.delivery_attempts DROP COLUMN due_at;

DROP INDEX notifier.notifications_endpoint_status_idx;
CREATE INDEX notifications_endpoint_status_idx
    ON notifier.notifications (endpoint_id, status, updated_at) WHERE endpoint_id IS NOT NULL;
DROP INDEX notifier.notifications_tenant_entity_id_idx;
CREATE INDEX notifications_tenant_entity_id_idx ON notifier.notifications (tenant_id, entity_id);
DROP INDEX notifier.notifications_event_id_idx;
CREATE INDEX notifications_event_id_idx ON notifier.notifications (event_id);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
