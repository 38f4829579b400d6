"""Rate limits lie within the bounds their arithmetic handles.

A tenant's limit of 1e-300 per second was stored, and every delivery of its channel then
failed with OverflowError (1e-12: "date value out of range") until the limit was deleted.
The API now refuses such limits (notifier.rate_limits.gcra: 0.001 to 1,000,000 per second,
bursts of 1 to 1,000,000); these constraints hold every stored one to the same bounds, for
tenants' limits and API keys' alike. Stored limits outside them are clamped to the nearest
bound, and the bucket of a limit that was too slow is started afresh: its next send time
may have been pushed out by as many years as one interval lasted.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# notifier.rate_limits.gcra.MIN_PER_SECOND, MAX_PER_SECOND and MAX_BURST when written.
UPGRADE = r"""
DELETE FROM notifier.rate_limit_buckets AS b
USING notifier.rate_limits AS l
WHERE b.tenant_id = l.tenant_id AND b.channel = l.channel AND l.per_second < 0.001::float8;

UPDATE notifier.rate_limits
SET per_second = least(greatest(per_second, 0.001::float8), 1000000::float8),
    burst = least(burst, 1000000)
WHERE per_second NOT BETWEEN 0.001::float8 AND 1000000::float8 OR burst > 1000000;

UPDATE notifier.api_keys
SET rate_limit_per_second = least(greatest(rate_limit_per_second, 0.001::float8), 1000000::float8),
    rate_limit_burst = least(rate_limit_burst, 1000000)
WHERE rate_limit_per_second NOT BETWEEN 0.001::float8 AND 1000000::float8
   OR rate_limit_burst > 1000000;

ALTER TABLE notifier.rate_limits
    DROP CONSTRAINT rate_limits_per_second_check,
    DROP CONSTRAINT rate_limits_burst_check,
    ADD CONSTRAINT rate_limits_per_second_check
        CHECK (per_second BETWEEN 0.001::float8 AND 1000000::float8),
    ADD CONSTRAINT rate_limits_burst_check CHECK (burst BETWEEN 1 AND 1000000);

ALTER TABLE notifier.api_keys
    DROP CONSTRAINT api_keys_rate_limit_per_second_check,
    DROP CONSTRAINT api_keys_rate_limit_burst_check,
    ADD CONSTRAINT api_keys_rate_limit_per_second_check
        CHECK (rate_limit_per_second BETWEEN 0.001::float8 AND 1000000::float8),
    ADD CONSTRAINT api_keys_rate_limit_burst_check
        CHECK (rate_limit_burst BETWEEN 1 AND 1000000);
"""

# The clamped values stay as they are: they satisfy the old constraints too.
DOWNGRADE = r"""
ALTER TABLE notifier.api_keys
    DROP CONSTRAINT api_keys_rate_limit_per_second_check,
    DROP CONSTRAINT api_keys_rate_limit_burst_check,
    ADD CONSTRAINT api_keys_rate_limit_per_second_check CHECK (rate_limit_per_second > 0),
    ADD CONSTRAINT api_keys_rate_limit_burst_check CHECK (rate_limit_burst > 0);

ALTER TABLE notifier.rate_limits
    DROP CONSTRAINT rate_limits_per_second_check,
    DROP CONSTRAINT rate_limits_burst_check,
    ADD CONSTRAINT rate_limits_per_second_check CHECK (per_second > 0),
    ADD CONSTRAINT rate_limits_burst_check CHECK (burst >= 1);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
