"""The periodic housekeeping task: recover jobs of dead workers, prune what is finished."""

from __future__ import annotations

import datetime
import logging

from notifier import idempotency
from notifier.db import transaction
from notifier.endpoints import service as endpoints
from notifier.events import queries as event_queries
from notifier.queue import JobInfo, jobs
from notifier.services import Services

logger = logging.getLogger("notifier.maintenance")

# Names the advisory lock that serialises stalled-job recovery across maintenance runs.
STALLED_JOBS_LOCK = "notifier.maintenance.stalled_jobs"
# Finished jobs that are pruned; failed ones are kept for admins to inspect and retry.
# Workers delete succeeded jobs as they succeed: the ones left are older workers' (before
# migration 0021's release) or a job finished by hand without deleting it.
PRUNED_JOB_STATUSES = ("succeeded", "cancelled", "aborted")
# Reminder keys deleted per run at most: a short transaction each minute catches up with
# any backlog (600,000 an hour) without holding many row locks at once.
REMINDER_KEYS_PRUNED_PER_RUN = 10_000


async def requeue_stalled_jobs(services: Services) -> int:
    """Put the running jobs of dead workers back in the queue; how many were requeued.

    One run at a time: two runs listing the same stalled job would both requeue it, and
    the second could do so after a live worker had already fetched it again, running the
    job twice at once. The lock makes a later run list the jobs only after the earlier
    one has requeued them (in the transaction that holds the lock), when they are no
    longer stalled.
    """
    settings = services.settings
    async with transaction(services.pool) as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [STALLED_JOBS_LOCK])
        stalled = await jobs.stalled_jobs(
            conn, seconds_since_heartbeat=settings.stalled_worker_seconds
        )
        requeued = 0
        for job in stalled:
            logger.warning("requeueing job %s (%s) of a dead worker", job.id, job.task_name)
            if not await jobs.requeue_running_job(conn, job.id):
                # A worker thought dead finished it after all: nothing to recover.
                logger.warning("job %s was no longer running", job.id)
                continue
            requeued += 1
    return requeued


async def run_maintenance(services: Services, job: JobInfo, timestamp: int) -> None:
    """Requeue stalled jobs, delete old finished jobs, expired idempotency keys and reminder
    keys no longer needed.

    Runs every minute on whichever worker takes it; procrastinate's periodic defer lock
    makes it run once per minute however many workers there are.
    """
    settings = services.settings
    requeued = await requeue_stalled_jobs(services)
    async with transaction(services.pool) as conn:
        await jobs.prune_finished_jobs(
            conn, older_than_hours=settings.prune_jobs_after_hours, statuses=PRUNED_JOB_STATUSES
        )
    async with transaction(services.pool) as conn:
        pruned = await idempotency.prune(conn, older_than_hours=settings.idempotency_ttl_hours)
    async with transaction(services.pool) as conn:
        keys_pruned = await event_queries.prune_reminder_keys(
            conn,
            older_than=datetime.timedelta(days=settings.reminder_keys_retention_days),
            limit=REMINDER_KEYS_PRUNED_PER_RUN,
        )
    disabled = await endpoints.disable_failing_endpoints(
        services.pool, services.metrics, **endpoints.disable_thresholds(settings)
    )
    released = await endpoints.release_held_of_enabled_endpoints(services.pool)
    logger.info(
        "maintenance at %s: %d stalled jobs requeued, %d idempotency keys and %d reminder "
        "keys pruned, %d failing endpoints disabled, %d held notifications released",
        timestamp,
        requeued,
        pruned,
        keys_pruned,
        disabled,
        released,
    )
