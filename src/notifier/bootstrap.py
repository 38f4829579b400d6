"""The composition root: builds the pool, the queue app and the channels from settings.

The API, the worker, ``notifier dev`` and the procrastinate CLI all start here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import procrastinate

from notifier import maintenance
from notifier.channels.base import Channel
from notifier.channels.email import create_email_channel
from notifier.channels.log import LogChannel
from notifier.channels.sms import create_sms_channel
from notifier.channels.webhook import WebhookChannel
from notifier.db import create_pool
from notifier.events import tasks as event_tasks
from notifier.notifications import tasks as notification_tasks
from notifier.queue import NotifierRetryStrategy
from notifier.services import Services
from notifier.settings import Settings

UNEXPECTED_FAILURES = 10


def create_queue_app(settings: Settings) -> procrastinate.App:
    """The procrastinate app with every notifier task registered. Connects nothing yet."""
    queue = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=settings.database_url)
    )
    event_tasks.register(queue, NotifierRetryStrategy(max_attempts=UNEXPECTED_FAILURES))
    # deliver's runs include the attempts it reschedules itself: room for those, plus as many
    # unexpected failures as any other task gets.
    notification_tasks.register(
        queue,
        NotifierRetryStrategy(max_attempts=settings.delivery_max_attempts + UNEXPECTED_FAILURES),
    )
    maintenance.register(queue)
    return queue


def create_channels(settings: Settings) -> dict[str, Channel]:
    """Every channel this process can deliver through, by name."""
    channels: list[Channel] = [
        LogChannel(),
        WebhookChannel(
            secret=settings.webhook_secret,
            timeout_seconds=settings.webhook_timeout_seconds,
            user_agent=settings.webhook_user_agent,
        ),
    ]
    # Email and SMS exist only where their server or provider is configured.
    channels.extend(
        channel
        for channel in (create_email_channel(settings), create_sms_channel(settings))
        if channel is not None
    )
    return {channel.name: channel for channel in channels}


@asynccontextmanager
async def open_services(settings: Settings, *, name: str = "notifier") -> AsyncIterator[Services]:
    """Open the pool and share it with the queue; close everything on exit."""
    channels = create_channels(settings)
    queue = create_queue_app(settings)
    pool = create_pool(settings, name=name)
    await pool.open()
    try:
        async with queue.open_async(pool):
            yield Services(settings=settings, pool=pool, queue=queue, channels=channels)
    finally:
        for channel in channels.values():
            await channel.aclose()
        await pool.close()
