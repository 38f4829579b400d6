"""The ``process_event`` task: an event becomes notifications and their deliver jobs."""

from __future__ import annotations

import datetime
import uuid

from notifier.events import service
from notifier.queue import JobInfo, jobs
from notifier.services import Services


async def process_event(
    services: Services, job: JobInfo, event_id: str, tenant_id: str | None = None
) -> None:
    """Apply the routing rules to one event, with other due events of its job's tenant
    (``tenant_id``; None in jobs deferred before migration 0011) at the job's priority
    (:func:`notifier.events.service.process`).

    ``tenant_id`` is there for the fetch, which shares out due jobs by tenant (migration
    0011), and for the batch, which is one tenant's turn; the event row says the same.
    """
    await service.process(
        services.pool,
        services.metrics,
        uuid.UUID(event_id),
        max_notifications=services.settings.max_notifications_per_event,
        group=service.JobGroup(
            tenant_id, job.priority, after=jobs.JobPosition(job.id, job.scheduled_at)
        ),
        batch_size=services.settings.event_batch_size,
        expiry_grace=datetime.timedelta(seconds=services.settings.expiry_grace_seconds),
        default_phone_region=services.settings.default_phone_region,
        keep_succeeded_jobs=services.settings.keep_succeeded_jobs,
    )
