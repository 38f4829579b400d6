"""The log channel: writes the notification to the application log. For development."""

from __future__ import annotations

import logging

from notifier.channels.base import DeliveryReceipt, OutgoingMessage

logger = logging.getLogger("notifier.channels.log")


class LogChannel:
    """Delivers by logging one line; always succeeds."""

    name = "log"
    sends_html = False

    def validate_recipient(self, recipient: str) -> str | None:
        """Any non-empty recipient is fine for a log line, without control characters
        (a newline would let it forge log lines)."""
        if not recipient.strip():
            return "must not be empty"
        return None if recipient.isprintable() else "must not contain control characters"

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        """Log the message with its idempotency key."""
        logger.info(
            "notification %s (%s) to %s, attempt %d: %s",
            message.idempotency_key,
            message.notification_type,
            message.recipient,
            message.attempt,
            message.subject,
        )
        return DeliveryReceipt(detail="logged")

    async def aclose(self) -> None:
        """Nothing to release."""
