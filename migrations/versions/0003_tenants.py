"""Tenants: every event, rule, notification and outbox row belongs to one.

Existing rows, and producers that do not say otherwise, belong to the tenant ``default``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE notifier.tenants (
    -- A short slug operators type: `notifier keys create --tenant acme`.
    id         text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name       text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO notifier.tenants (id, name) VALUES ('default', 'Default tenant');

ALTER TABLE notifier.events
    ADD COLUMN tenant_id text NOT NULL DEFAULT 'default' REFERENCES notifier.tenants (id);
ALTER TABLE notifier.routing_rules
    ADD COLUMN tenant_id text NOT NULL DEFAULT 'default' REFERENCES notifier.tenants (id);
ALTER TABLE notifier.notifications
    ADD COLUMN tenant_id text NOT NULL DEFAULT 'default' REFERENCES notifier.tenants (id);
ALTER TABLE notifier.outbox
    ADD COLUMN tenant_id text NOT NULL DEFAULT 'default' REFERENCES notifier.tenants (id);

-- Lists are per tenant, newest first: lead with the tenant.
DROP INDEX notifier.events_created_at_id_idx;
DROP INDEX notifier.events_type_created_at_id_idx;
CREATE INDEX events_tenant_created_at_id_idx
    ON notifier.events (tenant_id, created_at DESC, id DESC);
CREATE INDEX events_tenant_type_created_at_id_idx
    ON notifier.events (tenant_id, type, created_at DESC, id DESC);
DROP INDEX notifier.notifications_created_at_id_idx;
DROP INDEX notifier.notifications_status_created_at_idx;
DROP INDEX notifier.notifications_type_created_at_idx;
DROP INDEX notifier.notifications_entity_id_idx;
CREATE INDEX notifications_tenant_created_at_id_idx
    ON notifier.notifications (tenant_id, created_at DESC, id DESC);
CREATE INDEX notifications_tenant_status_created_at_idx
    ON notifier.notifications (tenant_id, status, created_at DESC, id DESC);
CREATE INDEX notifications_tenant_type_created_at_idx
    ON notifier.notifications (tenant_id, notification_type, created_at DESC, id DESC);
CREATE INDEX notifications_tenant_entity_id_idx
    ON notifier.notifications (tenant_id, entity_id);
DROP INDEX notifier.routing_rules_event_type_idx;
CREATE INDEX routing_rules_tenant_event_type_idx
    ON notifier.routing_rules (tenant_id, event_type) WHERE enabled;

-- A CloudEvent's source + id identify it within its tenant: two tenants may reuse ids.
DROP INDEX notifier.events_source_external_id_key;
CREATE UNIQUE INDEX events_tenant_source_external_id_key
    ON notifier.events (tenant_id, (coalesce(source, '')), external_id)
    WHERE external_id IS NOT NULL;

-- Idempotency keys are per tenant too.
ALTER TABLE notifier.idempotency_keys
    ADD COLUMN tenant_id text NOT NULL DEFAULT 'default' REFERENCES notifier.tenants (id),
    DROP CONSTRAINT idempotency_keys_pkey,
    ADD PRIMARY KEY (tenant_id, scope, key);

CREATE OR REPLACE FUNCTION notifier.outbox_publish() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
DECLARE
    job_ids bigint[];
BEGIN
    WITH published AS (
        INSERT INTO notifier.events
            (tenant_id, type, payload, source, external_id, occurred_at, traceparent, producer)
        SELECT tenant_id, type, payload, source, idempotency_key, occurred_at, traceparent, 'sql'
        FROM outbox_rows
        ORDER BY id
        ON CONFLICT (tenant_id, (coalesce(source, '')), external_id)
            WHERE external_id IS NOT NULL DO NOTHING
        RETURNING id
    )
    SELECT procrastinate_defer_jobs_v1(
        ARRAY(
            SELECT ROW(
                'events',                                          -- queue
                'notifier.process_event',                          -- task name
                0,                                                 -- priority
                NULL,                                              -- lock
                NULL,                                              -- queueing lock
                jsonb_build_object('event_id', published.id::text),
                NULL                                               -- scheduled_at: now
            )::procrastinate_job_to_defer_v1
            FROM published
        )
    ) INTO job_ids;
    DELETE FROM notifier.outbox WHERE id IN (SELECT id FROM outbox_rows);
    RETURN NULL;
END;
$$;
"""

DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION notifier.outbox_publish() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
DECLARE
    job_ids bigint[];
BEGIN
    WITH published AS (
        INSERT INTO notifier.events (type, payload, source, external_id, occurred_at, traceparent, producer)
        SELECT type, payload, source, idempotency_key, occurred_at, traceparent, 'sql'
        FROM outbox_rows
        ORDER BY id
        ON CONFLICT ((coalesce(source, '')), external_id) WHERE external_id IS NOT NULL DO NOTHING
        RETURNING id
    )
    SELECT procrastinate_defer_jobs_v1(
        ARRAY(
            SELECT ROW(
                'events', 'notifier.process_event', 0, NULL, NULL,
                jsonb_build_object('event_id', published.id::text), NULL
            )::procrastinate_job_to_defer_v1
            FROM published
        )
    ) INTO job_ids;
    DELETE FROM notifier.outbox WHERE id IN (SELECT id FROM outbox_rows);
    RETURN NULL;
END;
$$;

ALTER TABLE notifier.idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE notifier.idempotency_keys DROP COLUMN tenant_id;
ALTER TABLE notifier.idempotency_keys ADD PRIMARY KEY (scope, key);

DROP INDEX notifier.events_tenant_source_external_id_key;
CREATE UNIQUE INDEX events_source_external_id_key
    ON notifier.events ((coalesce(source, '')), external_id) WHERE external_id IS NOT NULL;

DROP INDEX notifier.routing_rules_tenant_event_type_idx;
CREATE INDEX routing_rules_event_type_idx ON notifier.routing_rules (event_type) WHERE enabled;
DROP INDEX notifier.notifications_tenant_entity_id_idx;
DROP INDEX notifier.notifications_tenant_type_created_at_idx;
DROP INDEX notifier.notifications_tenant_status_created_at_idx;
DROP INDEX notifier.notifications_tenant_created_at_id_idx;
CREATE INDEX notifications_created_at_id_idx
    ON notifier.notifications (created_at DESC, id DESC);
CREATE INDEX notifications_status_created_at_idx
    ON notifier.notifications (status, created_at DESC, id DESC);
CREATE INDEX notifications_entity_id_idx ON notifier.notifications (entity_id);
CREATE INDEX notifications_type_created_at_idx
    ON notifier.notifications (notification_type, created_at DESC, id DESC);
DROP INDEX notifier.events_tenant_type_created_at_id_idx;
DROP INDEX notifier.events_tenant_created_at_id_idx;
CREATE INDEX events_created_at_id_idx ON notifier.events (created_at DESC, id DESC);
CREATE INDEX events_type_created_at_id_idx ON notifier.events (type, created_at DESC, id DESC);

ALTER TABLE notifier.outbox DROP COLUMN tenant_id;
ALTER TABLE notifier.notifications DROP COLUMN tenant_id;
ALTER TABLE notifier.routing_rules DROP COLUMN tenant_id;
ALTER TABLE notifier.events DROP COLUMN tenant_id;
DROP TABLE notifier.tenants;
"""


def execute_script(sql: str) -> None:
    """Run a multi-statement script as is: no bind-parameter parsing of ':' or '%'."""
    op.get_bind().connection.driver_connection.execute(sql)  # type: ignore[union-attr]


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
