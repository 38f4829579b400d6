"""Configuration: one typed object, read from ``NOTIFIER_*`` environment variables once.

Everything else receives a :class:`Settings` instance; nothing reads the environment itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

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
    # Succeeded/cancelled jobs older than this are pruned; failed ones are kept for admins.
    prune_jobs_after_hours: int = 72
    idempotency_ttl_hours: int = 24

    delivery_max_attempts: int = 8
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 6 * 3600.0

    # Channel for notifications created over REST without an explicit one.
    default_channel: str = "log"
    webhook_timeout_seconds: float = 10.0
    # Standard Webhooks secret ("whsec_" + base64). Unset: webhooks are sent unsigned.
    webhook_secret: str | None = None
    webhook_user_agent: str = "notifier-webhooks/0.1"

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

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the dev command use it)."""
        return dataclasses.replace(self, **changes)


def _parse(name: str, raw: str, annotation: Any) -> Any:
    target = annotation
    if target == str | None:
        return raw
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
