"""Events to inboxes and phones: rules, templates, a real worker, a real SMTP server (aiosmtpd)
and a fake SMS provider over HTTP, all on loopback."""

from __future__ import annotations

import datetime
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from notifier.preferences.links import verify_token
from notifier.settings import Settings
from tests.support import (
    FakeSmsProvider,
    SmtpServer,
    eventually,
    wait_for_status,
    wait_until_jobs_ran,
)

UTC = datetime.UTC
TWILIO_SID = "AC" + "a1b2c3d4" * 4
SENDER_NUMBER = "+15005550006"
UNSUBSCRIBE_SECRET = "test-only-unsubscribe-secret-" + "x" * 32

EXPIRY_TEMPLATE = {
    "subject": "{{ user.name }}, your password expires on {{ target_date | date }}",
    "text_body": (
        "Hi {{ user.name }},\n\n"
        "your password expires on {{ target_date | date }} ({{ lead_time_days }} days' notice).\n"
    ),
    "html_body": (
        "<p>Hi {{ user.name }},</p>\n"
        "<p>your password expires on <strong>{{ target_date | date }}</strong>.</p>\n"
    ),
}


@pytest.fixture
def settings(
    settings: Settings, smtp_server: SmtpServer, sms_provider: FakeSmsProvider
) -> Settings:
    """The test settings with email to the loopback SMTP server and SMS to the fake provider."""
    return settings.replace(
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        smtp_tls="none",
        email_from="Example Accounts <accounts@notifier.example>",
        email_reply_to="help@notifier.example",
        sms_provider="twilio",
        sms_api_url=sms_provider.url,
        sms_account_sid=TWILIO_SID,
        sms_auth_token="fake-provider-token",
        sms_from=SENDER_NUMBER,
        unsubscribe_secret=UNSUBSCRIBE_SECRET,
        public_base_url="https://notifier.example",
    )


def long_date(moment: datetime.datetime) -> str:
    return f"{moment.day} {moment:%B %Y}"


async def post(client: AsyncTestClient[Any], path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(path, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def notifications_of(client: AsyncTestClient[Any], event_id: str) -> list[dict[str, Any]]:
    """The event's notifications once it is processed, each with its delivery attempts."""

    async def processed() -> list[dict[str, Any]] | None:
        event = (await client.get(f"/api/v1/events/{event_id}")).json()
        return event["notifications"] if event.get("processed_at") else None

    notifications: list[dict[str, Any]] = await eventually(processed, timeout=20)
    return notifications


async def test_password_expiring_event_becomes_an_email_and_an_sms(
    client: AsyncTestClient[Any],
    worker: None,
    smtp_server: SmtpServer,
    sms_provider: FakeSmsProvider,
) -> None:
    response = await client.put("/api/v1/templates/password-expiry", json=EXPIRY_TEMPLATE)
    assert response.status_code == 201, response.text
    await post(
        client,
        "/api/v1/rules/",
        {
            "event_type": "password.*",
            "channel": "email",
            "recipient_field": "user.email",
            "date_field": "expires_at",
            "lead_times": ["P7D"],
            "template": "password-expiry",
        },
    )
    await post(  # no template: the built-in one for password.expiring
        client,
        "/api/v1/rules/",
        {
            "event_type": "password.expiring",
            "channel": "sms",
            "recipient_field": "user.phone",
            "date_field": "expires_at",
            "lead_times": ["P7D"],
        },
    )
    # Both the mail server and the provider fail transiently first.
    smtp_server.data_replies.append("451 4.7.1 Greylisted, please try again")
    sms_provider.script(
        503, {"code": 20503, "message": "Service unavailable"}, **{"Retry-After": "1"}
    )
    # Expiry three days out: the seven-day reminder is overdue and, the last of its
    # series, goes out now.
    expires_at = (datetime.datetime.now(UTC) + datetime.timedelta(days=3)).replace(microsecond=0)
    event = await post(
        client,
        "/api/v1/events/",
        {
            "type": "password.expiring",
            "payload": {
                "user": {
                    "name": "Ada Lovelace",
                    "email": "ada@example.com",
                    "phone": "+447700900123",
                },
                "expires_at": expires_at.isoformat(),
            },
        },
    )

    by_channel = {n["channel"]: n for n in await notifications_of(client, event["id"])}
    email = await wait_for_status(client, by_channel["email"]["id"], "sent")
    sms = await wait_for_status(client, by_channel["sms"]["id"], "sent")

    # The email, read back from the SMTP server.
    (mail,) = smtp_server.received()
    day = long_date(expires_at)
    assert mail["To"] == "ada@example.com"
    assert mail["From"] == "Example Accounts <accounts@notifier.example>"
    assert mail["Reply-To"] == "help@notifier.example"
    assert mail["Subject"] == f"Ada Lovelace, your password expires on {day}"
    assert mail.get_content_type() == "multipart/alternative"
    text = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    assert f"Hi Ada Lovelace,\r\n\r\nyour password expires on {day} (7 days' notice)." in (
        text.get_content()
    )
    assert f"<strong>{day}</strong>" in html.get_content()
    # The refused first attempt and the resend are the same message to the mail system.
    (refused,) = smtp_server.refused
    message_id = f"<msg_{email['id'].replace('-', '')}@notifier.example>"
    assert refused["Message-ID"] == mail["Message-ID"] == message_id
    assert mail["X-Notifier-Notification-Id"] == email["id"]
    assert [(a["outcome"], a["status_code"]) for a in email["delivery_attempts"]] == [
        ("retry", 451),
        ("delivered", 250),
    ]
    assert "Greylisted" in email["delivery_attempts"][0]["error"]

    # The SMS, as the provider received it.
    assert len(sms_provider.received()) == 2
    first, second = sms_provider.form(0), sms_provider.form(1)
    assert first == second
    assert second["To"] == "+447700900123"
    assert second["From"] == SENDER_NUMBER
    assert second["Body"].startswith("Hi Ada Lovelace,")
    assert f"Your password expires on {day}." in second["Body"]
    assert [(a["outcome"], a["status_code"]) for a in sms["delivery_attempts"]] == [
        ("retry", 503),
        ("delivered", 201),
    ]


async def test_a_template_error_fails_the_notification_at_once_with_the_error_shown(
    client: AsyncTestClient[Any],
    db: psycopg.AsyncConnection[Any],
    worker: None,
    smtp_server: SmtpServer,
) -> None:
    broken = {"subject": "Hello", "text_body": "Hi {{ user.name }},\n{{ user.middle_name }}\n"}
    assert (await client.put("/api/v1/templates/broken", json=broken)).status_code == 201
    await post(
        client,
        "/api/v1/rules/",
        {
            "event_type": "password.expiring",
            "channel": "email",
            "recipient_field": "user.email",
            "template": "broken",
        },
    )
    event = await post(
        client,
        "/api/v1/events/",
        {
            "type": "password.expiring",
            "payload": {"user": {"name": "Ada", "email": "a@example.com"}},
        },
    )

    (notification,) = await notifications_of(client, event["id"])
    failed = await wait_for_status(client, notification["id"], "failed")

    expected = "template 'broken': text_body line 2: 'dict object' has no attribute 'middle_name'"
    assert failed["last_error"] == expected
    assert [(a["outcome"], a["error"]) for a in failed["delivery_attempts"]] == [
        ("failed", expected)
    ]
    await wait_until_jobs_ran(db)  # a retry would be a job still to do: nothing else happens
    again = (await client.get(f"/api/v1/notifications/{notification['id']}")).json()
    assert again["attempts"] == 1
    assert again["status"] == "failed"
    assert smtp_server.received() == []
    assert smtp_server.refused == []


async def test_only_email_renders_the_html_part(
    client: AsyncTestClient[Any],
    worker: None,
    smtp_server: SmtpServer,
    sms_provider: FakeSmsProvider,
) -> None:
    # An HTML part that cannot render fails the email, which carries it, and not the SMS,
    # which never did: other channels render without it.
    template = {
        "subject": "Hello",
        "text_body": "Hi {{ user.name }}\n",
        "html_body": "<p>{{ user.middle_name }}</p>",
    }
    assert (await client.put("/api/v1/templates/text-only", json=template)).status_code == 201
    for channel, field in (("email", "user.email"), ("sms", "user.phone")):
        rule = {
            "event_type": "password.expiring",
            "channel": channel,
            "recipient_field": field,
            "template": "text-only",
        }
        await post(client, "/api/v1/rules/", rule)
    payload = {"user": {"name": "Ada", "email": "a@example.com", "phone": "+447700900123"}}
    event = await post(client, "/api/v1/events/", {"type": "password.expiring", "payload": payload})

    by_channel = {n["channel"]: n for n in await notifications_of(client, event["id"])}
    sms = await wait_for_status(client, by_channel["sms"]["id"], "sent")
    email = await wait_for_status(client, by_channel["email"]["id"], "failed")

    assert sms["attempts"] == 1
    assert sms_provider.form(0)["Body"] == "Hi Ada"
    assert email["last_error"].startswith("template 'text-only': html_body")
    assert smtp_server.received() == []


async def test_a_notification_created_over_rest_renders_the_builtin_for_its_type(
    client: AsyncTestClient[Any], worker: None, smtp_server: SmtpServer
) -> None:
    target = (datetime.datetime.now(UTC) + datetime.timedelta(seconds=1)).replace(microsecond=0)
    notification = await post(
        client,
        "/api/v1/notifications/",
        {
            "notification_type": "subscription.renewal",
            "entity_id": "sub-9",
            "target_date": target.isoformat(),
            "lead_time_days": 0,
            "email": "grace@example.com",
            "channel": "email",
            "data": {"name": "Grace <3", "plan": "Pro plan"},
        },
    )

    await wait_for_status(client, notification["id"], "sent")

    (mail,) = smtp_server.received()
    assert mail["Subject"] == f"Your Pro plan renews on {long_date(target)}"
    html = mail.get_body(preferencelist=("html",))
    assert html is not None
    assert "Hi Grace &lt;3," in html.get_content()


async def test_the_email_and_its_template_carry_the_same_unsubscribe_link(
    client: AsyncTestClient[Any], worker: None, smtp_server: SmtpServer
) -> None:
    template = {"subject": "News", "text_body": "Opt out: {{ unsubscribe_url }}\n"}
    # A REST notification renders with the template named after its type.
    assert (await client.put("/api/v1/templates/newsletter", json=template)).status_code == 201
    target = (datetime.datetime.now(UTC) + datetime.timedelta(seconds=1)).replace(microsecond=0)
    notification = await post(
        client,
        "/api/v1/notifications/",
        {
            "notification_type": "newsletter",
            "entity_id": "issue-1",
            "target_date": target.isoformat(),
            "lead_time_days": 0,
            "email": "grace@example.com",
            "channel": "email",
        },
    )

    await wait_for_status(client, notification["id"], "sent")

    (mail,) = smtp_server.received()
    header = mail["List-Unsubscribe"]
    assert header.startswith("<https://notifier.example/unsubscribe/")
    link = header.strip("<>")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = mail.get_body(preferencelist=("plain",))
    assert text is not None
    assert f"Opt out: {link}" in text.get_content()
    scope = verify_token(UNSUBSCRIBE_SECRET, link.rsplit("/", 1)[1])
    assert (scope.recipient, scope.channel, scope.notification_type) == (
        "grace@example.com",
        "email",
        "newsletter",
    )


async def test_a_rest_notification_for_sms_goes_to_its_phone(
    client: AsyncTestClient[Any], worker: None, sms_provider: FakeSmsProvider
) -> None:
    target = (datetime.datetime.now(UTC) + datetime.timedelta(seconds=1)).replace(microsecond=0)
    notification = await post(
        client,
        "/api/v1/notifications/",
        {
            "notification_type": "payment.failed",
            "entity_id": "inv-3",
            "target_date": target.isoformat(),
            "lead_time_days": 0,
            "email": "grace@example.com",
            "phone": "+14155550123",
            "channel": "sms",
            "data": {"name": "Grace", "amount": "12.00", "currency": "EUR"},
        },
    )

    assert notification["recipient"] == "+14155550123"
    await wait_for_status(client, notification["id"], "sent")
    body = sms_provider.form(0)["Body"]
    assert body.startswith("Hi Grace,\n\nYour payment of 12.00 EUR failed.")
