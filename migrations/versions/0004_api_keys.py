"""API keys, producer roles mapped to tenants, and the fan-out error on events.

- ``notifier.api_keys``: clients authenticate with ``Authorization: Bearer ntf_<id>_<secret>``;
  only a SHA-256 of the secret is stored.
- ``notifier.producer_tenants``: the tenant each SQL producer's login role publishes for.
  The outbox trigger takes an outbox row's tenant from the inserting login role, so a
  producer cannot publish for another tenant. Producer roles that exist when this revision
  runs published for ``default`` until now and keep doing so.
- ``notifier.events.processing_error``: why processing an event created nothing (an event
  whose rules would fan out to too many notifications).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE notifier.api_keys (
    -- The public part of the key (`ntf_<id>_<secret>`): safe to log and to type in a revoke.
    id                    text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    tenant_id             text NOT NULL REFERENCES notifier.tenants (id),
    name                  text NOT NULL DEFAULT '',
    -- SHA-256 of the secret part. The secret is 256 random bits, so a fast hash is enough:
    -- there is no dictionary to try.
    secret_sha256         bytea NOT NULL CHECK (length(secret_sha256) = 32),
    scopes                text[] NOT NULL CHECK (cardinality(scopes) > 0),
    -- Requests per second and burst for this key; NULL takes the API's defaults.
    rate_limit_per_second double precision CHECK (rate_limit_per_second > 0),
    rate_limit_burst      integer CHECK (rate_limit_burst > 0),
    created_at            timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz,
    revoked_at            timestamptz,
    -- Updated at most once a minute per API process, never on every request.
    last_used_at          timestamptz
);
CREATE INDEX api_keys_tenant_created_at_idx ON notifier.api_keys (tenant_id, created_at);

CREATE TABLE notifier.producer_tenants (
    role_name  name PRIMARY KEY,
    tenant_id  text NOT NULL REFERENCES notifier.tenants (id),
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE notifier.producer_tenants IS
    'The tenant each SQL producer login role publishes for (notifier producer create NAME --tenant T).';
INSERT INTO notifier.producer_tenants (role_name, tenant_id)
SELECT member.rolname, 'default'
FROM pg_auth_members m
JOIN pg_roles member ON member.oid = m.member
JOIN pg_roles grp ON grp.oid = m.roleid
WHERE grp.rolname = 'notifier_producer';

-- NULL means "the inserting role's tenant"; the trigger below fills it in. Rows never stay.
ALTER TABLE notifier.outbox ALTER COLUMN tenant_id DROP DEFAULT,
                            ALTER COLUMN tenant_id DROP NOT NULL;

ALTER TABLE notifier.events ADD COLUMN processing_error text;

-- The tenant comes from session_user: the login role, which a producer cannot change
-- (SET ROLE changes current_user only, and inside this SECURITY DEFINER function
-- current_user is the function's owner anyway). A mapped role publishes for its tenant
-- only; an unmapped one is refused, except the schema's owner or a superuser, who may name
-- any tenant (and gets 'default' without one).
CREATE OR REPLACE FUNCTION notifier.outbox_publish() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
DECLARE
    job_ids bigint[];
    producer_tenant text;
    foreign_tenant text;
BEGIN
    SELECT tenant_id INTO producer_tenant
    FROM notifier.producer_tenants WHERE role_name = session_user;
    IF producer_tenant IS NOT NULL THEN
        SELECT tenant_id INTO foreign_tenant
        FROM outbox_rows WHERE tenant_id <> producer_tenant LIMIT 1;
        IF foreign_tenant IS NOT NULL THEN
            RAISE EXCEPTION 'notifier.outbox: role % publishes for tenant % only, not %',
                session_user, quote_literal(producer_tenant), quote_literal(foreign_tenant)
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    ELSIF NOT (
        (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)
        OR pg_has_role(session_user, (SELECT relowner FROM pg_class
                                      WHERE oid = 'notifier.outbox'::regclass), 'MEMBER')
    ) THEN
        RAISE EXCEPTION 'notifier.outbox: role % publishes for no tenant', session_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'map it with: notifier producer create <role> --tenant <tenant>';
    END IF;

    WITH published AS (
        INSERT INTO notifier.events
            (tenant_id, type, payload, source, external_id, occurred_at, traceparent, producer)
        SELECT coalesce(tenant_id, producer_tenant, 'default'), type, payload, source,
               idempotency_key, occurred_at, traceparent, 'sql'
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

ALTER TABLE notifier.events DROP COLUMN processing_error;
ALTER TABLE notifier.outbox ALTER COLUMN tenant_id SET DEFAULT 'default',
                            ALTER COLUMN tenant_id SET NOT NULL;
DROP TABLE notifier.producer_tenants;
DROP TABLE notifier.api_keys;
"""


def execute_script(sql: str) -> None:
    """Run a multi-statement script as is: no bind-parameter parsing of ':' or '%'."""
    op.get_bind().connection.driver_connection.execute(sql)  # type: ignore[union-attr]


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
