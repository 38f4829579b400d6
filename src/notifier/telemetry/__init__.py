"""Logs, traces and metrics, set up once per process by its entry point."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from notifier.settings import Settings
from notifier.telemetry.logs import configure_logging
from notifier.telemetry.tracing import client_span, current_traceparent, setup_tracing

if TYPE_CHECKING:  # the SDK is imported only where tracing is on (telemetry.provider)
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["Telemetry", "client_span", "current_traceparent", "setup_telemetry"]


@dataclass(frozen=True, slots=True)
class Telemetry:
    """What :func:`setup_telemetry` installed; ``shutdown`` flushes spans still buffered."""

    tracer_provider: TracerProvider | None

    def shutdown(self) -> None:
        """Export the spans still queued and stop the exporter (call once, at exit)."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()


def setup_telemetry(
    settings: Settings,
    service_name: str,
    *,
    log_format: str = "json",
    environ: Mapping[str, str] | None = None,
) -> Telemetry:
    """Configure logging, and tracing when the ``OTEL_*`` variables name an OTLP endpoint.

    ``log_format`` is this kind of process's default, used unless ``NOTIFIER_LOG_FORMAT``
    says otherwise. Raises :class:`~notifier.settings.SettingsError` on unusable values.
    """
    configure_logging(
        settings.log_format or log_format,
        settings.log_level,
        access_log_probes=settings.access_log_probes,
    )
    provider = setup_tracing(service_name, os.environ if environ is None else environ)
    return Telemetry(tracer_provider=provider)
