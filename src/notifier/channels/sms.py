"""The SMS channel: the rendered text, sent through a provider's HTTP API.

Providers sit behind :class:`SmsProvider`; two ship: :class:`TwilioProvider` (Twilio's
REST shape, which many providers copy) and :class:`JsonSmsProvider` (one JSON POST, for
gateways fronted by a small webhook). Adding one is a class with ``send`` and ``aclose``.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Protocol

import httpx
import msgspec

from notifier.channels.base import (
    MAX_ANSWER_BYTES,
    DeliveryError,
    DeliveryReceipt,
    OutgoingMessage,
    answer_excerpt,
)
from notifier.channels.webhook import parse_retry_after
from notifier.settings import Settings, SettingsError

# E.164: "+", a country code that does not start with 0, at most 15 digits in all.
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
TWILIO_API_URL = "https://api.twilio.com"
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})

# GSM 03.38: the basic set (one septet each) and the extension set (escape + one septet).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
# Characters per message: one single message, or each part of a concatenated one (the
# rest carries the user data header that joins the parts).
GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67
TRUNCATION_MARK = "..."
# Requests to the provider one process has in flight at once: every concurrent batch of
# a worker sends its messages concurrently, and providers limit concurrent requests per
# account (commonly to a few dozen).
MAX_CONNECTIONS = 20
# Answers are read as sent, up to MAX_ANSWER_BYTES: ask for them uncompressed, so that the
# limit counts what is kept (a compressed answer could inflate a thousandfold).
ANSWER_ENCODING = {"accept-encoding": "identity"}


class SmsEncoding(msgspec.Struct, frozen=True):
    """How a text travels: its encoding and the number of messages it takes."""

    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def _units(char: str, gsm7: bool) -> int:
    if gsm7:
        return 2 if char in GSM7_EXTENSION else 1
    return 2 if ord(char) > 0xFFFF else 1  # a surrogate pair in UTF-16


def is_gsm7(text: str) -> bool:
    """Whether every character of ``text`` exists in the GSM 7-bit alphabet."""
    return all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text)


def segment(text: str) -> list[str]:
    """``text`` cut into the parts a phone network carries; a character (an escape
    sequence, a surrogate pair) is never split across two parts."""
    gsm7 = is_gsm7(text)
    single, part = (GSM7_SINGLE, GSM7_PART) if gsm7 else (UCS2_SINGLE, UCS2_PART)
    if sum(_units(char, gsm7) for char in text) <= single:
        return [text] if text else []
    parts: list[str] = []
    current: list[str] = []
    used = 0
    for char in text:
        size = _units(char, gsm7)
        if used + size > part:
            parts.append("".join(current))
            current, used = [], 0
        current.append(char)
        used += size
    parts.append("".join(current))
    return parts


def encoding_of(text: str) -> SmsEncoding:
    """The encoding and segment count of ``text``."""
    gsm7 = is_gsm7(text)
    return SmsEncoding(
        encoding="GSM-7" if gsm7 else "UCS-2",
        units=sum(_units(char, gsm7) for char in text),
        segments=len(segment(text)),
    )


def fit(text: str, max_segments: int, *, truncate: bool) -> str:
    """``text`` if it fits in ``max_segments``, else cut (ending in "...") or refused."""
    if len(segment(text)) <= max_segments:
        return text
    if not truncate:
        info = encoding_of(text)
        raise DeliveryError(
            f"text needs {info.segments} {info.encoding} segments, more than the "
            f"{max_segments} allowed (NOTIFIER_SMS_MAX_SEGMENTS)",
            retryable=False,
        )
    # Drop characters from the end until the text with its mark fits.
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits, by bisection
        middle = (low + high + 1) // 2
        if len(segment(text[:middle].rstrip() + TRUNCATION_MARK)) <= max_segments:
            low = middle
        else:
            high = middle - 1
    return text[:low].rstrip() + TRUNCATION_MARK


class SmsProvider(Protocol):
    """One provider's API: send one text, raise :class:`DeliveryError` on failure."""

    name: str

    async def send(self, *, to: str, body: str, idempotency_key: str) -> DeliveryReceipt:
        """Ask the provider to send ``body`` to ``to`` once."""

    async def aclose(self) -> None:
        """Release connections."""


def classify(status: int, headers: httpx.Headers, answer: bytes) -> DeliveryReceipt:
    """A provider's answer (its status, headers and the start of its body): 2xx success;
    408/409/425/429 and 5xx retry (honouring ``Retry-After``); any other 4xx is permanent
    (a bad number, a blocked recipient)."""
    if 200 <= status < 300:
        return DeliveryReceipt(status_code=status, detail=_provider_reference(answer))
    retryable = status >= 500 or status in RETRYABLE_STATUSES
    raise DeliveryError(
        f"SMS provider answered {status}{_provider_error(answer)}",
        retryable=retryable,
        status_code=status,
        retry_after_seconds=parse_retry_after(headers.get("retry-after")) if retryable else None,
    )


def _json(answer: bytes) -> dict[str, Any] | None:
    """The answer as a JSON object; None if it is not one (or was cut at the read limit)."""
    try:
        document = msgspec.json.decode(answer)
    except msgspec.DecodeError:
        return None
    return document if isinstance(document, dict) else None


def _provider_reference(answer: bytes) -> str | None:
    """The provider's id for the accepted message (Twilio's ``sid``, or ``id``)."""
    document = _json(answer) or {}
    reference = document.get("sid") or document.get("id")
    return str(reference)[:200] if reference is not None else None


def _provider_error(answer: bytes) -> str:
    """The provider's own explanation: its error document's message, or the start of an
    answer that is not JSON."""
    document = _json(answer)
    if document is None:
        excerpt = answer_excerpt(answer)
        return f": {excerpt}" if excerpt else ""
    message = document.get("message") or document.get("error")
    code = document.get("code")
    if not message:
        return ""
    suffix = f" (code {code})" if code is not None else ""
    return f": {str(message)[:500]}{suffix}"


async def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The first ``limit`` bytes of the answer's body, as sent. Leaving the stream before
    its end closes the connection (httpcore does not reuse one mid-answer): the rest is
    never read."""
    chunks: list[bytes] = []
    size = 0
    stream = response.aiter_raw()
    try:
        async for chunk in stream:
            chunks.append(chunk[: limit - size])
            size += len(chunks[-1])
            if size >= limit:
                break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return b"".join(chunks)


async def _post(
    client: httpx.AsyncClient, url: str, *, timeout_seconds: float, **kwargs: Any
) -> DeliveryReceipt:
    """POST to the provider and classify its answer, of which at most
    :data:`~notifier.channels.base.MAX_ANSWER_BYTES` are read.

    httpx's timeout bounds each network operation; the deadline bounds the whole request,
    so a provider trickling its answer cannot hold the worker longer. httpcore bounds the
    answer's head (status line and headers) at 100 KiB.
    """
    try:
        async with asyncio.timeout(timeout_seconds):
            async with client.stream("POST", url, **kwargs) as response:
                answer = await _read_at_most(response, MAX_ANSWER_BYTES)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise DeliveryError(
            f"SMS provider timed out: no complete answer within {timeout_seconds:g}s "
            f"({type(exc).__name__})",
            retryable=True,
        ) from exc
    except httpx.HTTPError as exc:
        raise DeliveryError(f"SMS provider request failed: {exc!r}", retryable=True) from exc
    return classify(response.status_code, response.headers, answer)


class TwilioProvider:
    """Twilio's Messages API: a form POST with HTTP basic auth (account SID, auth token)."""

    name = "twilio"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        sender: str,
        base_url: str = TWILIO_API_URL,
        timeout_seconds: float,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._sender = sender
        self._timeout_seconds = timeout_seconds
        self._client = httpx.AsyncClient(
            auth=httpx.BasicAuth(account_sid, auth_token),
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=False,
            headers=ANSWER_ENCODING,
        )

    async def send(self, *, to: str, body: str, idempotency_key: str) -> DeliveryReceipt:
        """POST ``To``, ``From`` and ``Body``; 201 with the message's ``sid`` is success."""
        return await _post(
            self._client,
            self._url,
            timeout_seconds=self._timeout_seconds,
            data={"To": to, "From": self._sender, "Body": body},
            # Twilio ignores it; proxies and look-alike providers may deduplicate on it.
            headers={"idempotency-key": idempotency_key},
        )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()


class JsonSmsProvider:
    """A generic gateway: ``POST {"to", "from", "text", "idempotency_key"}`` as JSON,
    with an optional bearer token; any 2xx is success."""

    name = "json"

    def __init__(
        self, *, url: str, token: str | None, sender: str | None, timeout_seconds: float
    ) -> None:
        self._url = url
        self._sender = sender
        self._timeout_seconds = timeout_seconds
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=False,
            headers=headers | ANSWER_ENCODING,
        )

    async def send(self, *, to: str, body: str, idempotency_key: str) -> DeliveryReceipt:
        """POST the message; the ``Idempotency-Key`` header repeats ``idempotency_key``."""
        document = {
            "to": to,
            "from": self._sender,
            "text": body,
            "idempotency_key": idempotency_key,
        }
        return await _post(
            self._client,
            self._url,
            timeout_seconds=self._timeout_seconds,
            content=msgspec.json.encode(document),
            headers={"content-type": "application/json", "idempotency-key": idempotency_key},
        )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()


class SmsChannel:
    """Delivers the rendered text to an E.164 number through one provider."""

    name = "sms"
    sends_html = False

    def __init__(self, provider: SmsProvider, *, max_segments: int, truncate: bool) -> None:
        if max_segments < 1:
            raise SettingsError("NOTIFIER_SMS_MAX_SEGMENTS must be at least 1")
        self.provider = provider
        self._max_segments = max_segments
        self._truncate = truncate
        self._requests = asyncio.Semaphore(MAX_CONNECTIONS)

    def validate_recipient(self, recipient: str) -> str | None:
        """The recipient must be an E.164 number: ``+`` and up to 15 digits."""
        if not E164.match(recipient):
            return "must be a phone number in E.164 form, such as +14155550123"
        return None

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        """Fit the text into the allowed segments and hand it to the provider."""
        text = message.text.strip()
        if not text:
            raise DeliveryError("the rendered text is empty", retryable=False)
        body = fit(text, self._max_segments, truncate=self._truncate)
        # Waiting for a turn here is outside the request's deadline: a large batch queues
        # its messages instead of timing them out in the HTTP client's pool.
        async with self._requests:
            return await self.provider.send(
                to=message.recipient, body=body, idempotency_key=message.idempotency_key
            )

    async def aclose(self) -> None:
        """Close the provider's client."""
        await self.provider.aclose()


def create_sms_channel(settings: Settings) -> SmsChannel | None:
    """The SMS channel ``settings`` describe, or None when ``NOTIFIER_SMS_PROVIDER`` is unset."""
    if settings.sms_provider is None:
        return None
    provider: SmsProvider
    if settings.sms_provider == "twilio":
        if not (settings.sms_account_sid and settings.sms_auth_token and settings.sms_from):
            raise SettingsError(
                "the twilio SMS provider needs NOTIFIER_SMS_ACCOUNT_SID, "
                "NOTIFIER_SMS_AUTH_TOKEN and NOTIFIER_SMS_FROM"
            )
        provider = TwilioProvider(
            account_sid=settings.sms_account_sid,
            auth_token=settings.sms_auth_token,
            sender=settings.sms_from,
            base_url=settings.sms_api_url or TWILIO_API_URL,
            timeout_seconds=settings.sms_timeout_seconds,
        )
    elif settings.sms_provider == "json":
        if not settings.sms_api_url:
            raise SettingsError("the json SMS provider needs NOTIFIER_SMS_API_URL")
        provider = JsonSmsProvider(
            url=settings.sms_api_url,
            token=settings.sms_auth_token,
            sender=settings.sms_from,
            timeout_seconds=settings.sms_timeout_seconds,
        )
    else:
        raise SettingsError(
            f"NOTIFIER_SMS_PROVIDER={settings.sms_provider!r} must be 'twilio' or 'json'"
        )
    return SmsChannel(
        provider, max_segments=settings.sms_max_segments, truncate=settings.sms_truncate
    )
