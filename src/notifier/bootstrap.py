"""The composition root: builds the pool, the queue app and the channels from settings.

The API, the worker, ``notifier dev`` and the procrastinate CLI all start here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from notifier import maintenance
from notifier.channels.base import Channel
from notifier.channels.email import create_email_channel
from notifier.channels.log import LogChannel
from notifier.channels.sms import create_sms_channel
from notifier.channels.webhook import WebhookChannel
from notifier.db import connect_options, create_fetch_pool, create_pool
from notifier.events import tasks as event_tasks
from notifier.notifications import tasks as notification_tasks
from notifier.queue import DELIVER_TASK, MAINTENANCE_TASK, PROCESS_EVENT_TASK
from notifier.queue.app import QueueApp, Task, create_app, open_app
from notifier.secret_box import SecretBox
from notifier.services import Services
from notifier.settings import Settings, parse_networks
from notifier.telemetry.metrics import Metrics
from notifier.templates.pool import RenderPool

UNEXPECTED_FAILURES = 10


def queue_tasks(settings: Settings) -> list[Task]:
    """Every notifier task, with its retry policy."""
    return [
        Task(PROCESS_EVENT_TASK, event_tasks.process_event, max_attempts=UNEXPECTED_FAILURES),
        # deliver's runs include the attempts it reschedules itself: room for those, plus as
        # many unexpected failures as any other task gets.
        Task(
            DELIVER_TASK,
            notification_tasks.deliver,
            max_attempts=settings.delivery_max_attempts + UNEXPECTED_FAILURES,
        ),
        # Every minute, once across all workers; a failed run is simply the next one.
        Task(
            MAINTENANCE_TASK,
            maintenance.run_maintenance,
            cron="* * * * *",
            periodic_id="maintenance",
        ),
    ]


def create_queue_app(settings: Settings) -> QueueApp:
    """The procrastinate app with every notifier task registered. Connects nothing yet."""
    return create_app(settings.database_url, connect_options(settings), queue_tasks(settings))


def create_channels(settings: Settings) -> dict[str, Channel]:
    """Every channel this process can deliver through, by name."""
    channels: list[Channel] = [
        LogChannel(),
        # Each message carries its own signing secrets (notifier.endpoints.delivery).
        WebhookChannel(
            secret=None,
            timeout_seconds=settings.webhook_timeout_seconds,
            user_agent=settings.webhook_user_agent,
            allowed_networks=parse_networks(settings.webhook_allowed_networks),
        ),
    ]
    # Email and SMS exist only where their server or provider is configured.
    channels.extend(
        channel
        for channel in (create_email_channel(settings), create_sms_channel(settings))
        if channel is not None
    )
    return {channel.name: channel for channel in channels}


def create_renderer(settings: Settings) -> RenderPool:
    """The process's template sandboxes (none runs until a template needs one)."""
    return RenderPool(
        size=settings.template_renderers,
        render_timeout_seconds=settings.template_render_timeout_ms / 1000,
        memory_mb=settings.template_memory_mb,
    )


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    name: str = "notifier",
    metrics: Metrics | None = None,
    runs_jobs: bool = True,
) -> AsyncIterator[Services]:
    """Open the pool and share it with the queue; close everything on exit.

    The template renderers (child processes) start when first needed and stop here.

    ``metrics`` lets two parts of one process (``notifier dev``) count into one registry.
    A process that runs jobs (``runs_jobs``) also gets, with ``worker_fetch_async_commit``,
    the one asynchronous-commit connection it fetches jobs on. The API only defers jobs,
    always on its business connections, so it needs nothing but the shared pool.
    """
    # First: without its keys, no process may start (stored secrets would be unreadable).
    secret_box = SecretBox.from_settings(settings)
    channels = create_channels(settings)
    queue = create_queue_app(settings)
    renderer = create_renderer(settings)
    pool = create_pool(settings, name=name)
    fetch_pool = None
    if runs_jobs and settings.worker_fetch_async_commit:
        fetch_pool = create_fetch_pool(settings, name=name)
    metrics = metrics or Metrics()
    if runs_jobs:  # the API delivers nothing: its deliveries series would be zeros forever
        metrics.expect_channels(channels)
    await pool.open()
    try:
        if fetch_pool is not None:
            await fetch_pool.open()
        async with open_app(queue, pool, fetch_pool=fetch_pool):
            yield Services(
                settings=settings,
                pool=pool,
                queue=queue,
                channels=channels,
                renderer=renderer,
                secret_box=secret_box,
                metrics=metrics,
            )
    finally:
        await renderer.close()
        for channel in channels.values():
            await channel.aclose()
        if fetch_pool is not None:
            await fetch_pool.close()
        await pool.close()
