"""Jobs are found in constant time however many wait for later; deliveries go in batches.

Workers fetch jobs with ``notifier.fetch_job``, whose cost does not grow with future jobs.

procrastinate's ``procrastinate_fetch_job_v2`` walks waiting jobs in (priority, id) order
and skips those not yet due. A reminder service keeps most of its jobs in the future, and
those are older (lower ids) than the job that just became due, so with a million reminders
pending every fetch walked a million rows (228 ms instead of 0.45 ms, see
docs/performance.md). ``notifier.fetch_job`` looks in two places, each an index whose first
entry is the answer:

* jobs deferred to run at once (``scheduled_at IS NULL``), by priority then age, exactly as
  procrastinate orders them;
* scheduled jobs that are due, earliest due first. Future ones are never read.

Of the two candidates the higher priority wins, then the older job. One difference from
procrastinate's order remains: among due scheduled jobs, earlier due time goes before higher
priority (notifier defers every job at priority 0). Locks (``lock``) are honoured as
procrastinate does. The worker uses this function through ``notifier.queue.QueueConnector``;
procrastinate's own function is left as it is.

``notifications_pending_job_idx`` finds a pending notification from its deliver job: a
deliver job takes other due notifications along (``notifier.notifications.tasks``) by
walking the same two job indexes and joining on it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE INDEX notifier_jobs_run_now_idx ON procrastinate_jobs (priority DESC, id)
    WHERE status = 'todo' AND scheduled_at IS NULL;

CREATE INDEX notifier_jobs_scheduled_idx ON procrastinate_jobs (scheduled_at, id)
    WHERE status = 'todo' AND scheduled_at IS NOT NULL;

CREATE INDEX notifications_pending_job_idx ON notifier.notifications (job_id)
    WHERE status = 'pending';

-- Whether a waiting job must let another job with the same lock go first: one runs
-- already, or one waits with a higher priority, or the same priority and a lower id.
-- procrastinate_fetch_job_v2's rule, word for word.
CREATE FUNCTION notifier.job_waits_for_lock(
    p_lock text, p_priority integer, p_id bigint
) RETURNS boolean
    LANGUAGE sql STABLE
AS $$
    SELECT p_lock IS NOT NULL AND EXISTS (
        SELECT 1 FROM procrastinate_jobs AS other_jobs
        WHERE other_jobs.lock = p_lock
          AND (other_jobs.status = 'doing'
               OR (other_jobs.status = 'todo'
                   AND (other_jobs.priority > p_priority
                        OR (other_jobs.priority = p_priority AND other_jobs.id < p_id))))
    )
$$;

CREATE FUNCTION notifier.fetch_job(target_queue_names varchar[], p_worker_id bigint)
    RETURNS procrastinate_jobs
    LANGUAGE plpgsql
AS $$
DECLARE
    found_job procrastinate_jobs;
BEGIN
    WITH run_now AS (
        SELECT jobs.id, jobs.priority
        FROM procrastinate_jobs AS jobs
        WHERE jobs.status = 'todo'
          AND jobs.scheduled_at IS NULL
          AND (target_queue_names IS NULL OR jobs.queue_name = ANY(target_queue_names))
          AND NOT notifier.job_waits_for_lock(jobs.lock, jobs.priority, jobs.id)
        ORDER BY jobs.priority DESC, jobs.id
        LIMIT 1
        FOR UPDATE OF jobs SKIP LOCKED
    ),
    scheduled_and_due AS (
        SELECT jobs.id, jobs.priority
        FROM procrastinate_jobs AS jobs
        WHERE jobs.status = 'todo'
          AND jobs.scheduled_at IS NOT NULL
          AND jobs.scheduled_at <= now()
          AND (target_queue_names IS NULL OR jobs.queue_name = ANY(target_queue_names))
          AND NOT notifier.job_waits_for_lock(jobs.lock, jobs.priority, jobs.id)
        ORDER BY jobs.scheduled_at, jobs.id
        LIMIT 1
        FOR UPDATE OF jobs SKIP LOCKED
    ),
    -- Priority first, then age. The candidate not chosen stays locked only until this
    -- fetch commits, a moment later; other workers skip it meanwhile.
    chosen AS (
        SELECT id FROM (
            SELECT * FROM run_now
            UNION ALL
            SELECT * FROM scheduled_and_due
        ) AS candidates
        ORDER BY priority DESC, id
        LIMIT 1
    )
    UPDATE procrastinate_jobs
        SET status = 'doing', worker_id = p_worker_id
        FROM chosen
        WHERE procrastinate_jobs.id = chosen.id
        RETURNING procrastinate_jobs.* INTO found_job;
    RETURN found_job;
END;
$$;
"""

DOWNGRADE = """
DROP FUNCTION notifier.fetch_job(varchar[], bigint);
DROP FUNCTION notifier.job_waits_for_lock(text, integer, bigint);
DROP INDEX notifier.notifications_pending_job_idx;
DROP INDEX notifier_jobs_scheduled_idx;
DROP INDEX notifier_jobs_run_now_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
