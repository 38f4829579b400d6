"""The API key format: ``ntf_<key id>_<secret>``.

The key id is public (it names the key in ``keys list`` and ``keys revoke``); the secret is
256 random bits, shown once and stored only as its SHA-256. A fast hash is right for a
random secret of that size: no dictionary can shorten the search.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

import msgspec

PREFIX = "ntf"
# 16 hex characters: 64 bits, so ids never collide in practice and never reveal the secret.
_KEY = re.compile(r"^ntf_(?P<id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})$")


class IssuedKey(msgspec.Struct, frozen=True):
    """A key as handed to its owner once: the full token and what is stored of it."""

    key_id: str
    token: str
    secret_sha256: bytes


def issue_key() -> IssuedKey:
    """A fresh random key."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return IssuedKey(
        key_id=key_id, token=f"{PREFIX}_{key_id}_{secret}", secret_sha256=hash_secret(secret)
    )


def hash_secret(secret: str) -> bytes:
    """What the database keeps of a secret."""
    return hashlib.sha256(secret.encode()).digest()


def parse_token(token: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed token, else None."""
    match = _KEY.match(token)
    return (match["id"], match["secret"]) if match else None


def secret_matches(secret: str, stored_sha256: bytes) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_sha256)
