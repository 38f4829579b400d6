"""Configuration: one typed object, read from ``NOTIFIER_*`` environment variables once.

Everything else receives a :class:`Settings` instance; nothing reads the environment itself.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import functools
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any, get_type_hints

import msgspec
import psycopg
from msgspec import Meta
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from notifier.rate_limits.gcra import MAX_BURST, MAX_PER_SECOND, MIN_PER_SECOND, check_limit
from notifier.recipients import phone_region_problem

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/notifier"
ENV_PREFIX = "NOTIFIER_"
# NOTIFIER_* variables that are not settings, and so are not refused as misspelt ones: the
# key `notifier dev` prints for clients to export, and the test and benchmark suites' knobs.
NOT_SETTINGS = ("NOTIFIER_KEY",)
NOT_SETTINGS_PREFIXES = (
    "NOTIFIER_TEST_",
    "NOTIFIER_FUZZ_",
    "NOTIFIER_FAULTS_",
    "NOTIFIER_SOAK_",
    "NOTIFIER_BENCH_",
)

# Constraints a field's annotation carries; checked on every Settings built, whether from the
# environment, by replace() or directly. A new setting with a constraint is one line:
#     template_render_timeout_seconds: PositiveFloat = 2.0
PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]  # 0: the system picks one (tests)
# Every rate limit's bounds (rate_limits/gcra.py); a send rate of 0 means unlimited.
RequestRate = Annotated[float, Meta(ge=MIN_PER_SECOND, le=MAX_PER_SECOND)]
Burst = Annotated[int, Meta(ge=1, le=MAX_BURST)]


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob notifier has. Field ``foo_bar`` is read from ``NOTIFIER_FOO_BAR``.

    A field's annotation carries its constraints (``PositiveInt``...): every instance is
    checked, and a bad value is a :class:`SettingsError` naming the variable.
    """

    database_url: str = DEFAULT_DATABASE_URL
    # Connections per process. A worker holds one per delivery in flight (the row lock
    # lives as long as the send), plus the queue's own: keep it above worker concurrency.
    database_pool_min_size: NonNegativeInt = 2
    database_pool_max_size: PositiveInt = 20
    # How long a request waits for a connection before answering 503.
    database_timeout_seconds: PositiveFloat = 5.0
    # psycopg prepares a statement once it has run it a few times on a connection. Behind a
    # transaction pooler (PgBouncer before 1.21, or without max_prepared_statements) the
    # statement lands on a server connection other clients share: turn it off there.
    database_prepared_statements: bool = True

    api_host: str = "127.0.0.1"
    api_port: Port = 8000

    worker_concurrency: PositiveInt = 10
    # Scheduled jobs are found by polling; LISTEN/NOTIFY only wakes workers for jobs due now.
    worker_poll_interval_seconds: PositiveFloat = 0.5
    # Turn off behind PgBouncer in transaction mode, which cannot carry LISTEN.
    worker_listen_notify: bool = True
    worker_shutdown_timeout_seconds: NonNegativeFloat = 30.0
    # A worker that has not heartbeated for this long is considered dead and its jobs re-run.
    # Workers heartbeat five times per period (on their fetch connection), so a live one is
    # taken for dead only after missing four in a row; a killed one's jobs run again within
    # this plus a fifth of it (each worker looks that often) plus a poll.
    stalled_worker_seconds: PositiveFloat = 5.0
    # Workers fetch jobs on a connection of their own that commits without waiting for the
    # WAL flush; business writes and finishing a job stay durable. A lost fetch only puts
    # the job back in the queue (docs/performance.md).
    worker_fetch_async_commit: bool = True
    # Cancelled/aborted jobs older than this are pruned (succeeded ones too when kept);
    # failed ones are kept for admins.
    prune_jobs_after_hours: NonNegativeInt = 72
    # Keep succeeded jobs (and their procrastinate_events rows) until pruned, for a job
    # history in the procrastinate shell. Off: a job is deleted as it succeeds, which writes
    # less per job (no new row version, no event row) and leaves nothing to prune.
    keep_succeeded_jobs: bool = False
    idempotency_ttl_hours: PositiveInt = 24
    # A reminder key's record of its latest event (what tells a late older event from a
    # newer one) is pruned this long after it was last written, once nothing of the key is
    # pending: an older event arriving later than that would count as the newest.
    reminder_keys_retention_days: PositiveInt = 30

    # A notification with a target date and no deadline of the client's (expires_at, a
    # rule's deliver_within) expires only once its target date passed this long ago, counted
    # from when it was accepted if that was later: notifier's own delays never expire it.
    expiry_grace_seconds: NonNegativeFloat = 300.0

    delivery_max_attempts: PositiveInt = 8
    # A deliver job also sends up to this many other due notifications of its channel at once
    # (none under a rate limit), in its transaction; 1 sends each in its own job only. Each
    # batch has a fixed cost (fetch, lock, settle), so larger batches cost less per
    # notification (docs/performance.md, "Batch size").
    delivery_batch_size: PositiveInt = 200
    # ... but at most this many for channels that send each message on a connection of its
    # own, a few at once per process (email, SMS): more would only wait for a connection
    # with their rows locked.
    delivery_connection_batch_size: PositiveInt = 50
    # A process_event job also processes up to this many other due events of its tenant at
    # once, in its transaction (their notifications and jobs written together); 1 processes
    # each in its own job only.
    event_batch_size: PositiveInt = 100
    retry_base_seconds: PositiveFloat = 5.0
    retry_max_seconds: PositiveFloat = 6 * 3600.0

    # Channel for notifications created over REST without an explicit one.
    default_channel: str = "log"
    # ISO 3166 region ("IN", "US", "GB") that national phone numbers ("9999912345") of the
    # notifications API are read in. Unset: only numbers with a country code ("+91...") are.
    default_phone_region: str | None = None
    webhook_timeout_seconds: PositiveFloat = 10.0
    # Deprecated: the one secret every tenant's webhooks were signed with. Now each tenant
    # has its own (notifier.endpoints.signing); this one is only taken over, once, as the
    # default tenant's, so its receivers keep verifying (docs/security.md, migration).
    webhook_secret: str | None = None
    # Comma-separated Fernet keys that encrypt stored secrets (webhook signing secrets):
    # the first encrypts, all decrypt (key rotation). Required by `notifier api` and
    # `notifier worker`; `notifier dev` makes one. See notifier.secret_box.
    secrets_keys: str | None = dataclasses.field(default=None, repr=False)
    # An endpoint whose every attempt has failed for this long is disabled (by the
    # maintenance task, with a reason and an endpoint_events row). 0 turns the span off.
    endpoint_disable_after_days: NonNegativeFloat = 5.0
    # ... or after this many failed attempts in a row. 0: the span alone decides.
    endpoint_disable_after_failures: NonNegativeInt = 0
    webhook_user_agent: str = "notifier-webhooks/0.1"
    # Comma-separated CIDRs webhooks may reach although they are not public (loopback,
    # private, link-local...). Empty: public addresses only.
    webhook_allowed_networks: str = ""
    # Webhook requests in flight to one host (scheme, host, port) at once, across every
    # worker process; a delivery that finds them all taken waits without spending an
    # attempt (notifier.notifications.host_slots). 0: no cap.
    webhook_max_in_flight_per_host: NonNegativeInt = 8

    # Requests with a larger body are refused with 413 before they are read.
    api_max_body_bytes: PositiveInt = 1024 * 1024

    # Signs unsubscribe links (any long random string). Unset: emails carry no such links.
    unsubscribe_secret: str | None = None
    # Where recipients reach this API from outside, for absolute links ("https://n.example.com").
    public_base_url: str | None = None
    # Sends per second per tenant on each channel, across all workers; unset is unlimited.
    # Per-tenant overrides live in notifier.rate_limits (PUT /api/v1/rate-limits/{channel}).
    rate_limit_email_per_second: NonNegativeFloat | None = None
    rate_limit_sms_per_second: NonNegativeFloat | None = None
    rate_limit_webhook_per_second: NonNegativeFloat | None = None
    # How many sends may go out back to back before the rate applies (1: evenly spaced).
    rate_limit_burst: Burst = 1

    # Operations. Tracing is configured by the standard OTEL_* variables, not here.
    # "json" (one object per line) or "text"; unset: text for `notifier dev` and the admin
    # commands, json for `notifier api` and `notifier worker`.
    log_format: str | None = None
    log_level: str = "INFO"
    # uvicorn's access lines of /health, /health/* and /metrics: probes and scrapes every few
    # seconds would outnumber every other line.
    access_log_probes: bool = False
    # Workers serve their own counters on this port at /metrics; 0 turns it off.
    worker_metrics_port: Port = 0
    worker_metrics_host: str = "127.0.0.1"
    # Gauges read from PostgreSQL (queues, workers, notifications) are reused this long.
    metrics_cache_seconds: NonNegativeFloat = 5.0
    # A job still waiting this long after it was due counts as overdue in /health/ready.
    overdue_job_seconds: PositiveFloat = 60.0

    # API keys are read from the database at most this often per key and API process: a
    # revoked key keeps working for up to this long.
    api_key_cache_seconds: NonNegativeFloat = 5.0
    # Per key and per API process (see docs/security.md); a key's own limit overrides them.
    api_rate_limit_per_second: RequestRate = 100.0
    api_rate_limit_burst: Burst = 200
    # The dashboard (/ui): a session ends after this long without a request, and this long
    # after its sign-in whatever happens.
    ui_session_idle_minutes: PositiveInt = 30
    ui_session_max_hours: PositiveInt = 12
    # Behind a proxy that terminates TLS: believe its X-Forwarded-Proto header about whether
    # the browser used https (the dashboard's cookies are then Secure). Only where every
    # request comes through that proxy, which must set the header itself.
    ui_trust_forwarded_proto: bool = False
    # An event whose rules would make more notifications than this makes none, and says so.
    max_notifications_per_event: PositiveInt = 100

    # Tenants' templates compile and render in child processes (notifier.templates.pool):
    # at most this many per API or worker process, started when first needed.
    template_renderers: PositiveInt = 2
    # CPU time one render may take; compiling a part may take ten times as much. Longer
    # is a template error (422, or a failed notification); the child is killed if need be.
    template_render_timeout_ms: PositiveInt = 100
    # Address space each renderer process may use (Python itself takes about 40 MB).
    template_memory_mb: Annotated[int, Meta(ge=64)] = 256

    # Email over SMTP. The channel exists only when smtp_host is set.
    smtp_host: str | None = None
    smtp_port: Port = 587
    # "starttls" (upgrade a plain connection, usually port 587), "tls" (implicit TLS,
    # usually 465) or "none" (plain text: local relays and tests only).
    smtp_tls: str = "starttls"
    smtp_username: str | None = None
    # Secrets stay out of the repr, so a logged Settings never shows them.
    smtp_password: str | None = dataclasses.field(default=None, repr=False)
    # A PEM bundle of CAs to trust instead of the system's (a relay with a private CA).
    smtp_ca_file: str | None = None
    smtp_timeout_seconds: PositiveFloat = 10.0
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
    sms_timeout_seconds: PositiveFloat = 10.0
    # Longer texts are cut to this many segments (with "...") or, if sms_truncate is
    # false, fail permanently.
    sms_max_segments: PositiveInt = 3
    sms_truncate: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default: the process environment).

        A ``NOTIFIER_*`` variable that is no setting (a misspelt one would otherwise be
        ignored without a word) and a value out of its setting's range are refused with a
        :class:`SettingsError` naming the variable.
        """
        env = os.environ if environ is None else environ
        names = {ENV_PREFIX + field.name.upper(): field.name for field in fields(cls)}
        unknown = sorted(
            name
            for name in env
            if name.startswith(ENV_PREFIX)
            and name not in names
            and name not in NOT_SETTINGS
            and not name.startswith(NOT_SETTINGS_PREFIXES)
        )
        if unknown:
            raise SettingsError("; ".join(_unknown_message(name, names) for name in unknown))
        hints = _field_types()
        values: dict[str, Any] = {}
        for variable, name in names.items():
            raw = env.get(variable)
            if raw is None or raw == "":
                continue
            values[name] = _convert(name, raw, hints[name])
        return cls(**values)

    def __post_init__(self) -> None:
        # Fail when the settings are read, not when the first request or webhook needs them.
        hints = _field_types()
        for field in fields(self):
            _convert(field.name, getattr(self, field.name), hints[field.name])
        if self.database_pool_min_size > self.database_pool_max_size:
            raise SettingsError(
                f"{ENV_PREFIX}DATABASE_POOL_MIN_SIZE ({self.database_pool_min_size}) must not "
                f"exceed {ENV_PREFIX}DATABASE_POOL_MAX_SIZE ({self.database_pool_max_size})"
            )
        for channel in ("email", "sms", "webhook"):
            per_second = getattr(self, f"rate_limit_{channel}_per_second")
            # Unset or 0 means unlimited; any other rate lies within every limit's bounds.
            if per_second and (problem := check_limit(per_second, self.rate_limit_burst)):
                raise SettingsError(
                    f"{ENV_PREFIX}RATE_LIMIT_{channel.upper()}_PER_SECOND, "
                    f"{ENV_PREFIX}RATE_LIMIT_BURST: {problem}"
                )
        if self.webhook_secret and not _is_signing_secret(self.webhook_secret):
            raise SettingsError(
                f"{ENV_PREFIX}WEBHOOK_SECRET: not a Standard Webhooks secret (whsec_ and base64)"
            )
        if self.default_phone_region is not None and (
            problem := phone_region_problem(self.default_phone_region)
        ):
            raise SettingsError(f"{ENV_PREFIX}DEFAULT_PHONE_REGION: {problem}")
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


def _is_signing_secret(secret: str) -> bool:
    """Whether ``secret`` is ``whsec_`` (optional) and base64 of at least one byte."""
    encoded = secret.removeprefix("whsec_")
    try:
        return bool(base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True))
    except ValueError:
        return False


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


@functools.cache
def _field_types() -> dict[str, Any]:
    """Each setting's annotation, constraints (``Annotated[..., Meta(...)]``) included."""
    return get_type_hints(Settings, include_extras=True)


# Spellings of a boolean that msgspec does not read itself ("true", "false", "1", "0").
_BOOLEAN_WORDS = {"yes": "true", "on": "true", "no": "false", "off": "false"}


def _convert(name: str, value: Any, annotation: Any) -> Any:
    """``value`` (a variable's text, or a typed value) as ``annotation``, constraints checked.

    Raises :class:`SettingsError` naming the variable; a secret's value is never shown.
    """
    if isinstance(value, str) and _is_bool(annotation):
        value = _BOOLEAN_WORDS.get(value.strip().lower(), value.strip())
    try:
        return msgspec.convert(value, annotation, strict=False)
    except msgspec.ValidationError as exc:
        shown = MASK if _is_secret(name) else value
        reason = str(exc)
        reason = reason[:1].lower() + reason[1:]
        raise SettingsError(f"{ENV_PREFIX}{name.upper()}={shown!r}: {reason}") from None


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or annotation == bool | None


def _unknown_message(variable: str, names: Mapping[str, str]) -> str:
    """Why ``variable`` is refused, with the setting it most likely meant."""
    message = f"{variable} is not a notifier setting"
    close = difflib.get_close_matches(variable, list(names), n=1, cutoff=0.8)
    if close:
        return f"{message}; did you mean {close[0]}?"
    return f"{message} (the README's Configuration table lists them all)"
