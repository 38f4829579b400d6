"""Webhooks reach public addresses only, unless NOTIFIER_WEBHOOK_ALLOWED_NETWORKS says so.

Nothing here sends traffic anywhere but loopback: "a public address is allowed" is shown on
the vetting function, never with a real connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient

from notifier.app import create_app
from notifier.channels.base import DeliveryError, OutgoingMessage
from notifier.channels.egress import (
    BlockedAddressError,
    GuardedResolver,
    address_problem,
    host_problem,
    numeric_host,
)
from notifier.channels.webhook import WebhookChannel
from notifier.settings import Settings, SettingsError, parse_networks
from tests.notifications.test_delivery import running_worker, schedule
from tests.support import (
    LOOPBACK_NETWORKS,
    WebhookReceiver,
    assert_problem,
    count_rows,
    wait_for_status,
)

LOOPBACK = parse_networks(LOOPBACK_NETWORKS)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "a loopback"),
        ("127.255.0.9", "a loopback"),
        ("::1", "a loopback"),
        ("10.0.0.1", "a private"),
        ("172.16.5.4", "a private"),
        ("192.168.1.1", "a private"),
        ("fc00::1", "a private"),  # unique local (ULA)
        ("fd12:3456::1", "a private"),
        ("169.254.169.254", "a link-local"),  # cloud metadata service
        ("fe80::1", "a link-local"),
        ("0.0.0.0", "an unspecified"),
        ("::", "an unspecified"),
        ("224.0.0.1", "a multicast"),
        ("ff02::1", "a multicast"),
        ("100.64.0.1", "a non-public"),  # carrier-grade NAT
        ("240.0.0.1", "a private"),  # reserved, which Python files under private
        ("255.255.255.255", "a private"),  # broadcast
        ("198.18.0.1", "a private"),  # benchmarking
        ("2001:db8::1", "a private"),  # documentation
    ],
)
def test_internal_addresses_are_refused(address: str, kind: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) == f"{address}, {kind} address"


@pytest.mark.parametrize(
    ("address", "reaches"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1, a loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "169.254.169.254, a link-local"),
        ("64:ff9b::a00:1", "10.0.0.1, a private"),  # NAT64
        ("2002:a00:1::1", "10.0.0.1, a private"),  # 6to4
    ],
)
def test_ipv6_addresses_carrying_an_internal_ipv4_address_are_refused(
    address: str, reaches: str
) -> None:
    parsed = ipaddress.ip_address(address)
    assert address_problem(parsed) == f"{parsed}, which reaches {reaches} address"


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


def test_the_allowlist_lets_internal_networks_through() -> None:
    allowed = parse_networks("10.1.0.0/16, 127.0.0.0/8")

    assert address_problem(ipaddress.ip_address("10.1.2.3"), allowed) is None
    assert address_problem(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert address_problem(ipaddress.ip_address("::ffff:127.0.0.1"), allowed) is None
    assert address_problem(ipaddress.ip_address("10.2.0.1"), allowed) == (
        "10.2.0.1, a private address"
    )
    assert address_problem(ipaddress.ip_address("::1"), allowed) == "::1, a loopback address"


@given(st.ip_addresses())
def test_an_address_is_allowed_exactly_when_it_is_global_unicast_or_allowlisted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    problem = address_problem(address)
    if problem is None:
        assert not address.is_multicast
        target = getattr(address, "ipv4_mapped", None) or address
        assert target.is_global
    else:
        assert problem.startswith(str(address))
    assert (
        address_problem(address, [ipaddress.ip_network("::/0"), ipaddress.ip_network("0.0.0.0/0")])
        is None
    )


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("::1", "::1"),
        ("example.com", None),
        ("localhost", None),
        ("", None),
        ("a\x00b", None),
    ],
)
def test_numeric_host_reads_every_numeric_spelling_without_dns(
    host: str, address: str | None
) -> None:
    expected = ipaddress.ip_address(address) if address else None
    assert numeric_host(host) == expected


@pytest.mark.parametrize(
    "host", ["localhost", "api.localhost", "127.0.0.1", "0x7f.1", "169.254.169.254", "::1"]
)
def test_host_problem_refuses_internal_literals_and_localhost_names(host: str) -> None:
    assert host_problem(host) is not None
    assert host_problem("hooks.example.com") is None


def test_allowed_networks_setting_is_checked_when_read() -> None:
    assert Settings.from_env({"NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/8, ::1"})
    with pytest.raises(SettingsError, match=re.escape("'10.0.0.0/33' is not an IP network")):
        Settings.from_env({"NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/8,10.0.0.0/33"})


# --- the channel ------------------------------------------------------------------------


def message(recipient: str) -> OutgoingMessage:
    return OutgoingMessage(
        notification_id=uuid.uuid4(), notification_type="t", recipient=recipient, attempt=1
    )


@pytest.fixture
async def guarded() -> AsyncIterator[WebhookChannel]:
    """A channel with the default settings: no allowlist."""
    channel = WebhookChannel(secret=None, timeout_seconds=2.0, user_agent="test")
    yield channel
    await channel.aclose()


@pytest.mark.parametrize(
    ("recipient", "problem"),
    [
        ("http://127.0.0.1:8080/x", "127.0.0.1, a loopback address"),
        ("http://[::1]/x", "::1, a loopback address"),
        ("http://localhost/x", "127.0.0.1, a loopback address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254, a link-local address"),
        ("http://10.0.0.1/x", "10.0.0.1, a private address"),
        ("http://[::ffff:10.0.0.1]/x", "::ffff:a00:1, which reaches 10.0.0.1, a private address"),
        ("http://2130706433/x", "127.0.0.1, a loopback address"),
    ],
)
def test_recipients_at_internal_literals_are_invalid(
    guarded: WebhookChannel, recipient: str, problem: str
) -> None:
    assert guarded.validate_recipient(recipient) == f"must not point at {problem}"


def test_recipients_with_credentials_or_too_long_are_invalid(guarded: WebhookChannel) -> None:
    assert guarded.validate_recipient("https://user:pw@hooks.example.com/") == (
        "must not contain credentials (user:password@)"
    )
    url = "https://hooks.example.com/" + "a" * (2048 - 26)
    assert guarded.validate_recipient(url) is None
    assert guarded.validate_recipient(url + "a") == "must be at most 2048 characters"


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("localhost", "localhost resolves to 127.0.0.1, a loopback address"),
        ("127.0.0.1", "127.0.0.1 resolves to 127.0.0.1, a loopback address"),
        ("[::1]", "::1 resolves to ::1, a loopback address"),
    ],
)
async def test_sending_to_a_host_that_resolves_to_loopback_is_a_permanent_failure(
    guarded: WebhookChannel, receiver: WebhookReceiver, host: str, refused: str
) -> None:
    url = receiver.url.replace("127.0.0.1", host)

    with pytest.raises(DeliveryError) as caught:
        await guarded.send(message(url))

    assert caught.value.retryable is False
    assert str(caught.value).startswith(f"refused to connect: {refused}")
    assert receiver.received() == []  # refused before any connection


async def test_the_allowlist_lets_a_name_resolving_to_loopback_through(
    receiver: WebhookReceiver,
) -> None:
    channel = WebhookChannel(
        secret=None, timeout_seconds=2.0, user_agent="test", allowed_networks=LOOPBACK
    )
    try:
        receipt = await channel.send(message(receiver.url.replace("127.0.0.1", "localhost")))
    finally:
        await channel.aclose()

    assert receipt.status_code == 200
    (request,) = receiver.received()
    assert request.headers["host"] == f"localhost:{receiver.url.split(':')[2].split('/')[0]}"


# --- through the API and the worker -----------------------------------------------------


@pytest.mark.parametrize(
    "recipient",
    [
        "http://127.0.0.1/hooks",
        "http://[::1]/hooks",
        "http://169.254.169.254/",
        "http://localhost/",
    ],
)
async def test_api_refuses_internal_webhook_recipients_with_a_422(
    settings: Settings,
    db: psycopg.AsyncConnection[Any],
    api_headers: dict[str, str],
    recipient: str,
) -> None:
    production = settings.replace(webhook_allowed_networks="")
    async with AsyncTestClient(app=create_app(production)) as client:
        client.headers.update(api_headers)
        rule, notification = await create_rule_and_notification(client, recipient)

    assert_problem(rule, 422, "recipient")
    assert_problem(notification, 422, "recipient")
    assert "must not point at" in notification.json()["errors"][0]["message"]
    assert await count_rows(db, "notifier.notifications") == 0
    assert await count_rows(db, "notifier.routing_rules") == 0


async def test_api_accepts_allowlisted_internal_webhook_recipients(
    client: AsyncTestClient[Any], db: psycopg.AsyncConnection[Any]
) -> None:
    rule, notification = await create_rule_and_notification(client, "http://127.0.0.1/hooks")

    assert (rule.status_code, notification.status_code) == (201, 201)


async def test_worker_fails_a_webhook_to_a_target_no_longer_allowed(
    client: AsyncTestClient[Any], settings: Settings, receiver: WebhookReceiver
) -> None:
    created = await schedule(client, receiver.url.replace("127.0.0.1", "localhost"))

    async with running_worker(settings, webhook_allowed_networks=""):
        failed = await wait_for_status(client, created["id"], "failed")

    assert failed["last_error"] == "recipient must not point at 127.0.0.1, a loopback address"
    assert receiver.received() == []


async def create_rule_and_notification(
    client: AsyncTestClient[Any], recipient: str
) -> tuple[httpx.Response, httpx.Response]:
    rule = await client.post(
        "/api/v1/rules/",
        json={"event_type": "x", "channel": "webhook", "recipient": recipient},
    )
    notification = await client.post(
        "/api/v1/notifications/",
        json={
            "notification_type": "x",
            "entity_id": "e",
            "target_date": "2030-01-01T00:00:00Z",
            "channel": "webhook",
            "recipient": recipient,
        },
    )
    return rule, notification


# --- the resolver ----------------------------------------------------------------------


async def test_the_resolver_hands_out_only_vetted_addresses() -> None:
    (found,) = await GuardedResolver(LOOPBACK).resolve("localhost", 8080)
    assert (found["hostname"], found["host"], found["port"]) == ("localhost", "127.0.0.1", 8080)
    assert found["flags"] == socket.AI_NUMERICHOST  # aiohttp connects to it as given

    with pytest.raises(
        BlockedAddressError, match=r"localhost resolves to 127\.0\.0\.1, a loopback"
    ):
        await GuardedResolver().resolve("localhost", 8080)


async def test_a_keep_alive_connection_the_server_dropped_is_not_reused() -> None:
    """Each answer closes its connection without saying so: every send still succeeds,
    because the client notices the dropped connection before a request goes out on it."""

    async def answer_once_then_hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_once_then_hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = WebhookChannel(
        secret=None,
        timeout_seconds=2.0,
        user_agent="test",
        allowed_networks=parse_networks(LOOPBACK_NETWORKS),
    )
    try:
        for _ in range(3):
            receipt = await channel.send(message(f"http://127.0.0.1:{port}/hook"))
            assert receipt.status_code == 204
            await asyncio.sleep(0.05)  # the server's close reaches us before the next send
    finally:
        await channel.aclose()
        server.close()
        await server.wait_closed()
