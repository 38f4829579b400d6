"""What handlers and tasks need at run time, built once per process by :mod:`notifier.bootstrap`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import procrastinate

from notifier.channels.base import Channel
from notifier.db import Pool
from notifier.settings import Settings
from notifier.telemetry.metrics import Metrics
from notifier.templates.pool import RenderPool

SERVICES_CONTEXT_KEY = "services"


@dataclass(frozen=True, slots=True)
class Services:
    """The process's settings, pool, queue, channels, template renderers and metrics."""

    settings: Settings
    pool: Pool
    queue: procrastinate.App
    channels: dict[str, Channel]
    renderer: RenderPool
    metrics: Metrics = field(default_factory=Metrics)

    def channel(self, name: str) -> Channel | None:
        """The channel called ``name``, if this process has it configured."""
        return self.channels.get(name)


def services_from_context(context: procrastinate.JobContext) -> Services:
    """The :class:`Services` a worker hands its tasks through ``additional_context``."""
    services: Any = context.additional_context.get(SERVICES_CONTEXT_KEY)
    if not isinstance(services, Services):
        raise RuntimeError(
            "notifier tasks must run in a worker started by `notifier worker` or `notifier dev`"
        )
    return services
