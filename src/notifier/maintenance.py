"""The periodic housekeeping task: recover jobs of dead workers, prune what is finished."""

from __future__ import annotations

import logging

import procrastinate

from notifier import idempotency
from notifier.db import transaction
from notifier.queue import MAINTENANCE_QUEUE, MAINTENANCE_TASK
from notifier.services import services_from_context

logger = logging.getLogger("notifier.maintenance")


async def run_maintenance(context: procrastinate.JobContext, timestamp: int) -> None:
    """Requeue stalled jobs, delete old finished jobs and expired idempotency keys.

    Runs every minute on whichever worker takes it; procrastinate's periodic defer lock
    makes it run once per minute however many workers there are.
    """
    services = services_from_context(context)
    settings = services.settings
    manager = context.app.job_manager
    stalled = list(
        await manager.get_stalled_jobs(seconds_since_heartbeat=settings.stalled_worker_seconds)
    )
    for job in stalled:
        logger.warning("requeueing job %s (%s) of a dead worker", job.id, job.task_name)
        await manager.retry_job(job)
    await manager.delete_old_jobs(
        nb_hours=settings.prune_jobs_after_hours, include_cancelled=True, include_aborted=True
    )
    async with transaction(services.pool) as conn:
        pruned = await idempotency.prune(conn, older_than_hours=settings.idempotency_ttl_hours)
    logger.info(
        "maintenance at %s: %d stalled jobs requeued, %d keys pruned",
        timestamp,
        len(stalled),
        pruned,
    )


def register(queue: procrastinate.App) -> None:
    """Add the periodic maintenance task to ``queue``."""
    task = queue.task(name=MAINTENANCE_TASK, queue=MAINTENANCE_QUEUE, pass_context=True)(
        run_maintenance
    )
    queue.periodic(cron="* * * * *", periodic_id="maintenance")(task)
