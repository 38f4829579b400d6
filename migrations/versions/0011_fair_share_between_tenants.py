"""Fair share between tenants: due jobs are taken round-robin by tenant, not oldest first.

Until now a worker took the oldest due job of all tenants, so a tenant that scheduled 50,000
notifications for 09:00 made another tenant's single 09:00 notification wait for all of them.
docs/architecture.md ("Fair share between tenants") gives the rule and its bound; in short:

* Every job names its tenant in its arguments (``tenant_id``): the REST publish, the outbox
  trigger below and every deliver job. Jobs without one (deferred before this revision, the
  maintenance task) are a tenant of their own, ``''``.
* A *group* is a queue, a tenant and a priority. ``notifier.job_groups`` holds one row per
  group: ``due_at``, never later than its earliest waiting job ('-infinity' for one to run
  now, 'infinity' for none), and ``turn``, when it was last served while another group
  waited too.
* ``notifier.fetch_job`` serves, among the groups with due work, the highest priority, then
  the group served longest ago; within a group, procrastinate's order (run-now jobs by id,
  due scheduled jobs earliest first, the lower id of the two). It reads the due groups' rows
  and the heads of the groups it tries; never jobs due later, never other groups' jobs.
* A deliver job takes along only its own group's due notifications (the batch), so a
  tenant's turn is one job or one batch.

Keeping ``due_at`` right without making writers wait on each other (a producer's long
transaction must not hold up the tenant's other producers):

* a statement that adds waiting jobs (an INSERT, or an UPDATE leaving a job waiting: a
  retry, a re-schedule) takes a KEY SHARE lock on each group row it touches, the lock a
  foreign-key check takes, which writers share; when the group's ``due_at`` is later than
  its new jobs, or it has no row, it also inserts an *arrival* (``job_group_arrivals``),
  visible when, and only if, it commits;
* every fetch first moves the committed arrivals into their groups (``due_at`` lowered);
* a fetch that finds nothing to take in a due group raises ``due_at`` to the group's
  earliest waiting job, but only holding the row FOR UPDATE (SKIP LOCKED: else it leaves it),
  which waits out every writer still holding KEY SHARE; it then looks with a new snapshot,
  which shows all their jobs. A writer that comes later finds the raised value, and adds
  an arrival if its job is earlier.

Revision ID: 0011 (the lead may renumber this on merge)
Revises: 0010
Create Date: 2026-12-08
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# The group key of a job, written the same way everywhere (indexes match expressions as
# written): its queue, its tenant ('' without one), its priority.
UPGRADE = r"""
CREATE INDEX notifier_jobs_group_run_now_idx ON procrastinate_jobs
    (queue_name, (coalesce(args->>'tenant_id', '')), priority, id)
    WHERE status = 'todo' AND scheduled_at IS NULL;

CREATE INDEX notifier_jobs_group_scheduled_idx ON procrastinate_jobs
    (queue_name, (coalesce(args->>'tenant_id', '')), priority, scheduled_at, id)
    WHERE status = 'todo' AND scheduled_at IS NOT NULL;

-- Replaced by the two above: nothing reads across tenants any more.
DROP INDEX notifier_jobs_run_now_idx;
DROP INDEX notifier_jobs_scheduled_idx;

CREATE TABLE notifier.job_groups (
    queue_name text NOT NULL,
    tenant_id  text NOT NULL,
    priority   integer NOT NULL,
    -- Never later than the group's earliest waiting job, once the arrivals are in.
    due_at     timestamptz NOT NULL,
    -- From job_group_turns when last served with another group waiting; 0: never.
    turn       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue_name, tenant_id, priority)
);
CREATE INDEX job_groups_due_at_idx ON notifier.job_groups (due_at);
CREATE SEQUENCE notifier.job_group_turns;

COMMENT ON TABLE notifier.job_groups IS
    'Waiting jobs by queue, tenant and priority, for notifier.fetch_job''s round-robin. See docs/architecture.md.';

-- Jobs that may be due before their group's due_at says, committed with them.
CREATE TABLE notifier.job_group_arrivals (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_name text NOT NULL,
    tenant_id  text NOT NULL,
    priority   integer NOT NULL,
    due_at     timestamptz NOT NULL
);
CREATE INDEX job_group_arrivals_group_idx
    ON notifier.job_group_arrivals (queue_name, tenant_id, priority, due_at);

-- Both tables are tiny and rewritten all the time.
ALTER TABLE notifier.job_groups SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000
);
ALTER TABLE notifier.job_group_arrivals SET (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000
);

INSERT INTO notifier.job_groups (queue_name, tenant_id, priority, due_at)
SELECT queue_name, coalesce(args->>'tenant_id', ''), priority,
       min(coalesce(scheduled_at, '-infinity'))
FROM procrastinate_jobs
WHERE status = 'todo'
GROUP BY 1, 2, 3;

-- A group received waiting jobs, the earliest due at `p_due_at` ('-infinity': now), in the
-- calling transaction. The KEY SHARE lock on its row lasts until that transaction ends: a
-- fetch cannot raise due_at past these jobs before it can see them. An arrival is needed
-- only when the group has no row or a later due_at, and none is noted yet (by this
-- transaction or one committed) for that time or earlier: that one lowers it as far.
-- (PL/pgSQL, not SQL, for its plans are kept for the session: a SQL function's are made
-- again at every call.)
CREATE FUNCTION notifier.job_group_note_arrival(
    p_queue_name text, p_tenant_id text, p_priority integer, p_due_at timestamptz
) RETURNS void
    LANGUAGE plpgsql
AS $$
BEGIN
    WITH known AS MATERIALIZED (
        SELECT due_at FROM notifier.job_groups
        WHERE queue_name = p_queue_name AND tenant_id = p_tenant_id AND priority = p_priority
        FOR KEY SHARE
    )
    INSERT INTO notifier.job_group_arrivals (queue_name, tenant_id, priority, due_at)
    SELECT p_queue_name, p_tenant_id, p_priority, p_due_at
    WHERE NOT EXISTS (SELECT 1 FROM known WHERE known.due_at <= p_due_at)
      AND NOT EXISTS (
          SELECT 1 FROM notifier.job_group_arrivals AS noted
          WHERE noted.queue_name = p_queue_name AND noted.tenant_id = p_tenant_id
            AND noted.priority = p_priority AND noted.due_at <= p_due_at
      );
END;
$$;

CREATE FUNCTION notifier.job_groups_after_insert() RETURNS trigger
    LANGUAGE plpgsql
AS $$
DECLARE
    arrived record;
BEGIN
    -- One look per group, however many rows the statement inserted.
    FOR arrived IN
        SELECT queue_name, coalesce(args->>'tenant_id', '') AS tenant_id, priority,
               min(coalesce(scheduled_at, '-infinity')) AS due_at
        FROM inserted_jobs
        WHERE status = 'todo'
        GROUP BY 1, 2, 3
    LOOP
        PERFORM notifier.job_group_note_arrival(
            arrived.queue_name, arrived.tenant_id, arrived.priority, arrived.due_at
        );
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER notifier_job_groups_after_insert
    AFTER INSERT ON procrastinate_jobs
    REFERENCING NEW TABLE AS inserted_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION notifier.job_groups_after_insert();

-- A job left (or put back) waiting by an UPDATE: a retry, a stalled job requeued, a
-- re-schedule. Per row, so that fetching and finishing jobs (no longer waiting) never
-- call anything.
CREATE FUNCTION notifier.job_groups_after_update() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM notifier.job_group_note_arrival(
        NEW.queue_name, coalesce(NEW.args->>'tenant_id', ''), NEW.priority,
        coalesce(NEW.scheduled_at, '-infinity')
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER notifier_job_groups_after_update
    AFTER UPDATE ON procrastinate_jobs
    FOR EACH ROW WHEN (NEW.status = 'todo')
    EXECUTE FUNCTION notifier.job_groups_after_update();

-- Committed arrivals lower their groups' due_at (in key order: lock order). Every fetch
-- starts with this.
CREATE FUNCTION notifier.take_job_group_arrivals() RETURNS void
    LANGUAGE plpgsql
AS $$
BEGIN
    WITH taken AS (
        DELETE FROM notifier.job_group_arrivals
        WHERE id IN (SELECT id FROM notifier.job_group_arrivals FOR UPDATE SKIP LOCKED)
        RETURNING queue_name, tenant_id, priority, due_at
    )
    INSERT INTO notifier.job_groups AS groups (queue_name, tenant_id, priority, due_at)
    SELECT queue_name, tenant_id, priority, min(due_at) FROM taken
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (queue_name, tenant_id, priority) DO UPDATE
        SET due_at = least(groups.due_at, excluded.due_at);
END;
$$;

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

-- The SQL outbox's trigger (revision 0003) with the tenant on each job.
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
        RETURNING id, tenant_id
    )
    SELECT procrastinate_defer_jobs_v1(
        ARRAY(
            SELECT ROW(
                'events',                                          -- queue
                'notifier.process_event',                          -- task name
                0,                                                 -- priority
                NULL,                                              -- lock
                NULL,                                              -- queueing lock
                jsonb_build_object('event_id', published.id::text,
                                   'tenant_id', published.tenant_id),
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

# Revisions 0003 and 0009 as they were. Jobs lose their tenant argument, which the tasks of
# that version do not take.
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

CREATE OR REPLACE FUNCTION notifier.fetch_job(target_queue_names varchar[], p_worker_id bigint)
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

DROP TRIGGER notifier_job_groups_after_update ON procrastinate_jobs;
DROP TRIGGER notifier_job_groups_after_insert ON procrastinate_jobs;
DROP FUNCTION notifier.take_job_group_arrivals();
DROP FUNCTION notifier.job_groups_after_update();
DROP FUNCTION notifier.job_groups_after_insert();
DROP FUNCTION notifier.job_group_note_arrival(text, text, integer, timestamptz);
DROP TABLE notifier.job_group_arrivals;
DROP SEQUENCE notifier.job_group_turns;
DROP TABLE notifier.job_groups;

UPDATE procrastinate_jobs SET args = args - 'tenant_id'
WHERE status IN ('todo', 'doing') AND args ? 'tenant_id';

CREATE INDEX notifier_jobs_run_now_idx ON procrastinate_jobs (priority DESC, id)
    WHERE status = 'todo' AND scheduled_at IS NULL;
CREATE INDEX notifier_jobs_scheduled_idx ON procrastinate_jobs (scheduled_at, id)
    WHERE status = 'todo' AND scheduled_at IS NOT NULL;
DROP INDEX notifier_jobs_group_scheduled_idx;
DROP INDEX notifier_jobs_group_run_now_idx;
"""


def execute_script(sql: str) -> None:
    """Run a multi-statement script as is: no bind-parameter parsing of ':' or '%'."""
    op.get_bind().connection.driver_connection.execute(sql)  # type: ignore[union-attr]


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
