"""The dashboard (``/ui``): its sessions and CSRF secret, and what its overview reads fast.

* ``notifier.ui_sessions``: server-side sessions of the dashboard, shared by every API
  process (an in-memory store would sign a user out whenever a load balancer picked another
  process). The cookie carries a random session id; the table keeps only its SHA-256, so a
  reader of the table cannot take over a session. Rows expire (idle and absolute limits,
  ``NOTIFIER_UI_SESSION_*``) and are deleted when read expired and at every sign-in.
* ``notifier.ui_secrets``: the secret that signs the dashboard's CSRF tokens, made once by
  the first API process that needs it, so that every process accepts every other's tokens
  with nothing to configure.
* ``delivery_attempts.tenant_id``: the overview charts a tenant's deliveries per minute by
  outcome over the last day. Through the notifications the attempts belong to, that read
  joins every attempt of every tenant in the window (450 ms for 440,000 attempts of two
  tenants); with the tenant on the attempt it is one index-only range scan (40 ms for one
  tenant's 220,000). The delivery writes it from the notification it updates anyway.
* ``notifications_tenant_sent_at_idx``: the delivery lag (``sent_at - send_at``) of a
  tenant's notifications sent in the last hour and day, read from the index alone.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-09
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE notifier.ui_sessions (
    id_sha256  bytea PRIMARY KEY,
    data       bytea NOT NULL,
    -- NULL: no expiry (the dashboard always sets one).
    expires_at timestamptz
);
CREATE INDEX ui_sessions_expires_at_idx ON notifier.ui_sessions (expires_at);
COMMENT ON TABLE notifier.ui_sessions IS
    'Dashboard sessions (/ui), keyed by the SHA-256 of the id in the cookie. See docs/ui.md.';

CREATE TABLE notifier.ui_secrets (
    name       text PRIMARY KEY,
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE notifier.delivery_attempts ADD COLUMN tenant_id text;
UPDATE notifier.delivery_attempts AS a SET tenant_id = n.tenant_id
FROM notifier.notifications AS n WHERE n.id = a.notification_id;
ALTER TABLE notifier.delivery_attempts ALTER COLUMN tenant_id SET NOT NULL;
CREATE INDEX delivery_attempts_tenant_finished_at_idx
    ON notifier.delivery_attempts (tenant_id, finished_at) INCLUDE (outcome);

CREATE INDEX notifications_tenant_sent_at_idx
    ON notifier.notifications (tenant_id, sent_at) INCLUDE (send_at) WHERE sent_at IS NOT NULL;
"""

DOWNGRADE = r"""
DROP INDEX notifier.notifications_tenant_sent_at_idx;
DROP INDEX notifier.delivery_attempts_tenant_finished_at_idx;
ALTER TABLE notifier.delivery_attempts DROP COLUMN tenant_id;
DROP TABLE notifier.ui_secrets;
DROP TABLE notifier.ui_sessions;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
