"""The email channel against a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import asyncio
import datetime
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from notifier.channels.base import DeliveryError, OutgoingMessage
from notifier.channels.email import MAX_CONNECTIONS, EmailChannel, create_email_channel
from notifier.settings import Settings, SettingsError
from tests.conftest import SMTP_TEST_LOGIN
from tests.support import SmtpServer

NOTIFICATION_ID = uuid.UUID("5a1c3e2b-0d4f-4a6b-9c8d-7e6f5a4b3c2d")


@pytest.fixture(autouse=True)
async def let_connections_close() -> AsyncIterator[None]:
    """aiosmtplib closes a failed connection in a loop callback: let it run before the
    test's event loop closes, or the socket is reported unclosed in some later test."""
    yield
    await asyncio.sleep(0.05)


def message(attempt: int = 1, html: str | None = "<p>Hi <b>Ada</b></p>") -> OutgoingMessage:
    return OutgoingMessage(
        notification_id=NOTIFICATION_ID,
        notification_type="password.expiring",
        recipient="ada@example.com",
        attempt=attempt,
        target_date=datetime.datetime(2026, 12, 24, tzinfo=datetime.UTC),
        subject="Your password expires on 24 December 2026",
        text="Hi Ada,\nyour password expires on 24 December 2026.\n",
        html=html,
    )


def channel_for(server: SmtpServer, **changes: object) -> EmailChannel:
    options: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "tls": "none",
        "username": None,
        "password": None,
        "timeout_seconds": 5.0,
        "sender": "Notifier <notify@mail.example.org>",
        "reply_to": "support@example.org",
    } | changes
    return EmailChannel(**options)  # type: ignore[arg-type]


async def test_sends_a_multipart_text_and_html_message(smtp_server: SmtpServer) -> None:
    receipt = await channel_for(smtp_server).send(message())

    assert receipt.status_code == 250
    (mail,) = smtp_server.received()
    assert smtp_server.envelopes == [("notify@mail.example.org", ["ada@example.com"])]
    assert mail["From"] == "Notifier <notify@mail.example.org>"
    assert mail["To"] == "ada@example.com"
    assert mail["Reply-To"] == "support@example.org"
    assert mail["Subject"] == "Your password expires on 24 December 2026"
    assert mail["Message-ID"] == f"<msg_{NOTIFICATION_ID.hex}@mail.example.org>"
    assert mail["X-Notifier-Notification-Id"] == str(NOTIFICATION_ID)
    assert mail["Date"]
    assert mail.get_content_type() == "multipart/alternative"
    text = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    # SMTP carries CRLF line ends.
    assert text.get_content() == "Hi Ada,\r\nyour password expires on 24 December 2026.\r\n"
    assert html.get_content().strip() == "<p>Hi <b>Ada</b></p>"


async def test_a_message_without_html_is_plain_text(smtp_server: SmtpServer) -> None:
    await channel_for(smtp_server, reply_to=None).send(message(html=None))

    (mail,) = smtp_server.received()
    assert mail.get_content_type() == "text/plain"
    assert "Reply-To" not in mail


async def test_an_unsubscribe_link_becomes_one_click_list_unsubscribe_headers(
    smtp_server: SmtpServer,
) -> None:
    link = "https://notifier.example.com/unsubscribe/token"
    await channel_for(smtp_server).send(msgspec.structs.replace(message(), unsubscribe_url=link))
    await channel_for(smtp_server).send(message())

    linked, plain = smtp_server.received()
    assert linked["List-Unsubscribe"] == f"<{link}>"
    assert linked["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "List-Unsubscribe" not in plain


async def test_message_id_is_the_same_on_every_attempt(smtp_server: SmtpServer) -> None:
    channel = channel_for(smtp_server)

    await channel.send(message(attempt=1))
    await channel.send(message(attempt=2))

    first, second = smtp_server.received()
    assert first["Message-ID"] == second["Message-ID"]


@pytest.mark.parametrize(
    ("stage", "reply", "retryable"),
    [
        ("data", "451 4.3.0 Mailbox busy, try again later", True),
        ("data", "452 4.3.1 Insufficient system storage", True),
        ("data", "550 5.7.1 Message rejected as spam", False),
        ("data", "554 5.6.0 Message content rejected", False),
        ("rcpt", "450 4.2.1 Mailbox temporarily unavailable", True),
        ("rcpt", "550 5.1.1 No such user", False),
    ],
)
async def test_reply_codes_decide_between_retry_and_permanent_failure(
    smtp_server: SmtpServer, stage: str, reply: str, retryable: bool
) -> None:
    (smtp_server.data_replies if stage == "data" else smtp_server.rcpt_replies).append(reply)

    with pytest.raises(DeliveryError) as failure:
        await channel_for(smtp_server).send(message())

    assert failure.value.retryable is retryable
    assert failure.value.status_code == int(reply[:3])
    assert reply[4:] in str(failure.value)
    assert smtp_server.received() == []


async def test_an_unreachable_server_is_retried() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    server = SmtpServer(port=port)  # nothing listens there

    with pytest.raises(DeliveryError) as failure:
        await channel_for(server).send(message())

    assert failure.value.retryable
    assert "connection failed" in str(failure.value)


async def test_starttls_and_login_with_a_private_ca(
    tls_smtp_server: tuple[SmtpServer, Path],
) -> None:
    server, ca_file = tls_smtp_server
    username, password = SMTP_TEST_LOGIN
    channel = channel_for(
        server, tls="starttls", username=username, password=password, ca_file=str(ca_file)
    )

    await channel.send(message())

    assert server.logins == [SMTP_TEST_LOGIN]
    (mail,) = server.received()
    assert mail["Message-ID"] == f"<msg_{NOTIFICATION_ID.hex}@mail.example.org>"


async def test_implicit_tls(implicit_tls_smtp_server: tuple[SmtpServer, Path]) -> None:
    server, ca_file = implicit_tls_smtp_server

    await channel_for(server, tls="tls", ca_file=str(ca_file)).send(message())

    assert len(server.received()) == 1


async def test_starttls_mode_refuses_a_server_without_starttls(smtp_server: SmtpServer) -> None:
    with pytest.raises(DeliveryError) as failure:
        await channel_for(smtp_server, tls="starttls").send(message())

    assert "STARTTLS" in str(failure.value)
    assert smtp_server.received() == []  # nothing went out in clear text


async def test_a_refused_login_fails_permanently_without_echoing_the_password(
    tls_smtp_server: tuple[SmtpServer, Path],
) -> None:
    server, ca_file = tls_smtp_server
    channel = channel_for(
        server, tls="starttls", username="notifier", password="wrong-secret", ca_file=str(ca_file)
    )

    with pytest.raises(DeliveryError) as failure:
        await channel.send(message())

    assert not failure.value.retryable
    assert failure.value.status_code == 535
    assert "wrong-secret" not in str(failure.value)
    assert server.received() == []


async def test_an_untrusted_certificate_is_a_retryable_connection_failure(
    tls_smtp_server: tuple[SmtpServer, Path],
) -> None:
    server, _ = tls_smtp_server
    username, password = SMTP_TEST_LOGIN
    channel = channel_for(server, tls="starttls", username=username, password=password)

    with pytest.raises(DeliveryError) as failure:
        await channel.send(message())

    assert failure.value.retryable
    assert server.logins == []  # the password never left over an unverified connection


def test_recipients_must_be_plain_addresses() -> None:
    channel = channel_for(SmtpServer())

    assert channel.validate_recipient("ada@example.com") is None
    assert channel.validate_recipient("ada.lovelace+billing@mail.example.co.uk") is None
    for bad in [
        "ada",
        "ada@",
        "@example.com",
        "Ada <ada@example.com>",
        "a@b@c",
        "ada@ex ample.com",
        "ada@example.com\r\nBcc: eve@example.com",
        "x" * 250 + "@example.com",
    ]:
        assert channel.validate_recipient(bad) is not None, bad


def test_settings_build_the_channel_only_when_a_host_is_set() -> None:
    assert create_email_channel(Settings()) is None
    channel = create_email_channel(Settings(smtp_host="smtp.example.org"))
    assert channel is not None
    assert channel.name == "email"


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"smtp_tls": "ssl"}, "NOTIFIER_SMTP_TLS"),
        ({"email_from": "not an address"}, "NOTIFIER_EMAIL_FROM"),
        ({"smtp_username": "notifier"}, "NOTIFIER_SMTP_PASSWORD"),
    ],
)
def test_unusable_settings_are_refused_at_startup(changes: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        create_email_channel(Settings(smtp_host="smtp.example.org").replace(**changes))


async def test_concurrent_sends_hold_at_most_max_connections() -> None:
    """A batch sends its emails at once; the relay sees at most MAX_CONNECTIONS of them."""
    open_now, most = 0, 0

    async def slow_relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            writer.write(b"220 relay ESMTP\r\n")
            while line := await reader.readline():
                command = line[:4].upper()
                if command in {b"EHLO", b"HELO"}:
                    writer.write(b"250 relay\r\n")
                elif command == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    while await reader.readline() != b".\r\n":
                        pass
                    await asyncio.sleep(0.1)  # the relay takes its time with each message
                    writer.write(b"250 queued\r\n")
                elif command == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 OK\r\n")
                await writer.drain()
        finally:
            open_now -= 1
            writer.close()

    server = await asyncio.start_server(slow_relay, "127.0.0.1", 0)
    relay = SmtpServer(port=server.sockets[0].getsockname()[1])
    channel = channel_for(relay)
    try:
        receipts = await asyncio.gather(
            *(channel.send(message()) for _ in range(MAX_CONNECTIONS + 5))
        )
    finally:
        server.close()
        await server.wait_closed()

    assert [receipt.status_code for receipt in receipts] == [250] * (MAX_CONNECTIONS + 5)
    assert most == MAX_CONNECTIONS
