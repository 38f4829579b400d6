"""The webhook channel: Standard Webhooks signing, response classification, timeouts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import email.utils
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notifier.channels.base import (
    ANSWER_EXCERPT_CHARS,
    DeliveryError,
    DeliveryReceipt,
    OutgoingMessage,
)
from notifier.channels.webhook import (
    WebhookChannel,
    classify_response,
    decode_secret,
    parse_retry_after,
    sign,
    webhook_body,
)
from notifier.settings import parse_networks
from tests.hostile_receiver import HostileReceiver, allocation_peak
from tests.support import LOOPBACK_NETWORKS, WEBHOOK_SECRET, WebhookReceiver, eventually

UTC = datetime.UTC
NOTIFICATION_ID = uuid.UUID("5f0c6a8e-8a44-4c44-9d6c-1f1d8c9f0b42")


def message(recipient: str = "https://example.com/hooks", attempt: int = 1) -> OutgoingMessage:
    return OutgoingMessage(
        notification_id=NOTIFICATION_ID,
        notification_type="password.expiring",
        recipient=recipient,
        attempt=attempt,
        event_id=uuid.UUID("00000000-0000-4000-8000-000000000001"),
        entity_id="user-7",
        target_date=datetime.datetime(2026, 3, 13, tzinfo=UTC),
        template="expiry",
        context={"name": "Ada", "nested": {"n": [1, 2]}},
        subject="Your password expires on 13 March 2026",
        text="Hi Ada, ...",
    )


# The receiver fixture listens on loopback, which webhooks reach only through the allowlist.
LOOPBACK = parse_networks(LOOPBACK_NETWORKS)


@pytest.fixture
async def channel() -> AsyncIterator[WebhookChannel]:
    webhook = WebhookChannel(
        secret=WEBHOOK_SECRET,
        timeout_seconds=2.0,
        user_agent="test-agent",
        allowed_networks=LOOPBACK,
    )
    yield webhook
    await webhook.aclose()


# --- classify_response -----------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_success(status: int) -> None:
    assert classify_response(status, None) == DeliveryReceipt(status_code=status)


def test_410_is_permanent() -> None:
    with pytest.raises(DeliveryError) as caught:
        classify_response(410, "5")
    assert caught.value.retryable is False
    assert caught.value.status_code == 410
    assert caught.value.retry_after_seconds is None
    assert str(caught.value) == "receiver answered 410 Gone"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 422, 301, 302, 304])
def test_other_client_errors_and_redirects_are_permanent(status: int) -> None:
    with pytest.raises(DeliveryError) as caught:
        classify_response(status, None)
    assert (caught.value.retryable, caught.value.status_code) == (False, status)
    assert str(caught.value) == f"receiver answered {status}"


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 501, 502, 503, 504, 599])
def test_server_errors_and_transient_client_errors_are_retryable(status: int) -> None:
    with pytest.raises(DeliveryError) as caught:
        classify_response(status, None)
    assert (caught.value.retryable, caught.value.status_code) == (True, status)
    assert caught.value.retry_after_seconds is None


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_throttling_statuses_honour_retry_after_seconds(status: int) -> None:
    with pytest.raises(DeliveryError) as caught:
        classify_response(status, "120")
    assert caught.value.retryable is True
    assert caught.value.retry_after_seconds == 120.0


def test_503_honours_retry_after_as_an_http_date() -> None:
    when = datetime.datetime.now(UTC) + datetime.timedelta(seconds=120)
    with pytest.raises(DeliveryError) as caught:
        classify_response(503, email.utils.format_datetime(when, usegmt=True))
    assert caught.value.retry_after_seconds is not None
    assert 100 <= caught.value.retry_after_seconds <= 120


@pytest.mark.parametrize("status", [500, 408])
def test_retry_after_is_ignored_on_other_retryable_statuses(status: int) -> None:
    with pytest.raises(DeliveryError) as caught:
        classify_response(status, "120")
    assert caught.value.retry_after_seconds is None


# --- parse_retry_after -----------------------------------------------------------------

NOW = datetime.datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("1", 1.0),
        (" 30 ", 30.0),
        ("Tue, 10 Mar 2026 12:01:30 GMT", 90.0),
        ("Tuesday, 10-Mar-26 12:00:10 GMT", 10.0),  # RFC 850, obsolete but allowed
        ("Tue Mar 10 12:00:05 2026", 5.0),  # asctime
        ("Tue, 10 Mar 2026 11:00:00 GMT", 0.0),  # in the past: now
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


# --- signing ---------------------------------------------------------------------------


def test_sign_matches_the_standard_webhooks_reference() -> None:
    body = b'{"type":"x","data":{"a":1}}'
    timestamp = int(datetime.datetime.now(UTC).timestamp())
    message_id = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"

    signature = sign(decode_secret(WEBHOOK_SECRET), message_id, timestamp, body)

    headers = {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }
    assert Webhook(WEBHOOK_SECRET).verify(body, headers) == {"type": "x", "data": {"a": 1}}
    reference = Webhook(WEBHOOK_SECRET).sign(
        message_id, datetime.datetime.fromtimestamp(timestamp, tz=UTC), body.decode()
    )
    assert signature == reference
    assert signature.startswith("v1,")


def test_signature_covers_id_timestamp_and_body() -> None:
    key = decode_secret(WEBHOOK_SECRET)
    timestamp = int(datetime.datetime.now(UTC).timestamp())
    body = b'{"a":1}'
    signature = sign(key, "msg_1", timestamp, body)
    verifier = Webhook(WEBHOOK_SECRET)

    for headers, data in [
        ({"webhook-id": "msg_2", "webhook-timestamp": str(timestamp)}, body),
        ({"webhook-id": "msg_1", "webhook-timestamp": str(timestamp - 1)}, body),
        ({"webhook-id": "msg_1", "webhook-timestamp": str(timestamp)}, b'{"a":2}'),
    ]:
        with pytest.raises(WebhookVerificationError):
            verifier.verify(data, headers | {"webhook-signature": signature})


def test_decode_secret_accepts_the_bare_and_unpadded_forms() -> None:
    raw = b"test-secret-of-32-bytes-length!!"
    encoded = base64.b64encode(raw).decode()
    assert decode_secret(WEBHOOK_SECRET) == raw
    assert decode_secret(encoded) == raw
    short = b"24-byte-secret-for-tests"[:23]  # base64 of 23 bytes needs one '=' of padding
    assert decode_secret("whsec_" + base64.b64encode(short).decode().rstrip("=")) == short


def test_webhook_body_is_the_standard_webhooks_envelope() -> None:
    document = json.loads(webhook_body(message()))

    assert document["type"] == "password.expiring"
    assert datetime.datetime.fromisoformat(document["timestamp"]).tzinfo is not None
    assert document["data"] == {
        "notification_id": str(NOTIFICATION_ID),
        "event_id": "00000000-0000-4000-8000-000000000001",
        "entity_id": "user-7",
        "target_date": "2026-03-13T00:00:00Z",
        "template": "expiry",
        "payload": {"name": "Ada", "nested": {"n": [1, 2]}},
        "subject": "Your password expires on 13 March 2026",
        "text": "Hi Ada, ...",
    }


def test_idempotency_key_is_the_same_on_every_attempt() -> None:
    assert message(attempt=1).idempotency_key == message(attempt=5).idempotency_key
    assert message().idempotency_key == f"msg_{NOTIFICATION_ID.hex}"


# --- validate_recipient ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipient", "problem"),
    [
        ("https://example.com/hooks", None),
        ("http://127.0.0.1:8080/x?y=1", None),
        ("ftp://example.com/hooks", "must be an absolute http:// or https:// URL"),
        ("/relative/path", "must be an absolute http:// or https:// URL"),
        ("ada@example.com", "must be an absolute http:// or https:// URL"),
        ("https://", "must be an absolute http:// or https:// URL"),
    ],
)
def test_validate_recipient(channel: WebhookChannel, recipient: str, problem: str | None) -> None:
    assert channel.validate_recipient(recipient) == problem


@pytest.mark.parametrize(
    ("recipient", "problem"),
    [
        ("http://example.com:abc/", "is not a valid URL: Invalid port: 'abc'"),
        ("http://example.com:99999/", "has an invalid port 99999"),
        ("http://example.com:0/", "has an invalid port 0"),
        ("http://exa mple.com/", "has an invalid host name 'exa%20mple.com'"),
    ],
)
def test_validate_recipient_rejects_urls_that_can_never_work(
    channel: WebhookChannel, recipient: str, problem: str
) -> None:
    assert channel.validate_recipient(recipient) == problem


# --- sending to a real receiver --------------------------------------------------------


async def test_send_posts_signed_json_with_the_idempotency_key(
    channel: WebhookChannel, receiver: WebhookReceiver
) -> None:
    receipt = await channel.send(message(receiver.url))

    assert (receipt.status_code, receipt.answer) == (200, b"")
    assert receipt.duration_ms is not None
    (request,) = receiver.received()
    assert request.path == "/hooks"
    assert request.headers["webhook-id"] == f"msg_{NOTIFICATION_ID.hex}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "test-agent"
    document = Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)
    assert document["data"]["notification_id"] == str(NOTIFICATION_ID)


async def test_send_without_a_secret_is_unsigned(receiver: WebhookReceiver) -> None:
    unsigned = WebhookChannel(
        secret=None, timeout_seconds=2.0, user_agent="test-agent", allowed_networks=LOOPBACK
    )
    try:
        await unsigned.send(message(receiver.url))
    finally:
        await unsigned.aclose()

    (request,) = receiver.received()
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == f"msg_{NOTIFICATION_ID.hex}"


async def test_send_raises_the_classified_error_with_retry_after(
    channel: WebhookChannel, receiver: WebhookReceiver
) -> None:
    receiver.script((429, {"Retry-After": "7"}), 410)

    with pytest.raises(DeliveryError) as throttled:
        await channel.send(message(receiver.url))
    with pytest.raises(DeliveryError) as gone:
        await channel.send(message(receiver.url))

    assert (throttled.value.retryable, throttled.value.retry_after_seconds) == (True, 7.0)
    assert (gone.value.retryable, gone.value.status_code) == (False, 410)


async def test_slow_receiver_times_out_as_a_retryable_error(receiver: WebhookReceiver) -> None:
    receiver.delay_seconds = 1.5
    impatient = WebhookChannel(
        secret=WEBHOOK_SECRET, timeout_seconds=0.3, user_agent="t", allowed_networks=LOOPBACK
    )
    try:
        with pytest.raises(DeliveryError) as caught:
            await impatient.send(message(receiver.url))
    finally:
        await impatient.aclose()

    assert caught.value.retryable is True
    assert caught.value.status_code is None
    assert str(caught.value).startswith("timed out")
    assert len(receiver.received()) == 1  # it did arrive; the answer came too late


async def test_receiver_trickling_its_answer_times_out_after_the_timeout_in_total() -> None:
    # Each header line comes well within the timeout, so only a deadline on the whole
    # request stops this one from holding the worker's slot for ever.
    writers: list[asyncio.StreamWriter] = []

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        with contextlib.suppress(ConnectionError):
            while not writer.is_closing():
                await asyncio.sleep(0.1)
                writer.write(b"x-still-thinking: yes\r\n")
                await writer.drain()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    impatient = WebhookChannel(
        secret=None, timeout_seconds=0.5, user_agent="t", allowed_networks=LOOPBACK
    )
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError) as caught:
            await impatient.send(message(f"http://127.0.0.1:{port}/hooks"))
    finally:
        await impatient.aclose()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()

    assert caught.value.retryable is True
    assert str(caught.value) == "timed out: no complete answer within 0.5s"
    assert time.monotonic() - started < 3


async def test_unreachable_receiver_is_a_retryable_error(channel: WebhookChannel) -> None:
    with pytest.raises(DeliveryError) as caught:
        await channel.send(message("http://127.0.0.1:1/hooks"))

    assert caught.value.retryable is True
    assert str(caught.value).startswith("request failed: ClientConnectorError: Cannot connect")


async def test_redirects_are_not_followed(
    channel: WebhookChannel, receiver: WebhookReceiver
) -> None:
    receiver.script((307, {"Location": "http://169.254.169.254/latest"}))

    with pytest.raises(DeliveryError) as caught:
        await channel.send(message(receiver.url))

    assert (caught.value.retryable, caught.value.status_code) == (False, 307)
    assert len(receiver.received()) == 1


# --- answers that try to exhaust the worker ---------------------------------------------


async def test_a_1_gib_answer_is_read_to_64_kib_and_the_connection_closed(
    channel: WebhookChannel, hostile: HostileReceiver
) -> None:
    started = time.monotonic()
    with allocation_peak() as peak:
        receipt = await channel.send(message(hostile.url + "/huge"))

    # The status decides, as before; of the body only the first KiB is kept (attempt logs).
    assert (receipt.status_code, receipt.answer) == (200, b"x" * 1024)
    assert time.monotonic() - started < 1.5  # closed, not drained (nor timed out)
    assert peak[0] < 4 * 1024 * 1024, peak
    # The receiver got out no more than the 64 KiB read and what socket buffers took.
    await eventually(lambda: asyncio.sleep(0, bool(hostile.body_bytes_sent)))
    assert hostile.body_bytes_sent[0] < 64 * 1024 * 1024


async def test_an_error_answer_is_quoted_from_its_first_bytes(
    channel: WebhookChannel, hostile: HostileReceiver
) -> None:
    with allocation_peak() as peak, pytest.raises(DeliveryError) as caught:
        await channel.send(message(hostile.url + "/huge-error"))

    assert (caught.value.retryable, caught.value.status_code) == (True, 500)
    error = str(caught.value)
    assert error.startswith("receiver answered 500: upstream exploded at line 1 !!!"), error
    assert error.endswith("...")
    assert len(error) <= len("receiver answered 500: ") + ANSWER_EXCERPT_CHARS
    assert peak[0] < 4 * 1024 * 1024, peak


def test_an_answer_is_quoted_printable_and_short() -> None:
    with pytest.raises(DeliveryError) as caught:
        classify_response(503, None, b"\x1b[31mbusy\x00\n\n try  later\xff")
    assert str(caught.value) == "receiver answered 503: [31mbusy try later\ufffd"
    with pytest.raises(DeliveryError) as empty:
        classify_response(503, None, b" \r\n")
    assert str(empty.value) == "receiver answered 503"


@pytest.mark.parametrize("kind", ["long-header", "many-headers"])
async def test_an_oversized_answer_head_fails_the_attempt_retryably(
    channel: WebhookChannel, hostile: HostileReceiver, kind: str
) -> None:
    started = time.monotonic()
    with allocation_peak() as peak, pytest.raises(DeliveryError) as caught:
        await channel.send(message(f"{hostile.url}/{kind}"))

    assert caught.value.retryable is True
    assert caught.value.status_code is None
    assert str(caught.value).startswith("invalid answer: "), str(caught.value)
    assert hostile.url.removeprefix("http://") not in str(caught.value)
    assert time.monotonic() - started < 1.5
    assert peak[0] < 4 * 1024 * 1024, peak


async def test_a_body_trickling_forever_is_cut_by_the_total_timeout(
    hostile: HostileReceiver,
) -> None:
    impatient = WebhookChannel(
        secret=None, timeout_seconds=0.5, user_agent="t", allowed_networks=LOOPBACK
    )
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError) as caught:
            await impatient.send(message(hostile.url + "/trickle-body"))
    finally:
        await impatient.aclose()

    assert str(caught.value) == "timed out: no complete answer within 0.5s"
    assert time.monotonic() - started < 3
