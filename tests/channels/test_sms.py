"""The SMS channel: segmenting, and both provider adapters against a fake provider on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from notifier.channels.base import ANSWER_EXCERPT_CHARS, DeliveryError, OutgoingMessage
from notifier.channels.sms import (
    JsonSmsProvider,
    SmsChannel,
    TwilioProvider,
    create_sms_channel,
    encoding_of,
    fit,
    segment,
)
from notifier.settings import Settings, SettingsError
from tests.hostile_receiver import HostileReceiver, allocation_peak
from tests.support import FakeSmsProvider, eventually

NOTIFICATION_ID = uuid.UUID("0f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b")
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-test-auth-token"


def message(text: str = "Your password expires on 24 December 2026.") -> OutgoingMessage:
    return OutgoingMessage(
        notification_id=NOTIFICATION_ID,
        notification_type="password.expiring",
        recipient="+14155550123",
        attempt=1,
        subject="Password expiring",
        text=text,
    )


@pytest.fixture
async def twilio(sms_provider: FakeSmsProvider) -> AsyncIterator[SmsChannel]:
    provider = TwilioProvider(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        sender="+15005550006",
        base_url=sms_provider.url,
        timeout_seconds=2.0,
    )
    channel = SmsChannel(provider, max_segments=3, truncate=True)
    yield channel
    await channel.aclose()


# --- segmenting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("{" * 80, "GSM-7", 1),  # extension characters take two septets each
        ("{" * 81, "GSM-7", 2),
        ("Grüße aus Zürich ñ à é", "GSM-7", 1),  # all in the GSM alphabet
        ("ж" * 70, "UCS-2", 1),
        ("ж" * 71, "UCS-2", 2),
        ("a" * 69 + "✓", "UCS-2", 1),  # one character outside GSM-7 switches the whole text
        ("a" * 70 + "✓", "UCS-2", 2),
        ("🙂" * 35, "UCS-2", 1),  # astral characters are surrogate pairs: two units
        ("🙂" * 36, "UCS-2", 2),
    ],
)
def test_segment_counts_follow_gsm_7_and_ucs_2_limits(
    text: str, encoding: str, segments: int
) -> None:
    info = encoding_of(text)

    assert (info.encoding, info.segments) == (encoding, segments)
    assert "".join(segment(text)) == text


def test_a_character_is_never_split_across_segments() -> None:
    parts = segment("a" * 152 + "€" + "b" * 10)  # "€" would straddle the 153-septet boundary

    assert parts[0] == "a" * 152
    assert parts[1].startswith("€")
    for part in segment("🙂" * 40):
        assert len(part.encode("utf-16-le")) // 2 <= 67


def test_long_texts_are_truncated_to_the_segment_limit_or_refused() -> None:
    text = "word " * 100  # 500 GSM-7 characters: 4 segments

    cut = fit(text, 2, truncate=True)
    assert cut.endswith("...")
    assert encoding_of(cut).segments == 2
    assert len(cut) > 290  # uses the room it has
    assert fit("short", 1, truncate=True) == "short"
    with pytest.raises(DeliveryError, match="4 GSM-7 segments") as refused:
        fit(text, 2, truncate=False)
    assert not refused.value.retryable


def test_recipients_must_be_e164_numbers() -> None:
    channel = SmsChannel(
        JsonSmsProvider(url="http://127.0.0.1:9/", token=None, sender=None, timeout_seconds=1),
        max_segments=1,
        truncate=True,
    )

    assert channel.validate_recipient("+14155550123") is None
    assert channel.validate_recipient("+447700900123") is None
    for bad in ["14155550123", "+0155550123", "+1 415 555 0123", "+1415555012345678", "+12", ""]:
        assert channel.validate_recipient(bad) is not None, bad


# --- the Twilio-shaped adapter ----------------------------------------------------------


async def test_twilio_adapter_posts_a_form_with_basic_auth(
    twilio: SmsChannel, sms_provider: FakeSmsProvider
) -> None:
    receipt = await twilio.send(message())

    (request,) = sms_provider.received()
    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    credentials = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {credentials}"
    assert sms_provider.form(0) == {
        "To": "+14155550123",
        "From": "+15005550006",
        "Body": "Your password expires on 24 December 2026.",
    }
    assert receipt.status_code == 201
    assert receipt.detail == "SM" + "1".zfill(32)


async def test_twilio_adapter_sends_the_truncated_text(
    twilio: SmsChannel, sms_provider: FakeSmsProvider
) -> None:
    await twilio.send(message("ж" * 400))

    body = sms_provider.form(0)["Body"]
    assert body.endswith("...")
    assert encoding_of(body).segments == 3


@pytest.mark.parametrize(
    ("status", "headers", "retryable", "retry_after"),
    [
        (429, {"Retry-After": "7"}, True, 7.0),
        (503, {"Retry-After": "3"}, True, 3.0),
        (500, {}, True, None),
        (400, {}, False, None),
        (401, {}, False, None),
        (404, {}, False, None),
    ],
)
async def test_provider_statuses_are_classified(
    twilio: SmsChannel,
    sms_provider: FakeSmsProvider,
    status: int,
    headers: dict[str, str],
    retryable: bool,
    retry_after: float | None,
) -> None:
    sms_provider.script(
        status,
        {"code": 21211, "message": "The 'To' number is not valid.", "status": status},
        **headers,
    )

    with pytest.raises(DeliveryError) as failure:
        await twilio.send(message())

    assert failure.value.retryable is retryable
    assert failure.value.status_code == status
    assert failure.value.retry_after_seconds == retry_after
    assert "The 'To' number is not valid. (code 21211)" in str(failure.value)
    assert AUTH_TOKEN not in str(failure.value)


async def test_an_unreachable_provider_is_retried() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    provider = TwilioProvider(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        sender="+15005550006",
        base_url=f"http://127.0.0.1:{port}",
        timeout_seconds=2.0,
    )
    channel = SmsChannel(provider, max_segments=1, truncate=True)
    try:
        with pytest.raises(DeliveryError) as failure:
            await channel.send(message())
    finally:
        await channel.aclose()

    assert failure.value.retryable


async def test_an_empty_text_fails_permanently(twilio: SmsChannel) -> None:
    with pytest.raises(DeliveryError) as failure:
        await twilio.send(message("  \n "))

    assert not failure.value.retryable


# --- the generic JSON adapter -----------------------------------------------------------


async def test_json_adapter_posts_json_with_a_bearer_token(sms_provider: FakeSmsProvider) -> None:
    channel = create_sms_channel(
        Settings(
            sms_provider="json",
            sms_api_url=sms_provider.url + "/sms",
            sms_auth_token="gateway-token",
            sms_from="ACME",
        )
    )
    assert channel is not None
    try:
        await channel.send(message())
    finally:
        await channel.aclose()

    (request,) = sms_provider.received()
    assert request.path == "/sms"
    assert request.headers["authorization"] == "Bearer gateway-token"
    assert request.headers["idempotency-key"] == f"msg_{NOTIFICATION_ID.hex}"
    assert json.loads(request.body) == {
        "to": "+14155550123",
        "from": "ACME",
        "text": "Your password expires on 24 December 2026.",
        "idempotency_key": f"msg_{NOTIFICATION_ID.hex}",
    }


# --- settings ---------------------------------------------------------------------------


def test_settings_build_the_channel_only_when_a_provider_is_set() -> None:
    assert create_sms_channel(Settings()) is None


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"sms_provider": "carrier-pigeon"}, "NOTIFIER_SMS_PROVIDER"),
        ({"sms_provider": "twilio", "sms_from": "+15005550006"}, "NOTIFIER_SMS_AUTH_TOKEN"),
        ({"sms_provider": "json"}, "NOTIFIER_SMS_API_URL"),
        (
            {"sms_provider": "json", "sms_api_url": "http://x.example/", "sms_max_segments": 0},
            "NOTIFIER_SMS_MAX_SEGMENTS",
        ),
    ],
)
def test_unusable_settings_are_refused_at_startup(changes: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        create_sms_channel(Settings().replace(**changes))


# --- answers that try to exhaust the worker ---------------------------------------------


@contextlib.asynccontextmanager
async def json_gateway(url: str, timeout_seconds: float = 2.0) -> AsyncIterator[SmsChannel]:
    provider = JsonSmsProvider(url=url, token=None, sender=None, timeout_seconds=timeout_seconds)
    channel = SmsChannel(provider, max_segments=3, truncate=True)
    try:
        yield channel
    finally:
        await channel.aclose()


async def test_a_1_gib_answer_is_read_to_64_kib_and_the_connection_closed(
    hostile: HostileReceiver,
) -> None:
    started = time.monotonic()
    async with json_gateway(hostile.url + "/huge") as channel:
        with allocation_peak() as peak:
            receipt = await channel.send(message())

    assert receipt.status_code == 200
    assert receipt.detail is None  # the 64 KiB kept are no JSON document
    assert time.monotonic() - started < 1.5
    assert peak[0] < 4 * 1024 * 1024, peak
    await eventually(lambda: asyncio.sleep(0, bool(hostile.body_bytes_sent)))
    assert hostile.body_bytes_sent[0] < 64 * 1024 * 1024


async def test_an_error_answer_that_is_not_json_is_quoted_from_its_first_bytes(
    hostile: HostileReceiver,
) -> None:
    async with json_gateway(hostile.url + "/huge-error") as channel:
        with allocation_peak() as peak, pytest.raises(DeliveryError) as failure:
            await channel.send(message())

    assert (failure.value.retryable, failure.value.status_code) == (True, 500)
    error = str(failure.value)
    assert error.startswith("SMS provider answered 500: upstream exploded at line 1 !!!"), error
    assert len(error) <= len("SMS provider answered 500: ") + ANSWER_EXCERPT_CHARS
    assert peak[0] < 4 * 1024 * 1024, peak


@pytest.mark.parametrize("kind", ["long-header", "many-headers"])
async def test_an_oversized_answer_head_fails_the_attempt_retryably(
    hostile: HostileReceiver, kind: str
) -> None:
    async with json_gateway(f"{hostile.url}/{kind}") as channel:
        with allocation_peak() as peak, pytest.raises(DeliveryError) as failure:
            await channel.send(message())

    assert failure.value.retryable is True
    assert failure.value.status_code is None
    assert str(failure.value).startswith("SMS provider request failed: RemoteProtocolError")
    assert peak[0] < 4 * 1024 * 1024, peak


async def test_a_body_trickling_forever_is_cut_by_the_total_timeout(
    hostile: HostileReceiver,
) -> None:
    # httpx's own timeout is per read: a byte every 50 ms would never trip it.
    started = time.monotonic()
    async with json_gateway(hostile.url + "/trickle-body", timeout_seconds=0.5) as channel:
        with pytest.raises(DeliveryError) as failure:
            async with asyncio.timeout(10):  # without the fix: about 14 hours
                await channel.send(message())

    assert failure.value.retryable is True
    assert str(failure.value).startswith(
        "SMS provider timed out: no complete answer within 0.5s"
    ), str(failure.value)
    assert time.monotonic() - started < 3
