"""Queue tables: vacuum and analyze them often, since they turn over constantly.

Every job is inserted, updated at least twice (fetched, finished) and eventually pruned,
and each status change adds a ``procrastinate_events`` row. With PostgreSQL's defaults
(vacuum after 20% of a table is dead, analyze after 10% changed) a queue of a million
scheduled jobs carries 200,000 dead rows before anything is cleaned, and every fetch
walks past them. Here both happen after 2% (and at least 1,000 rows).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

QUEUE_TABLES_AUTOVACUUM = """
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 1000
"""

UPGRADE = f"""
ALTER TABLE procrastinate_jobs SET ({QUEUE_TABLES_AUTOVACUUM});
ALTER TABLE procrastinate_events SET ({QUEUE_TABLES_AUTOVACUUM});
"""

DOWNGRADE = """
ALTER TABLE procrastinate_events RESET (
    autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    autovacuum_vacuum_insert_scale_factor, autovacuum_analyze_scale_factor,
    autovacuum_analyze_threshold
);
ALTER TABLE procrastinate_jobs RESET (
    autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    autovacuum_vacuum_insert_scale_factor, autovacuum_analyze_scale_factor,
    autovacuum_analyze_threshold
);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
