"""Settings come from NOTIFIER_* variables, typed, with a usable local default."""

from __future__ import annotations

import pytest

from notifier.cli import main
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
        ("NOTIFIER_API_RATE_LIMIT_PER_SECOND", "1e-300"),
        ("NOTIFIER_API_RATE_LIMIT_BURST", "1000001"),
        ("NOTIFIER_RATE_LIMIT_WEBHOOK_PER_SECOND", "1e-12"),
        ("NOTIFIER_RATE_LIMIT_EMAIL_PER_SECOND", "2000000"),
        ("NOTIFIER_WEBHOOK_MAX_IN_FLIGHT_PER_HOST", "-1"),
        ("NOTIFIER_WEBHOOK_MAX_IN_FLIGHT_PER_HOST", "four"),
    ],
)
def test_a_malformed_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_default_send_rates_are_bounded_with_their_burst() -> None:
    with pytest.raises(SettingsError, match="NOTIFIER_RATE_LIMIT_SMS_PER_SECOND"):
        Settings.from_env({"NOTIFIER_RATE_LIMIT_SMS_PER_SECOND": "0.0009"})
    with pytest.raises(SettingsError, match="NOTIFIER_RATE_LIMIT_BURST"):
        Settings.from_env({"NOTIFIER_RATE_LIMIT_BURST": "1000001"})
    # Unset or 0: unlimited, as before; the slowest rate allowed is one send in 1,000 s.
    assert Settings.from_env({"NOTIFIER_RATE_LIMIT_SMS_PER_SECOND": "0"})
    assert Settings.from_env({"NOTIFIER_RATE_LIMIT_SMS_PER_SECOND": "0.001"})


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


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("NOTIFIER_WORKER_CONCURRENCY", "-3", ">= 1"),
        ("NOTIFIER_DATABASE_POOL_MAX_SIZE", "0", ">= 1"),
        ("NOTIFIER_DATABASE_POOL_MIN_SIZE", "-1", ">= 0"),
        ("NOTIFIER_DATABASE_TIMEOUT_SECONDS", "0", "> 0"),
        ("NOTIFIER_WORKER_POLL_INTERVAL_SECONDS", "-0.5", "> 0"),
        ("NOTIFIER_API_PORT", "70000", "<= 65535"),
        ("NOTIFIER_DELIVERY_BATCH_SIZE", "0", ">= 1"),
        ("NOTIFIER_EVENT_BATCH_SIZE", "0", ">= 1"),
        ("NOTIFIER_RATE_LIMIT_SMS_PER_SECOND", "-1", ">= 0"),
        ("NOTIFIER_DATABASE_PREPARED_STATEMENTS", "sometimes", "bool"),
    ],
)
def test_a_value_out_of_range_is_refused_naming_the_variable(
    name: str, value: str, reason: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({name: value})

    assert str(refused.value).startswith(f"{name}={value!r}: ")
    assert reason in str(refused.value)


def test_the_pool_cannot_keep_more_connections_than_it_may_open() -> None:
    with pytest.raises(SettingsError, match="NOTIFIER_DATABASE_POOL_MIN_SIZE"):
        Settings.from_env(
            {"NOTIFIER_DATABASE_POOL_MIN_SIZE": "5", "NOTIFIER_DATABASE_POOL_MAX_SIZE": "4"}
        )


def test_constraints_hold_however_settings_are_made() -> None:
    with pytest.raises(SettingsError, match="NOTIFIER_WORKER_CONCURRENCY"):
        Settings(worker_concurrency=0)
    with pytest.raises(SettingsError, match="NOTIFIER_API_PORT"):
        Settings().replace(api_port=-1)


def test_a_misspelt_variable_is_refused_with_the_setting_it_resembles() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(
            {"NOTIFIER_WORKER_LISTEN_NOTIFIY": "false", "NOTIFIER_DATABASE_PREPARED": "no"}
        )

    message = str(refused.value)
    assert (
        "NOTIFIER_WORKER_LISTEN_NOTIFIY is not a notifier setting; "
        "did you mean NOTIFIER_WORKER_LISTEN_NOTIFY?"
    ) in message
    assert "NOTIFIER_DATABASE_PREPARED is not a notifier setting" in message


def test_variables_of_the_tools_around_notifier_are_not_settings_and_not_refused() -> None:
    settings = Settings.from_env(
        {
            "NOTIFIER_KEY": "ntf_abc_def",  # what `notifier dev` prints for clients to export
            "NOTIFIER_TEST_PG_PORT": "5433",
            "NOTIFIER_FUZZ_EXAMPLES": "300",
            "NOTIFIER_FAULTS_FULL": "1",
            "NOTIFIER_SOAK_SECONDS": "600",
            "NOTIFIER_BENCH_SERVER": "postgresql://x",
        }
    )

    assert settings == Settings()


def test_boolean_spellings() -> None:
    for text, value in [("on", True), ("YES", True), ("1", True), ("Off", False), ("0", False)]:
        assert Settings.from_env({"NOTIFIER_SMS_TRUNCATE": text}).sms_truncate is value


def test_the_command_refuses_a_bad_setting_in_one_line_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NOTIFIER_WORKER_CONCURRENCY", "-3")

    assert main(["worker"]) == 2

    err = capsys.readouterr().err
    assert err == "notifier: NOTIFIER_WORKER_CONCURRENCY='-3': expected `int` >= 1\n"
