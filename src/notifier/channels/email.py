"""The email channel: one multipart (text + HTML) message per notification over SMTP.

Every attempt of one notification carries the same ``Message-ID``
(``<msg_<notification id>@<sender's domain>>``) and ``X-Notifier-Notification-Id``, so
mail systems and people can recognise a resend after a crash or an ambiguous failure.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP

import aiosmtplib

from notifier.channels.base import DeliveryError, DeliveryReceipt, OutgoingMessage
from notifier.preferences.links import list_unsubscribe_headers
from notifier.settings import Settings, SettingsError

TLS_MODES = frozenset({"none", "starttls", "tls"})
NOTIFICATION_ID_HEADER = "X-Notifier-Notification-Id"
# One address, no display name, no whitespace or header-breaking characters.
_ADDRESS = re.compile(
    r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)
MAX_ADDRESS_LENGTH = 254
# SMTP connections one process holds at once: a batch of deliveries sends concurrently, and
# relays limit connections per client (providers commonly to 10-20).
MAX_CONNECTIONS = 10


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a plain ``local@domain`` address, or None."""
    if len(address) > MAX_ADDRESS_LENGTH:
        return f"must be at most {MAX_ADDRESS_LENGTH} characters"
    if not _ADDRESS.match(address):
        return "must be an email address such as ada@example.com"
    return None


def message_id(message: OutgoingMessage, domain: str) -> str:
    """The ``Message-ID``: the same on every attempt of one notification."""
    return f"<{message.idempotency_key}@{domain}>"


def build_email(message: OutgoingMessage, *, sender: str, reply_to: str | None) -> EmailMessage:
    """The MIME message: text/plain, plus text/html as an alternative when rendered."""
    mail = EmailMessage(policy=SMTP)
    mail["From"] = sender
    mail["To"] = message.recipient
    if reply_to:
        mail["Reply-To"] = reply_to
    mail["Subject"] = message.subject or message.notification_type
    mail["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    mail["Message-ID"] = message_id(message, _domain(sender))
    mail[NOTIFICATION_ID_HEADER] = str(message.notification_id)
    # Bulk-sending etiquette (RFC 3834): tell auto-responders not to answer.
    mail["Auto-Submitted"] = "auto-generated"
    # One-click unsubscribe (RFC 2369, RFC 8058) when links are configured.
    for name, value in list_unsubscribe_headers(message.unsubscribe_url).items():
        mail[name] = value
    mail.set_content(message.text or "", subtype="plain", charset="utf-8")
    if message.html:
        mail.add_alternative(message.html, subtype="html", charset="utf-8")
    return mail


def _domain(sender: str) -> str:
    """The domain of the sender's address (``Ada <ada@example.com>`` -> ``example.com``)."""
    _, address = email.utils.parseaddr(sender)
    return address.rpartition("@")[2] or "localhost"


class EmailChannel:
    """Sends through one SMTP server; a new connection per message."""

    name = "email"
    sends_html = True

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: str,
        username: str | None,
        password: str | None,
        timeout_seconds: float,
        sender: str,
        reply_to: str | None,
        ca_file: str | None = None,
    ) -> None:
        if tls not in TLS_MODES:
            raise SettingsError(f"NOTIFIER_SMTP_TLS={tls!r} must be one of {sorted(TLS_MODES)}")
        try:
            Address(addr_spec=email.utils.parseaddr(sender)[1])
        except (ValueError, IndexError):
            raise SettingsError(f"NOTIFIER_EMAIL_FROM={sender!r} is not an address") from None
        if (username is None) != (password is None):
            raise SettingsError("set both NOTIFIER_SMTP_USERNAME and NOTIFIER_SMTP_PASSWORD")
        self._host = host
        self._port = port
        self._tls = tls
        self._username = username
        self._password = password
        self._timeout = timeout_seconds
        self._sender = sender
        self._reply_to = reply_to
        self._ca_file = ca_file
        self._connections = asyncio.Semaphore(MAX_CONNECTIONS)

    def validate_recipient(self, recipient: str) -> str | None:
        """The recipient must be one plain email address."""
        return address_problem(recipient)

    async def send(self, message: OutgoingMessage) -> DeliveryReceipt:
        """Submit once and classify the server's answer (4xx retry, 5xx permanent)."""
        mail = build_email(message, sender=self._sender, reply_to=self._reply_to)
        try:
            async with self._connections:
                _, reply = await aiosmtplib.send(
                    mail,
                    hostname=self._host,
                    port=self._port,
                    username=self._username,
                    password=self._password,
                    use_tls=self._tls == "tls",
                    # True: refuse to send in clear text when the server offers no STARTTLS.
                    start_tls=self._tls == "starttls",
                    timeout=self._timeout,
                    cert_bundle=self._ca_file,
                )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusal = exc.recipients[0]
            raise smtp_error(refusal.code, refusal.message) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise smtp_error(exc.code, exc.message) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Timeouts, refused or dropped connections, TLS handshake failures.
            raise DeliveryError(f"SMTP connection failed: {exc!r}", retryable=True) from exc
        return DeliveryReceipt(status_code=250, detail=reply.strip()[:500] or None)

    async def aclose(self) -> None:
        """Nothing held between messages."""


def smtp_error(code: int, text: str) -> DeliveryError:
    """A reply code as a failure: 4xx is transient (retry), anything else permanent."""
    retryable = 400 <= code < 500 or code < 0  # aiosmtplib uses -1 for "no reply code"
    return DeliveryError(
        f"SMTP server answered {code} {text.strip()}"[:1000],
        retryable=retryable,
        status_code=code if code > 0 else None,
    )


def create_email_channel(settings: Settings) -> EmailChannel | None:
    """The email channel ``settings`` describe, or None when ``NOTIFIER_SMTP_HOST`` is unset."""
    if settings.smtp_host is None:
        return None
    return EmailChannel(
        host=settings.smtp_host,
        port=settings.smtp_port,
        tls=settings.smtp_tls,
        username=settings.smtp_username,
        password=settings.smtp_password,
        timeout_seconds=settings.smtp_timeout_seconds,
        sender=settings.email_from,
        reply_to=settings.email_reply_to,
        ca_file=settings.smtp_ca_file,
    )
