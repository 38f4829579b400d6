"""The ``process_event`` task: an event becomes notifications and their deliver jobs."""

from __future__ import annotations

import datetime
import uuid

from notifier.events import service
from notifier.queue import JobInfo
from notifier.services import Services


async def process_event(
    services: Services, job: JobInfo, event_id: str, tenant_id: str | None = None
) -> None:
    """Apply the routing rules to one event (:func:`notifier.events.service.process`).

    ``tenant_id`` is there for the fetch, which shares out due jobs by tenant (migration
    0011); the event row says the same. Jobs deferred before that revision have none.
    """
    await service.process(
        services.pool,
        services.metrics,
        uuid.UUID(event_id),
        max_notifications=services.settings.max_notifications_per_event,
        expiry_grace=datetime.timedelta(seconds=services.settings.expiry_grace_seconds),
        default_phone_region=services.settings.default_phone_region,
    )
