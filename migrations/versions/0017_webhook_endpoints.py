"""Webhook endpoints each tenant manages, and a signing secret per tenant.

* ``notifier.tenant_webhook_secrets``: the secret that signs a tenant's bare-URL webhooks
  (made on first need), replacing the one service-wide ``NOTIFIER_WEBHOOK_SECRET`` with
  which any tenant could forge messages to any other's receivers. Secrets are stored as
  Fernet tokens (``NOTIFIER_SECRETS_KEYS``), never in the clear.
* ``notifier.endpoints``: a tenant's receivers: URL, filter, headers, rate limit, enabled
  state with its reason, and a secret with an optional previous one during a rotation's
  overlap. ``UNIQUE (tenant_id, id)`` lets notifications and rules reference an endpoint
  together with their own tenant, so no row can name another tenant's endpoint.
* ``notifier.endpoint_health``: failures since the last success, per endpoint, written by
  deliveries (a row of its own, so deliveries never lock the endpoint row itself); the
  maintenance task disables endpoints failing too long.
* ``notifier.endpoint_events``: the record of every disable and enable (who, why, when).
* ``notifications.endpoint_id``/``held_since``: a notification to an endpoint, and whether
  it waits for its disabled endpoint (no job, no attempt spent) until re-enabled.
* ``delivery_attempts``: the endpoint, the duration and the answer's first KiB, for the
  endpoint's attempt log (newest first, keyset paged on ``id``).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0017"
# Re-chained after 0015 (reminder keys, merged first): its rule constraint is extended here.
down_revision = "0016"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE notifier.tenant_webhook_secrets (
    tenant_id           text PRIMARY KEY,
    secret              text NOT NULL,
    previous_secret     text,
    previous_expires_at timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    rotated_at          timestamptz
);
COMMENT ON TABLE notifier.tenant_webhook_secrets IS
    'Signing secret of each tenant''s bare-URL webhooks, Fernet-encrypted. See docs/security.md.';

CREATE TABLE notifier.endpoints (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id           text NOT NULL,
    url                 text NOT NULL,
    description         text NOT NULL DEFAULT '',
    -- NULL: every type; else exact types, 'prefix.*' patterns or '*'.
    type_filter         text[],
    headers             jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
    rate_per_second     double precision,
    rate_burst          integer,
    enabled             boolean NOT NULL DEFAULT true,
    disabled_reason     text,
    disabled_at         timestamptz,
    -- Fernet tokens of "whsec_..." secrets; emptied when the endpoint is deleted.
    secret              text NOT NULL,
    previous_secret     text,
    previous_expires_at timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- Deleted endpoints are kept (their attempts and notifications refer to them) but
    -- are invisible to the API and refuse every delivery.
    deleted_at          timestamptz,
    CONSTRAINT endpoints_tenant_id_id_key UNIQUE (tenant_id, id)
);
CREATE INDEX endpoints_tenant_created_at_idx
    ON notifier.endpoints (tenant_id, created_at, id) WHERE deleted_at IS NULL;

CREATE TABLE notifier.endpoint_health (
    endpoint_id   uuid PRIMARY KEY REFERENCES notifier.endpoints (id) ON DELETE CASCADE,
    -- The first failed attempt since the last delivered one; NULL while healthy.
    failing_since timestamptz,
    failures      integer NOT NULL DEFAULT 0,
    last_attempt_at timestamptz
);

CREATE TABLE notifier.endpoint_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id uuid NOT NULL REFERENCES notifier.endpoints (id) ON DELETE CASCADE,
    tenant_id   text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('disabled', 'enabled', 'auto_disabled')),
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX endpoint_events_endpoint_id_idx ON notifier.endpoint_events (endpoint_id, id);

ALTER TABLE notifier.notifications
    ADD COLUMN endpoint_id uuid,
    ADD COLUMN held_since timestamptz,
    ADD CONSTRAINT notifications_endpoint_fkey FOREIGN KEY (tenant_id, endpoint_id)
        REFERENCES notifier.endpoints (tenant_id, id);
CREATE INDEX notifications_endpoint_status_idx
    ON notifier.notifications (endpoint_id, status, updated_at) WHERE endpoint_id IS NOT NULL;

ALTER TABLE notifier.routing_rules
    ADD COLUMN endpoint_id uuid,
    ADD CONSTRAINT routing_rules_endpoint_fkey FOREIGN KEY (tenant_id, endpoint_id)
        REFERENCES notifier.endpoints (tenant_id, id),
    DROP CONSTRAINT routing_rules_action_fields_check,
    ADD CONSTRAINT routing_rules_action_fields_check CHECK (
        CASE action
            WHEN 'notify' THEN channel IS NOT NULL AND CASE
                WHEN endpoint_id IS NULL THEN (recipient_field IS NULL) <> (recipient IS NULL)
                ELSE recipient_field IS NULL AND recipient IS NULL END
            ELSE key IS NOT NULL AND channel IS NULL AND recipient_field IS NULL
                AND recipient IS NULL AND endpoint_id IS NULL
        END);

ALTER TABLE notifier.delivery_attempts
    ADD COLUMN endpoint_id uuid REFERENCES notifier.endpoints (id) ON DELETE SET NULL,
    ADD COLUMN duration_ms integer,
    ADD COLUMN answer text;
CREATE INDEX delivery_attempts_endpoint_id_idx
    ON notifier.delivery_attempts (endpoint_id, id DESC) WHERE endpoint_id IS NOT NULL;
"""

DOWNGRADE = r"""
DROP INDEX notifier.delivery_attempts_endpoint_id_idx;
ALTER TABLE notifier.delivery_attempts
    DROP COLUMN endpoint_id, DROP COLUMN duration_ms, DROP COLUMN answer;
DELETE FROM notifier.routing_rules WHERE endpoint_id IS NOT NULL;
ALTER TABLE notifier.routing_rules
    DROP CONSTRAINT routing_rules_action_fields_check,
    DROP CONSTRAINT routing_rules_endpoint_fkey,
    DROP COLUMN endpoint_id,
    ADD CONSTRAINT routing_rules_action_fields_check CHECK (
        CASE action
            WHEN 'notify' THEN channel IS NOT NULL AND (recipient_field IS NULL) <> (recipient IS NULL)
            ELSE key IS NOT NULL AND channel IS NULL AND recipient_field IS NULL AND recipient IS NULL
        END);
DROP INDEX notifier.notifications_endpoint_status_idx;
ALTER TABLE notifier.notifications
    DROP CONSTRAINT notifications_endpoint_fkey,
    DROP COLUMN endpoint_id,
    DROP COLUMN held_since;
DROP TABLE notifier.endpoint_events;
DROP TABLE notifier.endpoint_health;
DROP TABLE notifier.endpoints;
DROP TABLE notifier.tenant_webhook_secrets;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
