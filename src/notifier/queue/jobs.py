"""SQL over procrastinate's tables and functions: every statement notifier runs on them.

Functions take the caller's connection and never commit: a job deferred, cancelled,
finished or rescheduled here commits or rolls back with the caller's business rows. Two
statements of other features embed a part written here, so that they stay one statement:
the publish (:func:`defer_jobs_select`, the jobs of the events it stores) and the delivery
batch (:func:`lock_due_jobs`, the due jobs locked before their notifications).

procrastinate's SQL functions are versioned (``_v1``, ``_v2``): on an upgrade, check each
one named here against the new ``procrastinate/sql/schema.sql``.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, LiteralString, NamedTuple

import msgspec
import psycopg
from procrastinate.sql import queries as procrastinate_queries
from psycopg.types.json import Jsonb

from notifier.db import Connection
from notifier.queue import TASK_QUEUES


class QueueStateError(RuntimeError):
    """A job was not in the state a statement of the adapter requires (procrastinate's own
    functions raise in the same cases)."""


# --- the fetch -------------------------------------------------------------------------

# What procrastinate's worker fetches with; the connector recognises it and runs
# FETCH_JOB_SQL instead.
PROCRASTINATE_FETCH_JOB_SQL: LiteralString = procrastinate_queries["fetch_job"]
# The same columns from notifier's own fetch function (migrations 0009 and 0011): due jobs
# only, shared out round-robin by tenant; its cost does not grow with the jobs scheduled
# for later.
#
# And ``due_arrivals``: whether due arrivals of ``queues`` waited to be moved into their
# groups as the statement began. The subquery reads the statement's snapshot, taken before
# the function's own statements take theirs: a fetch that found nothing while another
# fetch was moving those arrivals (it skips them, locked, and sees their group due only
# once that one commits) learns that its answer may be stale, and looks again at once
# rather than a poll interval later (``notifier.queue.connector``). The snapshot also
# shows the arrivals this fetch moved itself: if it then found nothing (a batch took their
# jobs), it looks once more, needlessly, and then waits as usual. An index read of a
# table that is nearly always empty.
FETCH_JOB_SQL: LiteralString = """
SELECT id, status, task_name, priority, lock, queueing_lock, args, scheduled_at, queue_name,
       attempts, worker_id,
       EXISTS (
           SELECT 1 FROM notifier.job_group_arrivals AS arrivals
           WHERE arrivals.due_at <= now()
             AND (%(queues)s::varchar[] IS NULL OR arrivals.queue_name = ANY(%(queues)s::varchar[]))
       ) AS due_arrivals
FROM notifier.fetch_job(%(queues)s::varchar[], %(worker_id)s)
"""
# After a fetch that found nothing: seconds from now until the earliest time a waiting job
# of ``queues`` falls due (NULL: none is known to), from the groups' ``due_at`` (never later
# than their earliest waiting job, migration 0011) and the arrivals the fetch has not yet
# moved there. Groups already due are left out: the fetch just found nothing to take in
# them (their jobs are held by others), and waking at once for them would spin. Two index
# reads of two small tables, however many jobs wait.
NEXT_DUE_SQL: LiteralString = """
SELECT extract(epoch FROM min(due_at) - clock_timestamp())::float8 AS seconds
FROM (
    SELECT min(due_at) AS due_at FROM notifier.job_groups
    WHERE due_at > now() AND due_at < 'infinity'
      AND (%(queues)s::varchar[] IS NULL OR queue_name = ANY(%(queues)s::varchar[]))
    UNION ALL
    SELECT min(due_at) FROM notifier.job_group_arrivals
    WHERE due_at > now() AND due_at < 'infinity'
      AND (%(queues)s::varchar[] IS NULL OR queue_name = ANY(%(queues)s::varchar[]))
) AS earliest
"""


# --- deferring -------------------------------------------------------------------------


class JobToDefer(msgspec.Struct, frozen=True, kw_only=True):
    """One job to defer: its task, arguments and due time (None: now).

    Every notifier job names its tenant in ``args`` (``tenant_id``): the fetch shares out due
    jobs by tenant (migration 0011). ``queue`` None: the task's own (``TASK_QUEUES``).
    procrastinate's ``lock`` and ``queueing_lock`` are not used by notifier: always NULL.
    """

    task: str
    args: dict[str, Any]
    scheduled_at: datetime.datetime | None = None
    priority: int = 0
    queue: str | None = None


_DEFER_JOBS_SELECT: LiteralString = """SELECT procrastinate_defer_jobs_v1(array_agg(ROW(
    {queue}, {task}, {priority}, NULL, NULL, {args}, {scheduled_at}
)::procrastinate_job_to_defer_v1{order})) AS job_ids
FROM {rows}"""


def defer_jobs_select(
    *,
    rows: LiteralString,
    queue: LiteralString,
    task: LiteralString,
    args: LiteralString,
    scheduled_at: LiteralString = "NULL",
    priority: LiteralString = "0",
    order_by: LiteralString | None = None,
) -> LiteralString:
    """A SELECT deferring one job per row of ``rows`` (a FROM item), with one call of
    procrastinate's defer function, in the transaction of the statement it is part of.

    The other arguments are SQL expressions over ``rows``' columns (or parameters). It
    yields one row, ``job_ids``: the new jobs' ids, in ``order_by`` order (NULL when
    ``rows`` is empty). A statement embedding it as a CTE must read that row, or the CTE
    (and the defer) does not run.
    """
    return _DEFER_JOBS_SELECT.format(
        rows=rows,
        queue=queue,
        task=task,
        priority=priority,
        args=args,
        scheduled_at=scheduled_at,
        order=" ORDER BY " + order_by if order_by else "",
    )


_DEFER_JOBS: LiteralString = "SELECT unnest(job_ids) AS id FROM ({deferred}) AS deferred"
# Defers the jobs of parallel arrays, in one statement; one row per job, its id, in order.
DEFER_JOBS_SQL: LiteralString = _DEFER_JOBS.format(
    deferred=defer_jobs_select(
        rows="""unnest(%(queues)s::text[], %(tasks)s::text[], %(priorities)s::int[],
                   %(args)s::jsonb[], %(scheduled_ats)s::timestamptz[])
            WITH ORDINALITY AS job (queue, task, priority, args, scheduled_at, n)""",
        queue="job.queue",
        task="job.task",
        priority="job.priority",
        args="job.args",
        scheduled_at="job.scheduled_at",
        order_by="job.n",
    )
)


def defer_jobs_parameters(jobs: Sequence[JobToDefer]) -> dict[str, Any]:
    """The parameters of :data:`DEFER_JOBS_SQL` for ``jobs``."""
    return {
        "queues": [job.queue or TASK_QUEUES[job.task] for job in jobs],
        "tasks": [job.task for job in jobs],
        "priorities": [job.priority for job in jobs],
        "args": [Jsonb(job.args) for job in jobs],
        "scheduled_ats": [job.scheduled_at for job in jobs],
    }


async def defer_jobs(conn: Connection, jobs: Sequence[JobToDefer]) -> list[int]:
    """Defer ``jobs`` in one statement, in the caller's transaction; their ids, in order.

    A rolled-back transaction leaves no job. Jobs due now wake listening workers when the
    transaction commits (procrastinate's insert trigger notifies).
    """
    if not jobs:
        return []
    cursor = await conn.execute(DEFER_JOBS_SQL, defer_jobs_parameters(jobs))
    return [row["id"] for row in await cursor.fetchall()]


# --- the jobs of a delivery batch ------------------------------------------------------


class JobPosition(NamedTuple):
    """Where a job stands in its group's order: its id, and its due time for a scheduled
    job (None: a job to run now)."""

    job_id: int
    scheduled_at: datetime.datetime | None = None


# Waiting jobs of one group (migration 0011: queue, tenant, priority) and task that are
# due, in the order the fetch takes them, locked; LIMIT ends the walk, and the locking,
# after the first rows that qualify. One branch per job index of the group, each read in
# order from the position given (the index's first entry without one); the group's key is
# written as in those indexes.
_DUE_JOBS_OF_GROUP: LiteralString = """
SELECT due.*, row_number() OVER () AS position FROM (
    SELECT * FROM (
        SELECT jobs.id AS job_id, {row_id} AS row_id
        FROM procrastinate_jobs AS jobs
        {join}
        WHERE jobs.status = 'todo' AND jobs.scheduled_at IS NULL
          AND jobs.queue_name = %(group_queue)s
          AND coalesce(jobs.args->>'tenant_id', '') = coalesce(%(group_tenant)s::text, '')
          AND jobs.priority = %(group_priority)s
          AND jobs.task_name = %(group_task)s AND jobs.lock IS NULL
          AND jobs.id > %(after_id)s
          AND {where}
        ORDER BY jobs.id
        FOR UPDATE OF jobs SKIP LOCKED
    ) AS run_now
    UNION ALL
    SELECT * FROM (
        SELECT jobs.id AS job_id, {row_id} AS row_id
        FROM procrastinate_jobs AS jobs
        {join}
        WHERE jobs.status = 'todo' AND jobs.scheduled_at IS NOT NULL
          AND jobs.scheduled_at <= now()
          AND jobs.queue_name = %(group_queue)s
          AND coalesce(jobs.args->>'tenant_id', '') = coalesce(%(group_tenant)s::text, '')
          AND jobs.priority = %(group_priority)s
          AND (jobs.scheduled_at, jobs.id) > (%(after_scheduled_at)s, %(after_scheduled_id)s)
          AND jobs.task_name = %(group_task)s AND jobs.lock IS NULL
          AND {where}
        ORDER BY jobs.scheduled_at, jobs.id
        FOR UPDATE OF jobs SKIP LOCKED
    ) AS scheduled_and_due
    LIMIT %(limit)s
) AS due
"""


def lock_due_jobs(
    *, join: LiteralString, where: LiteralString, row_id: LiteralString
) -> LiteralString:
    """A SELECT locking the waiting, due jobs of one group and task (jobs another
    transaction holds are skipped) whose rows of the caller's, joined to each, qualify.

    ``join`` joins the caller's table(s) to ``jobs`` (procrastinate's jobs table, by that
    alias; refer to ``jobs.id`` only) and ``where`` filters their rows; the caller's rows
    are read, not locked. It yields ``job_id``, ``row_id`` (the caller's expression
    ``row_id``, naming the row joined) and ``position`` (1, 2, ...: the order the fetch
    takes the jobs in: to run now by id, then the due scheduled ones, earliest first).

    The caller locks its own rows in an outer statement (``WITH due AS MATERIALIZED (...)
    SELECT ... JOIN due ... FOR UPDATE OF ... SKIP LOCKED``), checking them again there.
    Locked here with its job, a row whose job a fetch took meanwhile (the job fails the
    recheck after the lock) would stay locked until the caller's transaction ends, and the
    job's own run would wait that long for it; locked apart, only the job row is held.
    Parameters: those of :func:`due_jobs_parameters`, and the caller's own.
    """
    return _DUE_JOBS_OF_GROUP.format(join=join, where=where, row_id=row_id)


def due_jobs_parameters(
    *,
    queue: str,
    task_name: str,
    tenant_id: str | None,
    priority: int,
    limit: int,
    after: JobPosition | None = None,
) -> dict[str, Any]:
    """The group (``tenant_id`` None: jobs that name no tenant), the limit and the start of a
    :func:`lock_due_jobs` statement.

    ``after``: the job the batch is for (fetched from the same group), the walk starting
    behind it. The fetch took the first job it could lock, so the ones before it in its
    index were held by other batches then: reading them again would only skip them again,
    once per job, and race the fetches that take the group's next jobs. A job before it
    that waits again later (a batch rolled back) is taken by the next fetch. A job to run
    now comes before every due scheduled job with a higher id, so a batch for a job to run
    now reads the scheduled jobs from their start.
    """
    after_id, after_scheduled = (after.job_id, after.scheduled_at) if after else (0, None)
    scheduled = after_scheduled is not None
    return {
        "group_queue": queue,
        "group_task": task_name,
        "group_tenant": tenant_id,
        "group_priority": priority,
        "limit": limit,
        "after_id": after_id,
        "after_scheduled_at": after_scheduled if scheduled else NO_TIME,
        "after_scheduled_id": after_id if scheduled else 0,
    }


# Before every due time a job can have.
NO_TIME = datetime.datetime.min.replace(tzinfo=datetime.UTC)


# What procrastinate's ``procrastinate_finish_job_v1`` writes for a job that succeeded,
# for many jobs at once: deleted (``delete_job``), or marked (status, ``abort_requested``
# cleared, a run counted for a job that was running), which its triggers follow with an
# event row. Both only touch jobs still waiting or running.
_DELETE_SUCCEEDED_JOBS: LiteralString = """
WITH finished AS (
    DELETE FROM procrastinate_jobs
    WHERE id = ANY(%b::bigint[]) AND status IN ('todo', 'doing')
    RETURNING id
)
SELECT count(*) AS finished FROM finished
"""
_MARK_SUCCEEDED_JOBS: LiteralString = """
WITH finished AS (
    UPDATE procrastinate_jobs
    SET status = 'succeeded',
        abort_requested = false,
        attempts = CASE status WHEN 'doing' THEN attempts + 1 ELSE attempts END
    WHERE id = ANY(%b::bigint[]) AND status IN ('todo', 'doing')
    RETURNING id
)
SELECT count(*) AS finished FROM finished
"""


async def finish_jobs(conn: Connection, job_ids: Sequence[int], *, delete: bool) -> None:
    """End the (locked, waiting) jobs succeeded, as if they had run: for jobs whose work
    another job did, in its transaction; ``delete``: deleted, as the workers delete the
    jobs that succeed (NOTIFIER_KEEP_SUCCEEDED_JOBS off), else marked ``succeeded``.

    One statement for all of them, writing what procrastinate's
    ``procrastinate_finish_job_v1`` writes for each (deleted with its events; or marked, its
    triggers then leaving the same events); calling that function once per job cost a
    function call and a statement of its own per job. A deleted job costs less than a
    marked one: no new row version (its status is indexed, so the update is never HOT) and
    no event row, and the maintenance task has nothing left to prune. Like that function,
    it refuses (and so fails the caller's transaction) when a job is no longer waiting or
    running.
    """
    if not job_ids:
        return
    cursor = await conn.execute(
        _DELETE_SUCCEEDED_JOBS if delete else _MARK_SUCCEEDED_JOBS, [list(job_ids)]
    )
    row = await cursor.fetchone()
    finished = row["finished"] if row else 0
    if finished != len(set(job_ids)):
        raise QueueStateError(
            f"{len(set(job_ids)) - finished} of jobs {sorted(job_ids)} were not found "
            "waiting or running"
        )


async def reschedule_jobs(
    conn: Connection,
    due_at: Mapping[int, datetime.datetime],
    *,
    merge_args: Mapping[int, dict[str, Any]] | None = None,
) -> None:
    """Make the (locked) jobs of ``due_at`` that still wait due again at the given times,
    their runs counted as they were; ``merge_args`` adds to (or replaces) arguments of
    some of them."""
    if not due_at:
        return
    merge_args = merge_args or {}
    await conn.execute(
        """
        UPDATE procrastinate_jobs AS jobs
        SET scheduled_at = later.at, args = jobs.args || later.args
        FROM unnest(%b::bigint[], %b::timestamptz[], %b::jsonb[]) AS later (id, at, args)
        WHERE jobs.id = later.id AND jobs.status = 'todo'
        """,
        [
            list(due_at),
            list(due_at.values()),
            [Jsonb(merge_args.get(job_id, {})) for job_id in due_at],
        ],
    )


async def job_args(conn: Connection, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The arguments of each of the jobs (those that exist), by id."""
    if not job_ids:
        return {}
    cursor = await conn.execute(
        "SELECT id, args FROM procrastinate_jobs WHERE id = ANY(%s)", [list(job_ids)]
    )
    return {row["id"]: row["args"] for row in await cursor.fetchall()}


async def cancel_waiting_job(conn: Connection, job_id: int) -> bool:
    """Cancel the job if it still waits; whether it did. A running job runs on."""
    cursor = await conn.execute(
        "SELECT procrastinate_cancel_job_v1(%s, false, false) AS id", [job_id]
    )
    row = await cursor.fetchone()
    return row is not None and row["id"] is not None


async def cancel_waiting_jobs(conn: Connection, job_ids: Sequence[int]) -> int:
    """Cancel each job that still waits, in one statement; how many were. Running ones run on."""
    if not job_ids:
        return 0
    cursor = await conn.execute(
        """
        SELECT count(cancelled) AS cancelled
        FROM unnest(%s::bigint[]) AS job (id),
             LATERAL procrastinate_cancel_job_v1(job.id, false, false) AS cancelled
        """,
        [list(job_ids)],
    )
    row = await cursor.fetchone()
    return int(row["cancelled"]) if row else 0


# --- maintenance -----------------------------------------------------------------------


class StalledJob(msgspec.Struct, frozen=True):
    """A running job of a worker that stopped heartbeating."""

    id: int
    task_name: str


async def stalled_jobs(conn: Connection, *, seconds_since_heartbeat: float) -> list[StalledJob]:
    """Running jobs whose worker's last heartbeat is older than ``seconds_since_heartbeat``,
    or whose worker is gone (procrastinate sets ``worker_id`` NULL when it prunes one).

    Two index reads (workers by heartbeat, then their running jobs; running jobs without a
    worker, migration 0016): workers run this every second, and it must not read the
    waiting jobs, however many reminders wait.
    """
    cursor = await conn.execute(
        """
        SELECT jobs.id, jobs.task_name
        FROM procrastinate_workers AS workers
        JOIN procrastinate_jobs AS jobs ON jobs.worker_id = workers.id
        WHERE workers.last_heartbeat < statement_timestamp() - make_interval(secs => %s)
          AND jobs.status = 'doing'
        UNION ALL
        SELECT id, task_name FROM procrastinate_jobs
        WHERE status = 'doing' AND worker_id IS NULL
        ORDER BY id
        """,
        [seconds_since_heartbeat],
    )
    return [StalledJob(row["id"], row["task_name"]) for row in await cursor.fetchall()]


async def running_jobs_of_worker(conn: Connection, worker_id: int) -> set[int]:
    """The jobs the database says ``worker_id`` is running (``doing`` under its id)."""
    cursor = await conn.execute(
        "SELECT id FROM procrastinate_jobs WHERE worker_id = %s AND status = 'doing'",
        [worker_id],
    )
    return {row["id"] for row in await cursor.fetchall()}


async def requeue_running_job(conn: Connection, job_id: int) -> bool:
    """Put a running job back in its queue, due now, its run counted; False if it was no
    longer running (a worker thought dead finished it after all).

    In a savepoint: procrastinate's function raises for a job that is not running, which
    leaves the caller's transaction usable.
    """
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT procrastinate_retry_job_v2(%s, statement_timestamp(), NULL, NULL, NULL)",
                [job_id],
            )
    except psycopg.errors.RaiseException:
        return False
    return True


async def prune_finished_jobs(
    conn: Connection, *, older_than_hours: int, statuses: Sequence[str]
) -> None:
    """Delete the jobs in one of ``statuses`` whose last event is older than
    ``older_than_hours`` (procrastinate's ``delete_old_jobs``)."""
    await conn.execute(
        """
        DELETE FROM procrastinate_jobs
        WHERE id IN (
            SELECT job.id FROM (
                SELECT DISTINCT ON (job.id) job.id, job.status, event.at AS latest_at
                FROM procrastinate_jobs AS job
                JOIN procrastinate_events AS event ON job.id = event.job_id
                ORDER BY job.id, event.at DESC
            ) AS job
            WHERE job.status = ANY(%(statuses)s::procrastinate_job_status[])
              AND job.latest_at < now() - make_interval(hours => %(hours)s)
        )
        """,
        {"statuses": list(statuses), "hours": older_than_hours},
    )


# --- statistics ------------------------------------------------------------------------


class QueueState(msgspec.Struct, frozen=True, kw_only=True):
    """Jobs of one queue that are due now and still waiting."""

    due_jobs: int
    # How long the longest-waiting due job has waited since it became due.
    oldest_due_seconds: float


async def queue_states(conn: Connection) -> dict[str, QueueState]:
    """Due, waiting jobs per queue (queues with none are absent).

    A job is due from its ``scheduled_at``, or, if it has none, from when it was deferred
    (its first procrastinate event). Among unscheduled jobs the lowest id was deferred
    first, so one event lookup per queue finds the oldest.
    """
    cursor = await conn.execute(
        """
        WITH due AS (
            SELECT queue_name,
                   count(*) AS due_jobs,
                   min(scheduled_at) AS earliest_scheduled,
                   min(id) FILTER (WHERE scheduled_at IS NULL) AS first_unscheduled
            FROM procrastinate_jobs
            WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())
            GROUP BY queue_name
        )
        SELECT queue_name, due_jobs,
               extract(epoch FROM now() - least(
                   earliest_scheduled,
                   (SELECT min(at) FROM procrastinate_events WHERE job_id = first_unscheduled)
               ))::float8 AS oldest_due_seconds
        FROM due
        """
    )
    return {
        row["queue_name"]: QueueState(
            due_jobs=row["due_jobs"], oldest_due_seconds=max(0.0, row["oldest_due_seconds"] or 0.0)
        )
        for row in await cursor.fetchall()
    }


async def live_workers(conn: Connection, *, heartbeat_within_seconds: float) -> int:
    """Workers whose last heartbeat is recent enough for procrastinate to think them alive."""
    cursor = await conn.execute(
        """
        SELECT count(*) AS alive FROM procrastinate_workers
        WHERE last_heartbeat > now() - make_interval(secs => %s)
        """,
        [heartbeat_within_seconds],
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row["alive"])


# Past this many due jobs of one queue and tenant the overview says "at least": counting
# a backlog costs a read per job, and a page must not cost more as the backlog grows.
DUE_JOBS_COUNT_CAP = 10_000


class TenantQueueState(msgspec.Struct, frozen=True, kw_only=True):
    """One tenant's jobs of one queue: due and waiting, overdue among them, and running."""

    due_jobs: int
    overdue_jobs: int
    running_jobs: int
    # How long the longest-waiting due job has waited since it became due (0 when none).
    oldest_due_seconds: float
    # The counts stopped at DUE_JOBS_COUNT_CAP: there are at least that many.
    capped: bool


async def tenant_queue_states(
    conn: Connection, tenant_id: str, *, overdue_seconds: float
) -> dict[str, TenantQueueState]:
    """The tenant's due, overdue and running jobs per queue (queues with none are absent).

    Jobs name their tenant in their arguments (migration 0011). The tenant's groups (queue
    and priority, from ``notifier.job_groups`` and the arrivals not yet moved there) give
    the exact prefixes of the two group indexes, so each count reads only due entries, at
    most DUE_JOBS_COUNT_CAP of them per group and kind. A job to run now is due since it
    was deferred (its first event); "overdue" is due for longer than ``overdue_seconds``.
    Among jobs to run now the oldest come first by id, so the overdue ones are counted
    among the first DUE_JOBS_COUNT_CAP.
    """
    cursor = await conn.execute(
        """
        WITH groups AS (
            SELECT queue_name, priority FROM notifier.job_groups WHERE tenant_id = %(tenant)s
            UNION
            SELECT queue_name, priority FROM notifier.job_group_arrivals
            WHERE tenant_id = %(tenant)s
        ), due AS (
            SELECT g.queue_name, run_now.n + scheduled.n AS due_jobs,
                   run_now.overdue + scheduled.overdue AS overdue_jobs,
                   least(run_now.since, scheduled.since) AS oldest_due_since,
                   run_now.n >= %(cap)s OR scheduled.n >= %(cap)s AS capped
            FROM groups AS g
            CROSS JOIN LATERAL (
                SELECT count(*) AS n,
                       count(*) FILTER (WHERE deferred_at <= now() - %(overdue)s) AS overdue,
                       min(deferred_at) AS since
                FROM (
                    SELECT (SELECT min(e.at) FROM procrastinate_events AS e
                            WHERE e.job_id = j.id) AS deferred_at
                    FROM procrastinate_jobs AS j
                    WHERE j.queue_name = g.queue_name
                      AND coalesce(j.args->>'tenant_id', '') = %(tenant)s
                      AND j.priority = g.priority
                      AND j.status = 'todo' AND j.scheduled_at IS NULL
                    ORDER BY j.id
                    LIMIT %(cap)s
                ) AS oldest
            ) AS run_now
            CROSS JOIN LATERAL (
                SELECT count(*) AS n,
                       count(*) FILTER (WHERE scheduled_at <= now() - %(overdue)s) AS overdue,
                       min(scheduled_at) AS since
                FROM (
                    SELECT j.scheduled_at
                    FROM procrastinate_jobs AS j
                    WHERE j.queue_name = g.queue_name
                      AND coalesce(j.args->>'tenant_id', '') = %(tenant)s
                      AND j.priority = g.priority
                      AND j.status = 'todo' AND j.scheduled_at IS NOT NULL
                      AND j.scheduled_at <= now()
                    ORDER BY j.scheduled_at
                    LIMIT %(cap)s
                ) AS earliest
            ) AS scheduled
        ), running AS (
            SELECT queue_name, count(*) AS running_jobs
            FROM procrastinate_jobs
            WHERE status = 'doing' AND worker_id IS NOT NULL
              AND coalesce(args->>'tenant_id', '') = %(tenant)s
            GROUP BY queue_name
        )
        SELECT coalesce(due.queue_name, running.queue_name) AS queue_name,
               coalesce(sum(due.due_jobs), 0)::bigint AS due_jobs,
               coalesce(sum(due.overdue_jobs), 0)::bigint AS overdue_jobs,
               coalesce(max(running.running_jobs), 0)::bigint AS running_jobs,
               extract(epoch FROM now() - min(due.oldest_due_since))::float8
                   AS oldest_due_seconds,
               coalesce(bool_or(due.capped), false) AS capped
        FROM due FULL JOIN running ON running.queue_name = due.queue_name
        GROUP BY 1
        """,
        {
            "tenant": tenant_id,
            "cap": DUE_JOBS_COUNT_CAP,
            "overdue": datetime.timedelta(seconds=overdue_seconds),
        },
    )
    return {
        row["queue_name"]: TenantQueueState(
            due_jobs=row["due_jobs"],
            overdue_jobs=row["overdue_jobs"],
            running_jobs=row["running_jobs"],
            oldest_due_seconds=max(0.0, row["oldest_due_seconds"] or 0.0),
            capped=row["capped"],
        )
        for row in await cursor.fetchall()
        if row["due_jobs"] or row["running_jobs"]
    }
