"""AES-256-GCM signing secrets at rest: `enc:` + Base64(IV(12) || ciphertext || tag(16))."""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "enc:"
IV_LEN = 12
TAG_LEN = 16


class SecretError(Exception):
    """A stored secret cannot be turned into a signing key; the message holds no secret."""


def decrypt_secret(stored: str, key: bytes | None) -> str:
    """Return the signing secret from its stored form (plaintext is returned as is)."""
    if not stored.startswith(PREFIX):
        return stored
    if key is None:
        raise SecretError("secret is encrypted but WEBHOOK_SECRET_ENCRYPTION_KEY is not set")
    try:
        blob = base64.b64decode(stored[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise SecretError("encrypted secret is not valid Base64") from None
    if len(blob) < IV_LEN + TAG_LEN:
        raise SecretError("encrypted secret is too short")
    try:
        plain = AESGCM(key).decrypt(blob[:IV_LEN], blob[IV_LEN:], None)
    except InvalidTag:
        raise SecretError("secret decryption failed (wrong key or tampered ciphertext)") from None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError("decrypted secret is not UTF-8") from None


def encrypt_secret(plain: str, key: bytes, iv: bytes | None = None) -> str:
    """Encrypt a secret in the admin server's `enc:` layout."""
    nonce = iv if iv is not None else os.urandom(IV_LEN)
    if len(nonce) != IV_LEN:
        raise ValueError("IV must be 12 bytes")
    sealed = AESGCM(key).encrypt(nonce, plain.encode("utf-8"), None)
    return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")


def new_key() -> str:
    """A fresh Base64 AES-256 key for WEBHOOK_SECRET_ENCRYPTION_KEY."""
    return base64.b64encode(os.urandom(32)).decode("ascii")
