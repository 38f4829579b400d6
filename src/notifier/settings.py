"""Configuration: one typed object, read from ``NOTIFIER_*`` environment variables once.

Everything else receives a :class:`Settings` instance; nothing reads the environment itself.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/notifier"
ENV_PREFIX = "NOTIFIER_"


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob notifier has. Field ``foo_bar`` is read from ``NOTIFIER_FOO_BAR``."""

    database_url: str = DEFAULT_DATABASE_URL
    # Connections per process. A worker holds one per delivery in flight (the row lock
    # lives as long as the send), plus the queue's own: keep it above worker concurrency.
    database_pool_min_size: int = 2
    database_pool_max_size: int = 20
    # How long a request waits for a connection before answering 503.
    database_timeout_seconds: float = 5.0

    api_host: str = "127.0.0.1"
    api_port: int = 8000

    worker_concurrency: int = 10
    # Scheduled jobs are found by polling; LISTEN/NOTIFY only wakes workers for jobs due now.
    worker_poll_interval_seconds: float = 0.5
    # Turn off behind PgBouncer in transaction mode, which cannot carry LISTEN.
    worker_listen_notify: bool = True
    worker_shutdown_timeout_seconds: float = 30.0
    # A worker that has not heartbeated for this long is considered dead and its jobs re-run.
    stalled_worker_seconds: float = 60.0
    # Workers fetch jobs on a connection of their own that commits without waiting for the
    # WAL flush; business writes and finishing a job stay durable. A lost fetch only puts
    # the job back in the queue (docs/performance.md).
    worker_fetch_async_commit: bool = True
    # Succeeded/cancelled jobs older than this are pruned; failed ones are kept for admins.
    prune_jobs_after_hours: int = 72
    idempotency_ttl_hours: int = 24

    delivery_max_attempts: int = 8
    # A deliver job also sends up to this many other due notifications of its channel at once
    # (none under a rate limit), in its transaction; 1 sends each in its own job only.
    delivery_batch_size: int = 50
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 6 * 3600.0

    # Channel for notifications created over REST without an explicit one.
    default_channel: str = "log"
    webhook_timeout_seconds: float = 10.0
    # Standard Webhooks secret ("whsec_" + base64). Unset: webhooks are sent unsigned.
    webhook_secret: str | None = None
    webhook_user_agent: str = "notifier-webhooks/0.1"
    # Comma-separated CIDRs webhooks may reach although they are not public (loopback,
    # private, link-local...). Empty: public addresses only.
    webhook_allowed_networks: str = ""
    # Webhook requests in flight to one host (scheme, host, port) at once, across every
    # worker process; a delivery that finds them all taken waits without spending an
    # attempt (notifier.notifications.host_slots). 0: no cap.
    webhook_max_in_flight_per_host: int = 8

    # Requests with a larger body are refused with 413 before they are read.
    api_max_body_bytes: int = 1024 * 1024

    # Signs unsubscribe links (any long random string). Unset: emails carry no such links.
    unsubscribe_secret: str | None = None
    # Where recipients reach this API from outside, for absolute links ("https://n.example.com").
    public_base_url: str | None = None
    # Sends per second per tenant on each channel, across all workers; unset is unlimited.
    # Per-tenant overrides live in notifier.rate_limits (PUT /api/v1/rate-limits/{channel}).
    rate_limit_email_per_second: float | None = None
    rate_limit_sms_per_second: float | None = None
    rate_limit_webhook_per_second: float | None = None
    # How many sends may go out back to back before the rate applies (1: evenly spaced).
    rate_limit_burst: int = 1

    # Operations. Tracing is configured by the standard OTEL_* variables, not here.
    # "json" (one object per line) or "text"; unset: text for `notifier dev` and the admin
    # commands, json for `notifier api` and `notifier worker`.
    log_format: str | None = None
    log_level: str = "INFO"
    # Workers serve their own counters on this port at /metrics; 0 turns it off.
    worker_metrics_port: int = 0
    worker_metrics_host: str = "127.0.0.1"
    # Gauges read from PostgreSQL (queues, workers, notifications) are reused this long.
    metrics_cache_seconds: float = 5.0
    # A job still waiting this long after it was due counts as overdue in /health/ready.
    overdue_job_seconds: float = 60.0

    # API keys are read from the database at most this often per key and API process: a
    # revoked key keeps working for up to this long.
    api_key_cache_seconds: float = 5.0
    # Per key and per API process (see docs/security.md); a key's own limit overrides them.
    api_rate_limit_per_second: float = 100.0
    api_rate_limit_burst: int = 200
    # An event whose rules would make more notifications than this makes none, and says so.
    max_notifications_per_event: int = 100

    # Email over SMTP. The channel exists only when smtp_host is set.
    smtp_host: str | None = None
    smtp_port: int = 587
    # "starttls" (upgrade a plain connection, usually port 587), "tls" (implicit TLS,
    # usually 465) or "none" (plain text: local relays and tests only).
    smtp_tls: str = "starttls"
    smtp_username: str | None = None
    # Secrets stay out of the repr, so a logged Settings never shows them.
    smtp_password: str | None = dataclasses.field(default=None, repr=False)
    # A PEM bundle of CAs to trust instead of the system's (a relay with a private CA).
    smtp_ca_file: str | None = None
    smtp_timeout_seconds: float = 10.0
    email_from: str = "notifier@localhost"
    email_reply_to: str | None = None

    # SMS through a provider's HTTP API. The channel exists only when sms_provider is set:
    # "twilio" (Twilio's REST shape) or "json" (a generic JSON POST to sms_api_url).
    sms_provider: str | None = None
    # Twilio: the API's base URL (https://api.twilio.com when unset); json: the endpoint.
    sms_api_url: str | None = None
    sms_account_sid: str | None = None
    # Twilio's auth token, or the json provider's bearer token.
    sms_auth_token: str | None = dataclasses.field(default=None, repr=False)
    # The sending number (E.164) or alphanumeric sender id.
    sms_from: str | None = None
    sms_timeout_seconds: float = 10.0
    # Longer texts are cut to this many segments (with "...") or, if sms_truncate is
    # false, fail permanently.
    sms_max_segments: int = 3
    sms_truncate: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in fields(cls):
            name = ENV_PREFIX + field.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(name, raw, hints[field.name])
        return cls(**values)

    def __post_init__(self) -> None:
        # Fail when the settings are read, not when the first request or webhook needs them.
        if self.api_rate_limit_per_second <= 0 or self.api_rate_limit_burst < 1:
            raise SettingsError(
                "NOTIFIER_API_RATE_LIMIT_PER_SECOND must be above 0 and "
                "NOTIFIER_API_RATE_LIMIT_BURST at least 1"
            )
        if self.delivery_batch_size < 1:
            raise SettingsError(f"{ENV_PREFIX}DELIVERY_BATCH_SIZE must be at least 1")
        if self.webhook_max_in_flight_per_host < 0:
            raise SettingsError(f"{ENV_PREFIX}WEBHOOK_MAX_IN_FLIGHT_PER_HOST must be 0 or more")
        try:
            parse_networks(self.webhook_allowed_networks)
        except ValueError as exc:
            raise SettingsError(f"{ENV_PREFIX}WEBHOOK_ALLOWED_NETWORKS: {exc}") from None

    def __repr__(self) -> str:
        """Every field, with secrets and the database password masked: settings get logged."""
        shown = []
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None and _is_secret(field.name):
                value = MASK
            elif field.name == "database_url":
                value = _mask_password(value)
            shown.append(f"{field.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the dev command use it)."""
        return dataclasses.replace(self, **changes)


MASK = "***"
_SECRET_WORDS = ("secret", "password", "token", "credential")


def _is_secret(name: str) -> bool:
    """Whether a field holds a secret, by its name: new credentials are covered by default."""
    return name.endswith("_key") or any(word in name for word in _SECRET_WORDS)


def _mask_password(database_url: str) -> str:
    """``database_url`` with any password replaced by :data:`MASK`."""
    try:
        params = conninfo_to_dict(database_url)
    except psycopg.ProgrammingError:
        return MASK  # unparsable: it could be anything, show nothing
    if "password" not in params:
        return database_url
    params["password"] = MASK
    return make_conninfo("", **params)


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs (``"127.0.0.0/8, ::1/128"``); a bare address is a /32 or /128.

    Raises :class:`ValueError` naming the entry that is not a network.
    """
    networks = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP network such as 10.0.0.0/8") from None
    return tuple(networks)


def _parse(name: str, raw: str, annotation: Any) -> Any:
    target = annotation
    if target == str | None:
        return raw
    if target == float | None:
        target = float
    try:
        if target is bool:
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if target is int:
            return int(raw)
        if target is float:
            return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {target.__name__}") from None
    return raw
