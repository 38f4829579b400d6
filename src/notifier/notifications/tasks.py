"""The ``deliver`` task: the queue's entry into :mod:`notifier.notifications.delivery`."""

from __future__ import annotations

import uuid

from notifier.notifications import delivery
from notifier.queue import JobInfo, jobs
from notifier.services import Services


async def deliver(
    services: Services,
    job: JobInfo,
    notification_id: str,
    tenant_id: str | None = None,
    slot_waits: int = 0,
) -> None:
    """Deliver the notification ``notification_id``, with other due ones of its channel and
    of its job's tenant (``tenant_id``; None in jobs deferred before migration 0011) at the
    job's priority. ``slot_waits`` counts the times the delivery already waited for a host
    slot. The job's arguments are what :func:`notifier.notifications.scheduling.delivery_job`
    wrote.
    """
    await delivery.deliver(
        services,
        uuid.UUID(notification_id),
        job_id=job.id,
        group=delivery.JobGroup(
            tenant_id, job.priority, after=jobs.JobPosition(job.id, job.scheduled_at)
        ),
        slot_waits=slot_waits,
    )
