"""The periodic housekeeping task: recover jobs of dead workers, prune what is finished."""

from __future__ import annotations

import logging

import procrastinate
import psycopg
from procrastinate.exceptions import ConnectorException
from procrastinate.manager import JobManager

from notifier import idempotency
from notifier.db import transaction
from notifier.queue import MAINTENANCE_QUEUE, MAINTENANCE_TASK
from notifier.services import Services, services_from_context

logger = logging.getLogger("notifier.maintenance")

# Names the advisory lock that serialises stalled-job recovery across maintenance runs.
STALLED_JOBS_LOCK = "notifier.maintenance.stalled_jobs"


async def requeue_stalled_jobs(services: Services, manager: JobManager) -> int:
    """Put the running jobs of dead workers back in the queue; how many were requeued.

    One run at a time: two runs listing the same stalled job would both requeue it, and
    the second could do so after a live worker had already fetched it again, running the
    job twice at once. The lock makes a later run list the jobs only after the earlier
    one has requeued them, when they are no longer stalled.
    """
    settings = services.settings
    async with transaction(services.pool) as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [STALLED_JOBS_LOCK])
        stalled = list(
            await manager.get_stalled_jobs(seconds_since_heartbeat=settings.stalled_worker_seconds)
        )
        requeued = 0
        for job in stalled:
            logger.warning("requeueing job %s (%s) of a dead worker", job.id, job.task_name)
            try:
                await manager.retry_job(job)
            except ConnectorException as exc:
                # procrastinate_retry_job refuses a job that is no longer running (a
                # worker thought dead finished it after all): nothing to recover.
                if not isinstance(exc.__cause__, psycopg.errors.RaiseException):
                    raise
                logger.warning("job %s was no longer running: %s", job.id, exc.__cause__)
                continue
            requeued += 1
    return requeued


async def run_maintenance(context: procrastinate.JobContext, timestamp: int) -> None:
    """Requeue stalled jobs, delete old finished jobs and expired idempotency keys.

    Runs every minute on whichever worker takes it; procrastinate's periodic defer lock
    makes it run once per minute however many workers there are.
    """
    services = services_from_context(context)
    settings = services.settings
    manager = context.app.job_manager
    requeued = await requeue_stalled_jobs(services, manager)
    await manager.delete_old_jobs(
        nb_hours=settings.prune_jobs_after_hours, include_cancelled=True, include_aborted=True
    )
    async with transaction(services.pool) as conn:
        pruned = await idempotency.prune(conn, older_than_hours=settings.idempotency_ttl_hours)
    logger.info(
        "maintenance at %s: %d stalled jobs requeued, %d keys pruned",
        timestamp,
        requeued,
        pruned,
    )


def register(queue: procrastinate.App) -> None:
    """Add the periodic maintenance task to ``queue``."""
    task = queue.task(name=MAINTENANCE_TASK, queue=MAINTENANCE_QUEUE, pass_context=True)(
        run_maintenance
    )
    queue.periodic(cron="* * * * *", periodic_id="maintenance")(task)
