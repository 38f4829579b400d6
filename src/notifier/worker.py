"""Running a procrastinate worker with notifier's settings and services."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from notifier.queue import ALL_QUEUES
from notifier.services import SERVICES_CONTEXT_KEY, Services
from notifier.telemetry.tracing import job_tracing_middleware

logger = logging.getLogger("notifier.worker")


async def run_worker(
    services: Services,
    *,
    queues: Iterable[str] = ALL_QUEUES,
    concurrency: int | None = None,
    wait: bool = True,
    install_signal_handlers: bool = True,
    name: str = "worker",
) -> None:
    """Process jobs until stopped (or, with ``wait=False``, until the queues are empty)."""
    settings = services.settings
    concurrency = concurrency or settings.worker_concurrency
    # Each delivery in flight holds a connection (its row lock), plus LISTEN and bookkeeping.
    if concurrency + 2 > settings.database_pool_max_size:
        logger.warning(
            "worker concurrency %d needs a pool of at least %d connections, have %d",
            concurrency,
            concurrency + 2,
            settings.database_pool_max_size,
        )
    await services.queue.run_worker_async(
        queues=list(queues),
        concurrency=concurrency,
        wait=wait,
        name=name,
        fetch_job_polling_interval=settings.worker_poll_interval_seconds,
        abort_job_polling_interval=max(settings.worker_poll_interval_seconds, 1.0),
        listen_notify=settings.worker_listen_notify,
        shutdown_graceful_timeout=settings.worker_shutdown_timeout_seconds,
        stalled_worker_timeout=settings.stalled_worker_seconds,
        # procrastinate heartbeats every 10 s by default: with a shorter stalled timeout a
        # live worker would look dead and its running jobs be requeued under it.
        update_heartbeat_interval=min(10.0, settings.stalled_worker_seconds / 4),
        install_signal_handlers=install_signal_handlers,
        additional_context={SERVICES_CONTEXT_KEY: services},
        # Each job runs in a span continuing the trace stored on its event or notification.
        worker_middleware=[job_tracing_middleware(services.pool)],
    )
