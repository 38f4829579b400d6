"""Secrets at rest: webhook signing secrets are stored as Fernet tokens, never in the clear.

The keys come from ``NOTIFIER_SECRETS_KEYS``: comma-separated Fernet keys (32 url-safe
base64 bytes each, ``notifier secrets generate-key`` prints one). The first encrypts; every
one decrypts, which is how a key is rotated: put the new key first, keep the old one after
it, run ``notifier secrets reencrypt``, then drop the old key (docs/security.md).
"""

from __future__ import annotations

import base64
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from notifier.settings import ENV_PREFIX, Settings, SettingsError

KEYS_VARIABLE = f"{ENV_PREFIX}SECRETS_KEYS"
SIGNING_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
SIGNING_SECRET_BYTES = 32


class UndecryptableSecret(Exception):
    """A stored secret no configured key decrypts (a key was dropped too early)."""


def parse_keys(text: str) -> list[Fernet]:
    """The Fernet keys of ``NOTIFIER_SECRETS_KEYS``; a :class:`SettingsError` naming the
    position of one that is not a key (never its value)."""
    keys = []
    for position, entry in enumerate(part.strip() for part in text.split(",")):
        if not entry:
            continue
        try:
            keys.append(Fernet(entry.encode()))
        except (ValueError, TypeError):
            raise SettingsError(
                f"{KEYS_VARIABLE}: entry {position + 1} is not a Fernet key (32 url-safe "
                "base64-encoded bytes; `notifier secrets generate-key` prints one)"
            ) from None
    if not keys:
        raise SettingsError(f"{KEYS_VARIABLE} holds no key")
    return keys


def generate_key() -> str:
    """A new Fernet key, as ``NOTIFIER_SECRETS_KEYS`` takes it."""
    return Fernet.generate_key().decode()


def new_signing_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and the base64 of 32 random bytes."""
    return (
        SIGNING_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SIGNING_SECRET_BYTES)).decode()
    )


class SecretBox:
    """Encrypts and decrypts stored secrets with the configured keys."""

    def __init__(self, keys: list[Fernet]) -> None:
        self._fernet = MultiFernet(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """The box of ``NOTIFIER_SECRETS_KEYS``; a :class:`SettingsError` if it is unset.

        There is no fallback key: secrets encrypted with a key nobody kept are lost, and
        a key derived from something else would be as good as none. ``notifier dev``
        generates and keeps one of its own (``.notifier-dev/secrets-key``).
        """
        if not settings.secrets_keys:
            raise SettingsError(
                f"{KEYS_VARIABLE} is not set: webhook signing secrets are stored encrypted "
                "with it (`notifier secrets generate-key` prints a key; docs/security.md)"
            )
        return cls(parse_keys(settings.secrets_keys))

    def encrypt(self, plaintext: str) -> str:
        """A Fernet token of ``plaintext`` under the first key."""
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        """The plaintext of a token made by any configured key."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise UndecryptableSecret(
                f"a stored secret cannot be decrypted with any key of {KEYS_VARIABLE}"
            ) from None

    def reencrypt(self, token: str) -> str:
        """``token`` encrypted again under the first key (key rotation)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise UndecryptableSecret(
                f"a stored secret cannot be decrypted with any key of {KEYS_VARIABLE}"
            ) from None

    def __repr__(self) -> str:
        return "SecretBox(***)"
