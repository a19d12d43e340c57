"""The signing-secret commands: `keygen`, `encrypt-secret` and `verify`."""

from __future__ import annotations

import argparse
import getpass
import sys

from cycles_events.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    emit,
    fail,
    load_settings,
    strip_newline,
)


def cmd_keygen(args: argparse.Namespace) -> int:
    """Print a new WEBHOOK_SECRET_ENCRYPTION_KEY."""
    from cycles_events.crypto import new_key

    key = new_key()
    emit(args, {"WEBHOOK_SECRET_ENCRYPTION_KEY": key}, key)
    return EXIT_OK


def cmd_encrypt_secret(args: argparse.Namespace) -> int:
    """Encrypt a signing secret read on stdin with the configured key."""
    from cycles_events.crypto import encrypt_secret

    key = load_settings().encryption_key
    if key is None:
        return fail("WEBHOOK_SECRET_ENCRYPTION_KEY is not set (generate one: cycles-events keygen)")
    if sys.stdin.isatty():
        secret = getpass.getpass("signing secret: ")
    else:
        secret = strip_newline(sys.stdin.read())
    if not secret:
        return fail("no secret on stdin")
    stored = encrypt_secret(secret, key)
    emit(args, {"stored_secret": stored}, stored)
    return EXIT_OK


def cmd_receiver_secret(args: argparse.Namespace) -> int:
    """Print the whsec_ form a receiver configures to verify Standard Webhooks signatures."""
    from cycles_events.crypto import PREFIX, SecretError, decrypt_secret
    from cycles_events.stdwebhooks import receiver_secret

    if sys.stdin.isatty():
        secret = getpass.getpass("signing secret (as stored, plaintext or enc:): ")
    else:
        secret = strip_newline(sys.stdin.read())
    if not secret:
        return fail("no secret on stdin")
    if secret.startswith(PREFIX):
        try:
            secret = decrypt_secret(secret, load_settings().encryption_key)
        except SecretError as exc:
            return fail(str(exc))
    form = receiver_secret(secret)
    emit(args, {"standard_webhooks_secret": form}, form)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """Check an X-Cycles-Signature against a body read on stdin."""
    from cycles_events.crypto import PREFIX, SecretError, decrypt_secret
    from cycles_events.signing import verify

    secret: str = args.secret_file
    if secret.startswith(PREFIX):
        try:
            secret = decrypt_secret(secret, load_settings().encryption_key)
        except SecretError as exc:
            return fail(str(exc))
    body = sys.stdin.buffer.read()
    valid = verify(secret, body, args.signature)
    emit(
        args,
        {"valid": valid, "body_bytes": len(body)},
        "signature valid" if valid else "signature INVALID",
    )
    return EXIT_OK if valid else EXIT_FAILED
