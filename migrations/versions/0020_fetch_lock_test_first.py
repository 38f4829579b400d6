"""The fetch asks whether a job waits for its lock only of jobs that have one.

``notifier.fetch_job`` (revision 0011) filtered every job it walked with
``notifier.job_waits_for_lock``, a SQL function PostgreSQL cannot inline (its body has a
subquery), so each row cost a function call that plans and runs a statement of its own. A
fetch walks past the jobs other transactions hold (a delivery batch holds up to
``NOTIFIER_DELIVERY_BATCH_SIZE`` of them while it sends), so with ten batches in flight a
fetch made about 300 such calls: profiled with pg_stat_statements, 6.6 calls per delivered
notification. notifier never sets procrastinate's ``lock``; a job without one never waits
for it, which the function itself returns after the call. Now the fetch looks at ``lock``
first and calls the function only for a job that has one: the same order, the same rule.

Revision ID: 0020 (the lead may renumber this on merge)
Revises: 0019
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0020"
# Written on 0017; chained after 0019 once main had 0018 and 0019.
down_revision = "0019"
branch_labels = None
depends_on = None

# Revision 0011's function, the lock test first. (Written out, not derived: a migration is
# history and must not change when another file does.)
UPGRADE = r"""
CREATE OR REPLACE FUNCTION notifier.fetch_job(target_queue_names varchar[], p_worker_id bigint)
    RETURNS procrastinate_jobs
    LANGUAGE plpgsql
AS $$
DECLARE
    candidate record;
    earliest timestamptz;
    found_job procrastinate_jobs;
BEGIN
    IF EXISTS (SELECT 1 FROM notifier.job_group_arrivals) THEN
        PERFORM notifier.take_job_group_arrivals();
    END IF;

    -- Groups with due work: the highest priority, then the one served longest ago.
    FOR candidate IN
        SELECT groups.queue_name, groups.tenant_id, groups.priority,
               count(*) OVER () AS due_groups
        FROM notifier.job_groups AS groups
        WHERE groups.due_at <= now()
          AND (target_queue_names IS NULL OR groups.queue_name = ANY(target_queue_names))
        ORDER BY groups.priority DESC, groups.turn, groups.due_at,
                 groups.queue_name, groups.tenant_id
    LOOP
        -- The group's head, in procrastinate's order, honouring locks as it does.
        WITH run_now AS (
            SELECT jobs.id FROM procrastinate_jobs AS jobs
            WHERE jobs.status = 'todo' AND jobs.scheduled_at IS NULL
              AND jobs.queue_name = candidate.queue_name
              AND coalesce(jobs.args->>'tenant_id', '') = candidate.tenant_id
              AND jobs.priority = candidate.priority
              AND (jobs.lock IS NULL
                   OR NOT notifier.job_waits_for_lock(jobs.lock, jobs.priority, jobs.id))
            ORDER BY jobs.id
            LIMIT 1
            FOR UPDATE OF jobs SKIP LOCKED
        ),
        scheduled_and_due AS (
            SELECT jobs.id FROM procrastinate_jobs AS jobs
            WHERE jobs.status = 'todo' AND jobs.scheduled_at IS NOT NULL
              AND jobs.scheduled_at <= now()
              AND jobs.queue_name = candidate.queue_name
              AND coalesce(jobs.args->>'tenant_id', '') = candidate.tenant_id
              AND jobs.priority = candidate.priority
              AND (jobs.lock IS NULL
                   OR NOT notifier.job_waits_for_lock(jobs.lock, jobs.priority, jobs.id))
            ORDER BY jobs.scheduled_at, jobs.id
            LIMIT 1
            FOR UPDATE OF jobs SKIP LOCKED
        ),
        -- The same priority: the older job. The other stays locked until this fetch
        -- commits, a moment later; other workers skip it meanwhile.
        chosen AS (
            SELECT id FROM (
                SELECT id FROM run_now UNION ALL SELECT id FROM scheduled_and_due
            ) AS heads
            ORDER BY id
            LIMIT 1
        )
        UPDATE procrastinate_jobs
            SET status = 'doing', worker_id = p_worker_id
            FROM chosen
            WHERE procrastinate_jobs.id = chosen.id
            RETURNING procrastinate_jobs.* INTO found_job;

        IF found_job.id IS NOT NULL THEN
            -- To the back of the line, if there is one: alone, a group need not write
            -- its turn at every fetch. A row another fetch holds keeps its place.
            IF candidate.due_groups > 1 THEN
                UPDATE notifier.job_groups AS groups
                    SET turn = nextval('notifier.job_group_turns')
                    WHERE (groups.queue_name, groups.tenant_id, groups.priority) IN (
                        SELECT queue_name, tenant_id, priority FROM notifier.job_groups
                        WHERE queue_name = candidate.queue_name
                          AND tenant_id = candidate.tenant_id
                          AND priority = candidate.priority
                        FOR NO KEY UPDATE SKIP LOCKED
                    );
            END IF;
            RETURN found_job;
        END IF;

        -- Nothing to take. Unless writers still hold the row, look again with a new
        -- snapshot and move due_at to the earliest waiting job (or 'infinity').
        PERFORM 1 FROM notifier.job_groups
        WHERE queue_name = candidate.queue_name
          AND tenant_id = candidate.tenant_id
          AND priority = candidate.priority
        FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            SELECT least(
                (SELECT '-infinity'::timestamptz FROM procrastinate_jobs AS jobs
                 WHERE jobs.status = 'todo' AND jobs.scheduled_at IS NULL
                   AND jobs.queue_name = candidate.queue_name
                   AND coalesce(jobs.args->>'tenant_id', '') = candidate.tenant_id
                   AND jobs.priority = candidate.priority
                 LIMIT 1),
                (SELECT jobs.scheduled_at FROM procrastinate_jobs AS jobs
                 WHERE jobs.status = 'todo' AND jobs.scheduled_at IS NOT NULL
                   AND jobs.queue_name = candidate.queue_name
                   AND coalesce(jobs.args->>'tenant_id', '') = candidate.tenant_id
                   AND jobs.priority = candidate.priority
                 ORDER BY jobs.scheduled_at
                 LIMIT 1)
            ) INTO earliest;
            -- Due jobs it could not take (another fetch holds them, or their lock is
            -- taken) keep the group due.
            IF earliest IS NULL OR earliest > now() THEN
                UPDATE notifier.job_groups
                    SET due_at = coalesce(earliest, 'infinity')
                    WHERE queue_name = candidate.queue_name
                      AND tenant_id = candidate.tenant_id
                      AND priority = candidate.priority;
            END IF;
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;
"""

# Revision 0011's function as it was.
DOWNGRADE = r"""
CREATE OR REPLACE FUNCTION notifier.fetch_job(target_queue_names varchar[], p_worker_id bigint)
    RETURNS procrastinate_jobs
    LANGUAGE plpgsql
AS $$
DECLARE
    candidate record;
    earliest timestamptz;
    found_job procrastinate_jobs;
BEGIN
    IF EXISTS (SELECT 1 FROM notifier.job_group_arrivals) THEN
        PERFORM notifier.take_job_group_arrivals();
    END IF;

    -- Groups with due work: the highest priority, then the one served longest ago.
    FOR candidate IN
        SELECT groups.queue_name, groups.tenant_id, groups.priority,
               count(*) OVER () AS due_groups
        FROM notifier.job_groups AS groups
        WHERE groups.due_at <= now()
          AND (target_queue_names IS NULL OR groups.queue_name = ANY(target_queue_names))
        ORDER BY groups.priority DESC, groups.turn, groups.due_at,
                 groups.queue_name, groups.tenant_id
    LOOP
        -- The group's head, in procrastinate's order, honouring locks as it does.
        WITH run_now AS (
            SELECT jobs.id FROM procrastinate_jobs AS jobs
            WHERE jobs.status = 'todo' AND jobs.scheduled_at IS NULL
              AND jobs.queue_name = candidate.queue_name
              AND coalesce(jobs.args->>'tenant_id', '') = candidate.tenant_id
              AND jobs.priority = candidate.priority
              AND NOT notifier.job_waits_for_lock(jobs.lock, jobs.priority, jobs.id)
            ORDER BY jobs.id
            LIMIT 1
            FOR UPDATE OF jobs SKIP LOCKED
        ),
        scheduled_and_due AS (
            SELECT jobs.id FROM procrastinate_jobs AS jobs
            WHERE jobs.status = 'todo' AND jobs.scheduled_at IS NOT NULL
              AND jobs.scheduled_at <= now()
              AND jobs.queue_name = candidate.queue_name
              AND coalesce(jobs.args->>'tenant_id', '') = candidate.tenant_id
              AND jobs.priority = candidate.priority
              AND NOT notifier.job_waits_for_lock(jobs.lock, jobs.priority, jobs.id)
            ORDER BY jobs.scheduled_at, jobs.id
            LIMIT 1
            FOR UPDATE OF jobs SKIP LOCKED
        ),
        -- The same priority: the older job. The other stays locked until this fetch
        -- commits, a moment later; other workers skip it meanwhile.
        chosen AS (
            SELECT id FROM (
                SELECT id FROM run_now UNION ALL SELECT id FROM scheduled_and_due
            ) AS heads
            ORDER BY id
            LIMIT 1
        )
        UPDATE procrastinate_jobs
            SET status = 'doing', worker_id = p_worker_id
            FROM chosen
            WHERE procrastinate_jobs.id = chosen.id
            RETURNING procrastinate_jobs.* INTO found_job;

        IF found_job.id IS NOT NULL THEN
            -- To the back of the line, if there is one: alone, a group need not write
            -- its turn at every fetch. A row another fetch holds keeps its place.
            IF candidate.due_groups > 1 THEN
                UPDATE notifier.job_groups AS groups
                    SET turn = nextval('notifier.job_group_turns')
                    WHERE (groups.queue_name, groups.tenant_id, groups.priority) IN (
                        SELECT queue_name, tenant_id, priority FROM notifier.job_groups
                        WHERE queue_name = candidate.queue_name
                          AND tenant_id = candidate.tenant_id
                          AND priority = candidate.priority
                        FOR NO KEY UPDATE SKIP LOCKED
                    );
            END IF;
            RETURN found_job;
        END IF;

        -- Nothing to take. Unless writers still hold the row, look again with a new
        -- snapshot and move due_at to the earliest waiting job (or 'infinity').
        PERFORM 1 FROM notifier.job_groups
        WHERE queue_name = candidate.queue_name
          AND tenant_id = candidate.tenant_id
          AND priority = candidate.priority
        FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            SELECT least(
                (SELECT '-infinity'::timestamptz FROM procrastinate_jobs AS jobs
                 WHERE jobs.status = 'todo' AND jobs.scheduled_at IS NULL
                   AND jobs.queue_name = candidate.queue_name
                   AND coalesce(jobs.args->>'tenant_id', '') = candidate.tenant_id
                   AND jobs.priority = candidate.priority
                 LIMIT 1),
                (SELECT jobs.scheduled_at FROM procrastinate_jobs AS jobs
                 WHERE jobs.status = 'todo' AND jobs.scheduled_at IS NOT NULL
                   AND jobs.queue_name = candidate.queue_name
                   AND coalesce(jobs.args->>'tenant_id', '') = candidate.tenant_id
                   AND jobs.priority = candidate.priority
                 ORDER BY jobs.scheduled_at
                 LIMIT 1)
            ) INTO earliest;
            -- Due jobs it could not take (another fetch holds them, or their lock is
            -- taken) keep the group due.
            IF earliest IS NULL OR earliest > now() THEN
                UPDATE notifier.job_groups
                    SET due_at = coalesce(earliest, 'infinity')
                    WHERE queue_name = candidate.queue_name
                      AND tenant_id = candidate.tenant_id
                      AND priority = candidate.priority;
            END IF;
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;
"""


def execute_script(sql: str) -> None:
    """Run a multi-statement script as is: no bind-parameter parsing of ':' or '%'."""
    op.get_bind().connection.driver_connection.execute(sql)  # type: ignore[union-attr]


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
