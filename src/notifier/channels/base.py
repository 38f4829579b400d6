"""The small interface every channel implements, and the outcomes it reports."""

from __future__ import annotations

import dataclasses
import datetime
import re
import uuid
from typing import Any, Protocol

import msgspec

# A receiver's answer (webhook or SMS provider) is read this far and no further: enough for
# any status document or error message, so a receiver answering gigabytes costs a worker no
# more memory than this. The rest is never read: the connection is closed instead.
MAX_ANSWER_BYTES = 64 * 1024
# Characters of an answer kept in an error message, which the attempt records.
ANSWER_EXCERPT_CHARS = 200
_UNPRINTABLE = re.compile(r"[\x00-\x20\x7f-\x9f]+")
# Bytes of a webhook answer kept with its attempt, for the endpoint's attempt log.
ANSWER_LOG_BYTES = 1024


def answer_excerpt(body: bytes) -> str:
    """The start of a receiver's answer, fit for an error message: decoded leniently, with
    control characters and whitespace runs folded to one space, at most
    :data:`ANSWER_EXCERPT_CHARS` characters (ending in "..." when cut)."""
    # Four bytes per character at most (UTF-8): the excerpt never decodes the whole answer.
    head = body[: ANSWER_EXCERPT_CHARS * 4]
    text = _UNPRINTABLE.sub(" ", head.decode(errors="replace")).strip()
    if len(text) > ANSWER_EXCERPT_CHARS or (len(head) < len(body) and text):
        return text[: ANSWER_EXCERPT_CHARS - 3].rstrip() + "..."
    return text


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookTarget:
    """Where and how one webhook goes: resolved per notification at delivery
    (:func:`notifier.endpoints.delivery.route_webhooks`) from its endpoint or its tenant.

    ``secrets`` are the raw keys to sign with: one, or two during a rotation's overlap
    (each gives a signature). They never appear in a repr, so never in a log or trace.
    """

    url: str
    secrets: tuple[bytes, ...] = dataclasses.field(repr=False)
    headers: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)
    endpoint_id: uuid.UUID | None = None


class OutgoingMessage(msgspec.Struct, frozen=True, kw_only=True):
    """What a channel needs to deliver one notification, free of SQL and HTTP."""

    notification_id: uuid.UUID
    notification_type: str
    recipient: str
    attempt: int
    event_id: uuid.UUID | None = None
    entity_id: str | None = None
    target_date: datetime.datetime | None = None
    template: str | None = None
    context: dict[str, Any] = msgspec.field(default_factory=dict)
    # Signed one-click unsubscribe link (notifier.preferences.links); None when links are off.
    unsubscribe_url: str | None = None
    # The rendered template (see notifier.templates): email uses all three, SMS the text.
    subject: str = ""
    text: str = ""
    html: str | None = None
    # Webhooks only: the URL, signing secrets and headers (None: unsigned, to recipient).
    webhook: WebhookTarget | None = None

    @property
    def idempotency_key(self) -> str:
        """The same on every attempt, so receivers can drop duplicates."""
        return f"msg_{self.notification_id.hex}"


class DeliveryReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """A successful send."""

    status_code: int | None = None
    detail: str | None = None
    # How long the request took, and the start of the answer (webhooks; for attempt logs).
    duration_ms: int | None = None
    answer: bytes = b""


class DeliveryError(Exception):
    """A failed send. ``retryable`` decides between a retry and a permanent failure."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status_code: int | None = None,
        retry_after_seconds: float | None = None,
        answer: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code
        self.retry_after_seconds = retry_after_seconds
        # The start of the receiver's answer, if any; the channel sets duration_ms.
        self.answer = answer
        self.duration_ms: int | None = None


class Channel(Protocol):
    """A way to reach someone. Implementations raise :class:`DeliveryError` on failure."""

    name: str
    # Whether the message's HTML part is sent (email); other channels' drafts render
    # without it, which saves the sandbox its work and a broken HTML part fails nothing.
    sends_html: bool

    def validate_recipient(self, recipient: str) -> str | None:
        """Return why ``recipient`` can never work on this channel, or None if it may."""

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        """Deliver ``message`` once."""

    async def aclose(self) -> None:
        """Release connections and clients."""
