"""Signed unsubscribe links, and the email headers that carry them (RFC 2369, RFC 8058).

For the email channel: given the notification being sent,

    url = unsubscribe_url(settings, tenant_id=..., recipient=..., channel="email",
                          notification_type=...)
    headers = list_unsubscribe_headers(url)   # {} when url is None

adds ``List-Unsubscribe: <https://.../unsubscribe/TOKEN>`` and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` to the message, so mail clients offer a
one-click unsubscribe that POSTs to the link. The deliver task hands channels this URL as
``OutgoingMessage.unsubscribe_url`` (templates may show it too). Links exist only when both
``NOTIFIER_UNSUBSCRIBE_SECRET`` and ``NOTIFIER_PUBLIC_BASE_URL`` are set.

A token is ``base64url(JSON [version, tenant, recipient, channel, type])`` + ``.`` +
``base64url(HMAC-SHA256(secret, "notifier-unsubscribe." + first part))``. It does not expire:
an unsubscribe link must keep working as long as the mail that carries it is read. Rotating
the secret invalidates every link already sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import msgspec

from notifier.settings import Settings

TOKEN_VERSION = 1
_CONTEXT = b"notifier-unsubscribe."
ONE_CLICK = "List-Unsubscribe=One-Click"


class InvalidToken(ValueError):
    """The token was not signed with this service's secret, or is malformed."""


class UnsubscribeScope(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """What one unsubscribe link opts a recipient out of."""

    version: int
    tenant_id: str
    recipient: str
    channel: str
    notification_type: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: str) -> bytes:
    return hmac.new(secret.encode(), _CONTEXT + payload.encode(), hashlib.sha256).digest()


def sign_token(
    secret: str, *, tenant_id: str, recipient: str, channel: str, notification_type: str
) -> str:
    """A token that opts ``recipient`` out of ``notification_type`` on ``channel``."""
    scope = UnsubscribeScope(
        version=TOKEN_VERSION,
        tenant_id=tenant_id,
        recipient=recipient,
        channel=channel,
        notification_type=notification_type,
    )
    payload = _b64(msgspec.json.encode(scope))
    return f"{payload}.{_b64(_signature(secret, payload))}"


def verify_token(secret: str, token: str) -> UnsubscribeScope:
    """The scope a token signed with ``secret`` names; :class:`InvalidToken` otherwise."""
    payload, dot, signature = token.partition(".")
    if not dot:
        raise InvalidToken("not an unsubscribe token")
    try:
        given = _unb64(signature)
        raw = _unb64(payload)
    except (binascii.Error, ValueError):
        raise InvalidToken("not an unsubscribe token") from None
    # Compare before decoding anything: a forged payload is never parsed.
    if not hmac.compare_digest(given, _signature(secret, payload)):
        raise InvalidToken("the signature does not match")
    try:
        scope = msgspec.json.decode(raw, type=UnsubscribeScope)
    except msgspec.DecodeError:
        raise InvalidToken("not an unsubscribe token") from None
    if scope.version != TOKEN_VERSION:
        raise InvalidToken(f"unsupported token version {scope.version}")
    return scope


def unsubscribe_url(
    settings: Settings,
    *,
    tenant_id: str,
    recipient: str,
    channel: str,
    notification_type: str,
) -> str | None:
    """The absolute one-click unsubscribe URL for one notification, or None if links are off."""
    if not settings.unsubscribe_secret or not settings.public_base_url:
        return None
    token = sign_token(
        settings.unsubscribe_secret,
        tenant_id=tenant_id,
        recipient=recipient,
        channel=channel,
        notification_type=notification_type,
    )
    return f"{settings.public_base_url.rstrip('/')}/unsubscribe/{token}"


def list_unsubscribe_headers(url: str | None) -> dict[str, str]:
    """``List-Unsubscribe`` and ``List-Unsubscribe-Post`` for ``url``; empty without one."""
    if url is None:
        return {}
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": ONE_CLICK}
