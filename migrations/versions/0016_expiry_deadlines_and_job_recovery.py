"""Expiry only by a deadline the client gave, and stalled-job recovery that reads indexes.

* ``notifications.expires_at``: the client's deliver-by (``expires_at`` on
  ``POST /api/v1/notifications/``, or a rule's ``deliver_within`` after the send time).
  Past it, a notification is ``expired`` and says so in ``last_error``. Without one, a
  notification expires only when its target date passed more than
  ``NOTIFIER_EXPIRY_GRACE_SECONDS`` before it could be sent (counted from when it was
  accepted, so that an outage or backlog of our own cannot use the grace up); one due at its
  target date (lead time 0) never does (docs/architecture.md).
* ``routing_rules.deliver_within``: the deadline a rule gives its notifications.
* ``notifier_jobs_doing_without_worker_idx``: jobs left running by a worker that is gone
  (procrastinate sets ``worker_id`` NULL when it prunes one). Workers now look for stalled
  jobs every second by default; without this index the look would read every waiting job.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE notifier.notifications ADD COLUMN expires_at timestamptz;
COMMENT ON COLUMN notifier.notifications.expires_at IS
    'The client''s deliver-by: not sent after it (status expired). NULL: no deadline.';
ALTER TABLE notifier.routing_rules ADD COLUMN deliver_within interval;
COMMENT ON COLUMN notifier.routing_rules.deliver_within IS
    'Notifications of this rule expire this long after their send time. NULL: never.';

CREATE INDEX notifier_jobs_doing_without_worker_idx ON procrastinate_jobs (id)
    WHERE status = 'doing' AND worker_id IS NULL;
"""

DOWNGRADE = r"""
DROP INDEX notifier_jobs_doing_without_worker_idx;
ALTER TABLE notifier.routing_rules DROP COLUMN deliver_within;
ALTER TABLE notifier.notifications DROP COLUMN expires_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
