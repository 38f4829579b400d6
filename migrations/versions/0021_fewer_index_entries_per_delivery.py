"""Fewer index entries per delivered notification.

A delivery changes a notification's ``status``, ``sent_at`` and ``updated_at``, all indexed,
so its update is never HOT: PostgreSQL writes a new entry into every index whose predicate
the new row satisfies, whether or not that index's columns changed. With the indexes of
revisions up to 0020 a webhook sent without an event, entity or endpoint got nine (the key,
the event, the entity, the lag and the five list indexes); one with an endpoint, ten. Each
costs CPU and WAL on every delivery, and a pruning vacuum later.

* ``notifications_event_id_idx`` and ``notifications_tenant_entity_id_idx`` leave out rows
  without an event (made through the API) or an entity: every query using them asks for one
  (``event_id = ...``, the foreign key's cascade included; ``entity_id = ...``), which
  PostgreSQL knows implies NOT NULL.
* ``notifications_endpoint_status_idx`` keeps the statuses its queries ask for (pending:
  held notifications, failing an endpoint's; failed and dead: recovering them) and leaves
  out the sent ones, the bulk of every endpoint's rows.

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
"""

DOWNGRADE = r"""
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
