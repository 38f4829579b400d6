"""Initial schema: procrastinate's queue and notifier's tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op
from procrastinate.schema import SchemaManager

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The newest migration file shipped with the procrastinate version whose schema this revision
# installs. Upgrading procrastinate means a new revision applying the files after this one;
# tests/test_migrations.py fails loudly when the installed package ships newer files.
PROCRASTINATE_SCHEMA_VERSION = "03.04.00_50_post_add_retry_failed_job_procedure"

NOTIFIER_SCHEMA = """
CREATE SCHEMA notifier;

CREATE TABLE notifier.events (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    type         text NOT NULL CHECK (type <> '' AND length(type) <= 200),
    payload      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(payload) = 'object'),
    -- CloudEvents `source` and `id`: together a natural idempotency key for producers.
    source       text,
    external_id  text,
    occurred_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    CONSTRAINT events_source_external_id_key UNIQUE (source, external_id)
);
CREATE INDEX events_created_at_id_idx ON notifier.events (created_at DESC, id DESC);
CREATE INDEX events_type_created_at_id_idx ON notifier.events (type, created_at DESC, id DESC);

CREATE TABLE notifier.routing_rules (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL DEFAULT '',
    -- Exact type ('user.signup'), prefix pattern ('payment.*') or every event ('*').
    event_type      text NOT NULL CHECK (event_type <> ''),
    channel         text NOT NULL,
    -- Who receives it: a dotted path into the event payload, or one fixed recipient.
    recipient_field text,
    recipient       text,
    -- Dotted path to the target date in the payload; NULL sends when the event arrives.
    date_field      text,
    lead_times      interval[] NOT NULL DEFAULT '{0}',
    template        text,
    enabled         boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT routing_rules_one_recipient_check
        CHECK ((recipient_field IS NULL) <> (recipient IS NULL)),
    CONSTRAINT routing_rules_lead_times_check CHECK (cardinality(lead_times) >= 1)
);
CREATE INDEX routing_rules_event_type_idx ON notifier.routing_rules (event_type) WHERE enabled;

CREATE TABLE notifier.notifications (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id          uuid REFERENCES notifier.events (id) ON DELETE CASCADE,
    rule_id           uuid REFERENCES notifier.routing_rules (id) ON DELETE SET NULL,
    notification_type text NOT NULL CHECK (notification_type <> ''),
    entity_id         text,
    channel           text NOT NULL,
    recipient         text NOT NULL,
    email             text,
    phone             text,
    template          text,
    -- What the channel renders from: the event payload, or the request's `data`.
    context           jsonb NOT NULL DEFAULT '{}',
    target_date       timestamptz,
    lead_time         interval NOT NULL DEFAULT '0',
    send_at           timestamptz NOT NULL,
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN (
                          'pending', 'sent', 'cancelled', 'expired', 'skipped', 'failed', 'dead')),
    -- Attempts in the current round; a replay starts a new round.
    attempts          integer NOT NULL DEFAULT 0,
    last_error        text,
    -- The procrastinate job that will (or did) deliver it, for cancel and for admins.
    job_id            bigint,
    sent_at           timestamptz,
    cancelled_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_created_at_id_idx
    ON notifier.notifications (created_at DESC, id DESC);
CREATE INDEX notifications_status_created_at_idx
    ON notifier.notifications (status, created_at DESC, id DESC);
CREATE INDEX notifications_event_id_idx ON notifier.notifications (event_id);
CREATE INDEX notifications_entity_id_idx ON notifier.notifications (entity_id);
CREATE INDEX notifications_type_created_at_idx
    ON notifier.notifications (notification_type, created_at DESC, id DESC);

CREATE TABLE notifier.delivery_attempts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id uuid NOT NULL REFERENCES notifier.notifications (id) ON DELETE CASCADE,
    attempt         integer NOT NULL,
    job_id          bigint,
    channel         text NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed')),
    status_code     integer,
    error           text,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX delivery_attempts_notification_id_idx
    ON notifier.delivery_attempts (notification_id, id);

-- Responses to POSTs that carried an Idempotency-Key, replayed to repeated requests.
CREATE TABLE notifier.idempotency_keys (
    scope           text NOT NULL,
    key             text NOT NULL,
    request_hash    text NOT NULL,
    response_status integer,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_at_idx ON notifier.idempotency_keys (created_at);
"""

DROP_PROCRASTINATE = """
DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers,
    procrastinate_jobs, procrastinate_workers CASCADE;
DO $$
DECLARE fn regprocedure;
BEGIN
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
              JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate\\_%'
    LOOP
        EXECUTE 'DROP FUNCTION ' || fn || ' CASCADE';
    END LOOP;
END $$;
DROP TYPE IF EXISTS procrastinate_job_status, procrastinate_job_event_type,
    procrastinate_job_to_defer_v1 CASCADE;
"""


def execute_script(sql: str) -> None:
    """Run a multi-statement script as is: no bind-parameter parsing of ':' or '%'."""
    op.get_bind().connection.driver_connection.execute(sql)  # type: ignore[union-attr]


def upgrade() -> None:
    execute_script(SchemaManager.get_schema())
    execute_script(NOTIFIER_SCHEMA)


def downgrade() -> None:
    execute_script("DROP SCHEMA notifier CASCADE;")
    execute_script(DROP_PROCRASTINATE)
