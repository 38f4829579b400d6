"""Queue table: every vacuum also cleans its indexes.

PostgreSQL (14 and later) lets a vacuum skip the indexes when dead rows sit on fewer than
2% of the table's pages. With a million scheduled jobs waiting, the jobs that just ran are
always that few, so the dead entries they leave stay in the indexes, among them the small
partial index of due jobs that every fetch reads from its start
(``notifier_jobs_run_now_idx``, migration 0009): measured, a fetch read 23 pages instead
of 10 and took 1.17 ms instead of 0.46 (docs/performance.md). Cleaning the indexes every
time costs each vacuum of the queue a pass over them; the fetch is what every worker does
all the time.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE procrastinate_jobs SET (vacuum_index_cleanup = on)")


def downgrade() -> None:
    op.execute("ALTER TABLE procrastinate_jobs RESET (vacuum_index_cleanup)")
