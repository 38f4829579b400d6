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

ALTER TABLE notifier.events ADD COLUMN processing_error text;

-- No default: a row that names no tenant gets the inserting role's, from the trigger below.
ALTER TABLE notifier.outbox ALTER COLUMN tenant_id DROP DEFAULT;

-- The tenant comes from session_user: the login role, which a producer cannot change
-- (SET ROLE changes current_user only, and inside this SECURITY DEFINER function
-- current_user is the function's owner anyway). A mapped role publishes for its tenant
-- only; an unmapped one is refused, except the schema's owner or a superuser, who may name
-- any tenant (and gets 'default' without one). The statement trigger of revision 0003
-- then copies each row's tenant_id onto its event.
CREATE FUNCTION notifier.outbox_assign_tenant() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, public
AS $$
DECLARE
    producer_tenant text;
BEGIN
    SELECT tenant_id INTO producer_tenant
    FROM notifier.producer_tenants WHERE role_name = session_user;
    IF producer_tenant IS NOT NULL THEN
        IF NEW.tenant_id IS NOT NULL AND NEW.tenant_id <> producer_tenant THEN
            RAISE EXCEPTION 'notifier.outbox: role % publishes for tenant % only, not %',
                session_user, quote_literal(producer_tenant), quote_literal(NEW.tenant_id)
                USING ERRCODE = 'insufficient_privilege', COLUMN = 'tenant_id';
        END IF;
        NEW.tenant_id := producer_tenant;
    ELSIF (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)
          OR pg_has_role(session_user, (SELECT relowner FROM pg_class
                                        WHERE oid = 'notifier.outbox'::regclass), 'MEMBER') THEN
        NEW.tenant_id := coalesce(NEW.tenant_id, 'default');
    ELSE
        RAISE EXCEPTION 'notifier.outbox: role % publishes for no tenant', session_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'map it with: notifier producer create <role> --tenant <tenant>';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER outbox_assign_tenant
    BEFORE INSERT ON notifier.outbox
    FOR EACH ROW EXECUTE FUNCTION notifier.outbox_assign_tenant();
"""

DOWNGRADE = r"""
DROP TRIGGER outbox_assign_tenant ON notifier.outbox;
DROP FUNCTION notifier.outbox_assign_tenant();
ALTER TABLE notifier.outbox ALTER COLUMN tenant_id SET DEFAULT 'default';
ALTER TABLE notifier.events DROP COLUMN processing_error;
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
