"""The SQL outbox: producers INSERT events in their own transactions; a trigger enqueues them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import re

from alembic import op
from procrastinate.schema import SchemaManager

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- Who published an event ('api', 'sql'), and the W3C trace context it came with.
ALTER TABLE notifier.events
    ADD COLUMN producer    text NOT NULL DEFAULT 'api',
    ADD COLUMN traceparent text;

-- CloudEvents `source` + `id` (or an outbox idempotency key) identify an event once. A partial
-- unique index, so events without an id never collide and a missing source counts as ''.
ALTER TABLE notifier.events DROP CONSTRAINT events_source_external_id_key;
CREATE UNIQUE INDEX events_source_external_id_key
    ON notifier.events ((coalesce(source, '')), external_id) WHERE external_id IS NOT NULL;

-- The producers' contract. Rows pass through: the trigger below moves them into
-- notifier.events and enqueues their processing in the inserting transaction.
CREATE TABLE notifier.outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type            text NOT NULL,
    payload         jsonb NOT NULL DEFAULT '{}',
    source          text,
    idempotency_key text,
    occurred_at     timestamptz,
    traceparent     text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE notifier.outbox IS
    'Insert events here in your own transaction; they are processed if and only if it commits. See docs/outbox.md.';

-- Tell the producer at once, with a message worth reading, what is wrong with a row.
CREATE FUNCTION notifier.outbox_check_row() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.type IS NULL OR NEW.type !~ '^\S{1,200}$' THEN
        RAISE EXCEPTION 'notifier.outbox: type must be 1 to 200 characters without spaces, got %',
            coalesce(quote_literal(NEW.type), 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'type';
    END IF;
    IF NEW.payload IS NULL OR jsonb_typeof(NEW.payload) <> 'object' THEN
        RAISE EXCEPTION 'notifier.outbox: payload must be a JSON object, got %',
            coalesce(jsonb_typeof(NEW.payload), 'NULL')
            USING ERRCODE = 'check_violation', COLUMN = 'payload';
    END IF;
    -- The same bound as the REST API's (deeper documents could not be read back): is there
    -- a value 65 levels below the document itself?
    IF jsonb_path_exists(NEW.payload, 'strict $.**{65}') THEN
        RAISE EXCEPTION 'notifier.outbox: payload must not nest deeper than 64 levels'
            USING ERRCODE = 'check_violation', COLUMN = 'payload';
    END IF;
    IF NEW.idempotency_key IS NOT NULL AND length(NEW.idempotency_key) > 255 THEN
        RAISE EXCEPTION 'notifier.outbox: idempotency_key must be at most 255 characters'
            USING ERRCODE = 'check_violation', COLUMN = 'idempotency_key';
    END IF;
    IF NEW.traceparent IS NOT NULL
       AND NEW.traceparent !~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$' THEN
        RAISE EXCEPTION 'notifier.outbox: traceparent must be a W3C traceparent, got %',
            quote_literal(NEW.traceparent)
            USING ERRCODE = 'check_violation', COLUMN = 'traceparent';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER outbox_check_row
    BEFORE INSERT ON notifier.outbox
    FOR EACH ROW EXECUTE FUNCTION notifier.outbox_check_row();

-- One statement, however many rows: copy them into events (a repeated idempotency key is
-- skipped, not an error, so the producer's transaction goes on) and defer one process_event
-- job per new event with procrastinate's versioned SQL function. SECURITY DEFINER: producers
-- may only INSERT into the outbox, never touch events or the queue themselves.
CREATE FUNCTION notifier.outbox_publish() RETURNS trigger
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

CREATE TRIGGER outbox_publish
    AFTER INSERT ON notifier.outbox
    REFERENCING NEW TABLE AS outbox_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifier.outbox_publish();

-- The group role producers' login roles join (`notifier producer create NAME`). Roles are
-- cluster-wide, so it may exist already; its grants are per database.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'notifier_producer') THEN
        CREATE ROLE notifier_producer NOLOGIN;
    END IF;
-- Roles belong to the cluster: two databases of one cluster migrated at the same moment
-- both see no role, and the second CREATE fails. The role either made is the same.
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END $$;
GRANT USAGE ON SCHEMA notifier TO notifier_producer;
GRANT INSERT ON notifier.outbox TO notifier_producer;

-- Batch the wake-up. procrastinate notifies listening workers once per inserted job with the
-- job id in the payload, so a 10,000-row outbox insert sent 20,000 notifications. Without the
-- id, PostgreSQL folds a transaction's identical notifications into one per channel; and jobs
-- scheduled for later need no wake-up (workers find them by polling).
CREATE OR REPLACE FUNCTION procrastinate_notify_queue_job_inserted_v1() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    -- clock_timestamp(), not now(): a job the same transaction schedules "now" from the
    -- application's clock is later than the transaction's start. One second covers clock skew.
    IF NEW.scheduled_at IS NULL OR NEW.scheduled_at <= clock_timestamp() + interval '1 second' THEN
        PERFORM pg_notify('procrastinate_queue_v1#' || NEW.queue_name, '{"type": "job_inserted"}');
        PERFORM pg_notify('procrastinate_any_queue_v1', '{"type": "job_inserted"}');
    END IF;
    RETURN NEW;
END;
$$;
"""

DOWNGRADE = """
REVOKE ALL ON notifier.outbox FROM notifier_producer;
REVOKE USAGE ON SCHEMA notifier FROM notifier_producer;
DROP TABLE notifier.outbox;
DROP FUNCTION notifier.outbox_publish();
DROP FUNCTION notifier.outbox_check_row();
DROP INDEX notifier.events_source_external_id_key;
ALTER TABLE notifier.events
    ADD CONSTRAINT events_source_external_id_key UNIQUE (source, external_id),
    DROP COLUMN producer,
    DROP COLUMN traceparent;
"""


def procrastinate_original(function: str) -> str:
    """procrastinate's own definition of ``function``, from the schema of the installed version."""
    schema = SchemaManager.get_schema()
    match = re.search(rf"CREATE FUNCTION {function}\(\).*?\n\$\$;", schema, flags=re.DOTALL)
    if match is None:
        raise RuntimeError(f"{function} is not in procrastinate's schema any more")
    return match.group(0).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def execute_script(sql: str) -> None:
    """Run a multi-statement script as is: no bind-parameter parsing of ':' or '%'."""
    op.get_bind().connection.driver_connection.execute(sql)  # type: ignore[union-attr]


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
    execute_script(procrastinate_original("procrastinate_notify_queue_job_inserted_v1"))
