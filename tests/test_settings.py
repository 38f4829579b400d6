"""Settings come from NOTIFIER_* variables, typed, with a usable local default."""

from __future__ import annotations

import pytest

from notifier.settings import DEFAULT_DATABASE_URL, Settings, SettingsError


def test_defaults_point_at_the_local_database() -> None:
    settings = Settings.from_env({})

    assert (
        settings.database_url
        == DEFAULT_DATABASE_URL
        == "postgresql://postgres@127.0.0.1:5432/notifier"
    )
    assert settings.webhook_secret is None


def test_values_are_read_from_prefixed_variables_and_typed() -> None:
    settings = Settings.from_env(
        {
            "NOTIFIER_DATABASE_URL": "postgresql://app@db/notifier",
            "NOTIFIER_WORKER_CONCURRENCY": "25",
            "NOTIFIER_WORKER_POLL_INTERVAL_SECONDS": "0.25",
            "NOTIFIER_WORKER_LISTEN_NOTIFY": "off",
            "NOTIFIER_WEBHOOK_SECRET": "whsec_c2VjcmV0",
            "DATABASE_URL": "postgresql://ignored",
        }
    )

    assert settings.database_url == "postgresql://app@db/notifier"
    assert settings.worker_concurrency == 25
    assert settings.worker_poll_interval_seconds == 0.25
    assert settings.worker_listen_notify is False
    assert settings.webhook_secret == "whsec_c2VjcmV0"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NOTIFIER_WORKER_CONCURRENCY", "ten"),
        ("NOTIFIER_WORKER_POLL_INTERVAL_SECONDS", "fast"),
        ("NOTIFIER_WORKER_LISTEN_NOTIFY", "maybe"),
        ("NOTIFIER_API_RATE_LIMIT_PER_SECOND", "0"),
        ("NOTIFIER_API_RATE_LIMIT_BURST", "0"),
        ("NOTIFIER_WEBHOOK_MAX_IN_FLIGHT_PER_HOST", "-1"),
        ("NOTIFIER_WEBHOOK_MAX_IN_FLIGHT_PER_HOST", "four"),
    ],
)
def test_a_malformed_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_replace_returns_a_changed_copy() -> None:
    settings = Settings.from_env({})

    changed = settings.replace(api_port=9000)

    assert changed.api_port == 9000
    assert settings.api_port == 8000


def test_repr_never_shows_secrets() -> None:
    settings = Settings.from_env(
        {
            "NOTIFIER_DATABASE_URL": "postgresql://app:db-pass-123@db/notifier",
            "NOTIFIER_WEBHOOK_SECRET": "whsec_c2VjcmV0LXZhbHVl",
        }
    )

    shown = repr(settings)

    assert "db-pass-123" not in shown
    assert "c2VjcmV0LXZhbHVl" not in shown
    assert "webhook_secret='***'" in shown
    assert "host=db" in shown, "the rest of the URL stays readable"
    assert str(settings) == shown


def test_secrets_are_read_but_left_out_of_the_repr() -> None:
    settings = Settings.from_env(
        {"NOTIFIER_SMTP_PASSWORD": "smtp-secret", "NOTIFIER_SMS_AUTH_TOKEN": "sms-secret"}
    )

    assert settings.smtp_password == "smtp-secret"
    assert settings.sms_auth_token == "sms-secret"
    assert "smtp-secret" not in repr(settings)
    assert "sms-secret" not in repr(settings)
