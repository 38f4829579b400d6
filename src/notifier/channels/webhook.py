"""The webhook channel: an HTTP POST signed per Standard Webhooks 1.0.

Every attempt of one notification carries the same ``webhook-id``, so a receiver that
deduplicates on it sees each notification once even though delivery is at-least-once.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import hashlib
import hmac
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import aiohttp
import httpx
import msgspec
from opentelemetry import propagate
from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue

from notifier.channels.base import (
    ANSWER_LOG_BYTES,
    MAX_ANSWER_BYTES,
    DeliveryError,
    DeliveryReceipt,
    OutgoingMessage,
    answer_excerpt,
)
from notifier.channels.egress import (
    BlockedAddressError,
    GuardedResolver,
    IPNetwork,
    check_addresses,
    host_problem,
    numeric_host,
    port_of,
)
from notifier.telemetry.tracing import client_span, redacted_url, tracing_enabled

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
# Standard Webhooks: these ask the sender to slow down and may say when to come back.
THROTTLING_STATUSES = frozenset({429, 502, 503, 504})
RETRYABLE_CLIENT_STATUSES = frozenset({408, 409, 425, 429})
MAX_URL_LENGTH = 2048
# Requests one process sends at once, and connections it keeps; more bought no throughput
# here (docs/performance.md) and would only press harder on slow receivers.
MAX_REQUESTS_IN_FLIGHT = 32
# Bounds on an answer's head, which aiohttp reads whole before anything else: a status or
# header line of at most 8 KiB, at most 64 header fields. Beyond them the attempt fails
# (retryably) instead of the worker buffering whatever a receiver sends.
MAX_HEADER_LINE_BYTES = 8190
MAX_HEADER_FIELDS = 64
# URLs whose parse a channel keeps (then it starts over): a worker sends to a few hosts,
# each URL many times, and parsing one took about as long as the rest of its request's
# preparation (profiled with py-spy: httpx's parse, then getaddrinfo for a numeric host).
PARSED_URLS_KEPT = 1024


class ParsedTarget(NamedTuple):
    """What sending to one URL needs of it, parsed once: the URL normalized as aiohttp is
    handed it, its host, why the address the host spells may not be reached (None: it
    may, or the host is a name, resolved and checked at connect time), its port, and its
    redacted form for traces."""

    url: str
    host: str
    refused: str | None
    port: int
    redacted: str


def decode_secret(secret: str) -> bytes:
    """The raw key of a ``whsec_<base64>`` secret (padding optional, as receivers accept)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def sign(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    # The one-shot digest: OpenSSL's HMAC in one call, without hmac.HMAC's Python object.
    digest = hmac.digest(secret, signed, hashlib.sha256)
    return "v1," + base64.b64encode(digest).decode()


def parse_retry_after(value: str | None, *, now: datetime.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    current = now or datetime.datetime.now(datetime.UTC)
    return max(0.0, (when - current).total_seconds())


def webhook_body(message: OutgoingMessage) -> bytes:
    """The JSON document POSTed for ``message`` (Standard Webhooks' type/timestamp/data)."""
    document: dict[str, Any] = {
        "type": message.notification_type,
        "timestamp": datetime.datetime.now(datetime.UTC),
        "data": {
            "notification_id": message.notification_id,
            "event_id": message.event_id,
            "entity_id": message.entity_id,
            "target_date": message.target_date,
            "template": message.template,
            "payload": message.context,
            # The rendered template, for receivers that relay it (chat, push) as is.
            "subject": message.subject,
            "text": message.text,
        },
    }
    return msgspec.json.encode(document)


class WebhookChannel:
    """POSTs JSON to the recipient URL; 2xx is success."""

    name = "webhook"
    sends_html = False

    def __init__(
        self,
        *,
        secret: str | None,
        timeout_seconds: float,
        user_agent: str,
        allowed_networks: Sequence[IPNetwork] = (),
    ) -> None:
        self._secret = decode_secret(secret) if secret else None
        self._allowed_networks = tuple(allowed_networks)
        self._timeout_seconds = timeout_seconds
        self._user_agent = user_agent
        # A process sends at most this many requests at once, whatever the batches hold.
        self._in_flight = asyncio.Semaphore(MAX_REQUESTS_IN_FLIGHT)
        self._session: aiohttp.ClientSession | None = None
        # Pure functions of a URL (and of allowed_networks), kept: validate_recipient's
        # answers, and the parses _post sends with.
        self._recipient_problems: dict[str, str | None] = {}
        self._targets: dict[str, ParsedTarget] = {}

    def _client(self) -> aiohttp.ClientSession:
        """The HTTP client, made on first use (it belongs to the running event loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # Connects only to public addresses, or to those in allowed_networks.
                connector=aiohttp.TCPConnector(
                    resolver=GuardedResolver(self._allowed_networks),
                    limit=MAX_REQUESTS_IN_FLIGHT,
                    # Keep-alive connections are reused this long after their last answer.
                    keepalive_timeout=5.0,
                ),
                # No timer of aiohttp's per request: _send's asyncio.timeout bounds the
                # whole request (connect, send, answer), one timer instead of two.
                timeout=aiohttp.ClientTimeout(total=None),
                # Answers are kept only for error messages: ask for them uncompressed.
                headers={"user-agent": self._user_agent, "accept-encoding": "identity"},
                # No proxies from the environment: a proxy would resolve the host itself,
                # out of the guard's sight.
                trust_env=False,
                # Answers are read and dropped: nothing to decompress. No cookies are kept
                # from one receiver to the next.
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                # What one answer may make the worker hold: the head within these bounds,
                # and of the body MAX_ANSWER_BYTES (see _post) plus one read buffer.
                read_bufsize=MAX_ANSWER_BYTES,
                max_line_size=MAX_HEADER_LINE_BYTES,
                max_field_size=MAX_HEADER_LINE_BYTES,
                max_headers=MAX_HEADER_FIELDS,
            )
        return self._session

    def validate_recipient(self, recipient: str) -> str | None:
        """The recipient must be an absolute http(s) URL without credentials, whose host is
        not a loopback, private or otherwise internal address (unless allowed).

        Host names are resolved at send time, where every address is checked again.
        """
        if recipient not in self._recipient_problems:
            if len(self._recipient_problems) >= PARSED_URLS_KEPT:
                self._recipient_problems.clear()
            self._recipient_problems[recipient] = self._recipient_problem(recipient)
        return self._recipient_problems[recipient]

    def _recipient_problem(self, recipient: str) -> str | None:
        if len(recipient) > MAX_URL_LENGTH:
            return f"must be at most {MAX_URL_LENGTH} characters"
        try:
            url = httpx.URL(recipient)
        except httpx.InvalidURL as exc:
            return f"is not a valid URL: {exc}"
        if url.scheme not in {"http", "https"} or not url.host:
            return "must be an absolute http:// or https:// URL"
        if url.userinfo:
            # They would be sent in the clear to every proxy and log on the way; and the URL
            # is shown in API responses. Receivers verify the signature instead.
            return "must not contain credentials (user:password@)"
        # httpx accepts both of these, and every send to them would fail, to no end.
        if url.port is not None and not 0 < url.port < 65536:
            return f"has an invalid port {url.port}"
        if "%" in url.host:  # httpx percent-encodes what a host name cannot contain
            return f"has an invalid host name {url.host!r}"
        problem = host_problem(url.host, self._allowed_networks)
        return f"must not point at {problem}" if problem else None

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        """POST once and classify the answer; the receipt or error carries the duration."""
        started = time.monotonic()
        try:
            receipt = await self._send(message)
        except DeliveryError as exc:
            exc.duration_ms = round((time.monotonic() - started) * 1000)
            raise
        return msgspec.structs.replace(
            receipt, duration_ms=round((time.monotonic() - started) * 1000)
        )

    def _signed_headers(self, message: OutgoingMessage, body: bytes) -> tuple[str, dict[str, str]]:
        """The URL to POST to and the request's headers, signed with every secret of the
        message's target (space-separated signatures during a rotation's overlap)."""
        target = message.webhook
        # A target's own headers first: the protocol's below always win.
        headers = dict(target.headers) if target is not None else {}
        message_id = message.idempotency_key
        timestamp = int(time.time())
        headers["content-type"] = "application/json"
        headers["webhook-id"] = message_id
        headers["webhook-timestamp"] = str(timestamp)
        keys = target.secrets if target is not None else (self._secret,) if self._secret else ()
        if keys:
            headers["webhook-signature"] = " ".join(
                sign(key, message_id, timestamp, body) for key in keys
            )
        return (target.url if target is not None else message.recipient), headers

    async def _send(self, message: OutgoingMessage) -> DeliveryReceipt:
        body = webhook_body(message)
        url, headers = self._signed_headers(message, body)
        try:
            # One deadline for the whole request: a receiver that trickles its answer a byte
            # at a time must not hold this worker slot for ever.
            async with self._in_flight, asyncio.timeout(self._timeout_seconds):
                status, retry_after, answer = await self._post(url, body, headers)
        except BlockedAddressError as exc:
            raise DeliveryError(
                f"refused to connect: {exc} (NOTIFIER_WEBHOOK_ALLOWED_NETWORKS can allow it)",
                retryable=False,
            ) from exc
        except TimeoutError as exc:
            raise DeliveryError(
                f"timed out: no complete answer within {self._timeout_seconds:g}s", retryable=True
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise DeliveryError(f"invalid URL: {exc}", retryable=False) from exc
        except aiohttp.ClientResponseError as exc:
            # An answer aiohttp could not parse, or whose head is over the bounds; its text
            # names the limit (its str() would add the URL, which may carry a token).
            raise DeliveryError(f"invalid answer: {exc.message}", retryable=True) from exc
        except aiohttp.ClientError as exc:
            raise DeliveryError(
                f"request failed: {type(exc).__name__}: {exc}", retryable=True
            ) from exc
        return classify_response(status, retry_after, answer)

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str | None, bytes]:
        """POST ``body``; the answer's status, ``Retry-After`` and first
        :data:`~notifier.channels.base.MAX_ANSWER_BYTES` bytes.

        aiohttp connects to an address literal without asking the resolver, so a literal is
        vetted here. The URL is parsed once, by httpx as :meth:`validate_recipient` parsed
        it, and aiohttp is handed that parse's normalized form (ASCII, IDNA-encoded,
        percent-encoded), which it reads as the same host and port: the host vetted is the
        host connected to. The request is a CLIENT span carrying the trace context to the
        receiver when tracing is on (off, both would be empty).
        """
        target = self._target(url)
        if target.refused is not None:
            raise BlockedAddressError(target.refused)
        if not tracing_enabled():
            # A no-op span and an empty inject cost a tenth of a send's CPU.
            return await self._exchange(target, body, headers, None)
        attributes: dict[str, AttributeValue] = {
            "http.request.method": "POST",
            "url.full": target.redacted,
            "server.address": target.host,
            "server.port": target.port,
        }
        with client_span("POST", attributes=attributes) as span:
            propagate.inject(headers)
            return await self._exchange(target, body, headers, span)

    async def _exchange(
        self, target: ParsedTarget, body: bytes, headers: dict[str, str], span: Span | None
    ) -> tuple[int, str | None, bytes]:
        """The POST itself; the answer's status goes on ``span`` as soon as it is known."""
        async with self._client().post(
            target.url, data=body, headers=headers, allow_redirects=False
        ) as response:
            if span is not None:
                span.set_attribute("http.response.status_code", response.status)
            answer = await read_at_most(response, MAX_ANSWER_BYTES)
            return response.status, response.headers.get("retry-after"), answer

    def _target(self, url: str) -> ParsedTarget:
        """``url`` parsed for :meth:`_post` (raises httpx's error for one that does not
        parse), from the kept parses when it was sent to before."""
        found = self._targets.get(url)
        if found is None:
            parsed = httpx.URL(url)
            found = ParsedTarget(
                url=str(parsed),
                host=parsed.host,
                refused=self._refusal(parsed.host),
                port=port_of(parsed) or 0,
                redacted=redacted_url(url),
            )
            if len(self._targets) >= PARSED_URLS_KEPT:
                self._targets.clear()
            self._targets[url] = found
        return found

    def _refusal(self, host: str) -> str | None:
        """Why the address ``host`` spells may not be reached, if it spells one: aiohttp
        connects to an address literal without asking the resolver. Checked once per URL
        kept, as the answer only depends on the address and the allowed networks."""
        address = numeric_host(host)
        if address is None:
            return None
        try:
            check_addresses(host, [address], self._allowed_networks)
        except BlockedAddressError as exc:
            return str(exc)
        return None

    async def aclose(self) -> None:
        """Close the HTTP client's connections."""
        if self._session is not None:
            await self._session.close()


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The first ``limit`` bytes of the answer's body. If more follows, the connection is
    closed rather than drained: a receiver answering without end costs ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    if not response.content.at_eof():
        response.close()
    return b"".join(chunks)


def classify_response(status: int, retry_after: str | None, answer: bytes = b"") -> DeliveryReceipt:
    """Map an HTTP status to success, or raise a retryable or permanent DeliveryError whose
    message quotes the start of the answer's body, if any."""
    head = answer[:ANSWER_LOG_BYTES]
    if 200 <= status < 300:
        return DeliveryReceipt(status_code=status, answer=head)
    said = f": {excerpt}" if (excerpt := answer_excerpt(answer)) else ""
    if status == 410:
        raise DeliveryError(
            f"receiver answered 410 Gone{said}", retryable=False, status_code=status, answer=head
        )
    if status >= 500 or status in RETRYABLE_CLIENT_STATUSES:
        wait = parse_retry_after(retry_after) if status in THROTTLING_STATUSES else None
        raise DeliveryError(
            f"receiver answered {status}{said}",
            retryable=True,
            status_code=status,
            retry_after_seconds=wait,
            answer=head,
        )
    raise DeliveryError(
        f"receiver answered {status}{said}", retryable=False, status_code=status, answer=head
    )
