"""What handlers and tasks need at run time, built once per process by :mod:`notifier.bootstrap`."""

from __future__ import annotations

from dataclasses import dataclass, field

from notifier.channels.base import Channel
from notifier.db import Pool
from notifier.queue.app import QueueApp
from notifier.secret_box import SecretBox
from notifier.settings import Settings
from notifier.telemetry.metrics import Metrics
from notifier.telemetry.overview import DeliveryHistory
from notifier.templates.pool import RenderPool


@dataclass(frozen=True, slots=True)
class Services:
    """The process's settings, pool, queue, channels, template renderers and metrics.

    Workers hand them to every task (``deps`` of :func:`notifier.queue.app.run_worker`).
    """

    settings: Settings
    pool: Pool
    queue: QueueApp
    channels: dict[str, Channel]
    renderer: RenderPool
    # Decrypts and encrypts stored secrets (webhook signing secrets).
    secret_box: SecretBox
    metrics: Metrics = field(default_factory=Metrics)
    # The dashboard overview's settled minutes of each tenant's deliveries.
    delivery_history: DeliveryHistory = field(default_factory=DeliveryHistory)

    def channel(self, name: str) -> Channel | None:
        """The channel called ``name``, if this process has it configured."""
        return self.channels.get(name)
