"""Standard Webhooks signing (https://www.standardwebhooks.com/), sent beside X-Cycles-Signature.

Headers (contract section 9; never instead of `X-Cycles-Signature`, which is unchanged):

- `webhook-id`: the event id, so it is the same on every retry of a delivery and receivers can
  deduplicate on it (`X-Cycles-Event-Id`, without control characters or edge spaces);
- `webhook-timestamp`: integer Unix seconds of this attempt (receivers reject it when more than
  their tolerance, five minutes in the reference libraries, away from their clock);
- `webhook-signature`: space-separated `v1,<standard padded base64 of HMAC-SHA256(key,
  "{webhook-id}.{webhook-timestamp}.{body}")>`, one per secret in force.

Key bytes. The Standard Webhooks libraries take `whsec_` + *standard* base64 and use the decoded
bytes as the HMAC key. The admin generates `whsec_` + *unpadded base64url* of 32 random bytes,
which those libraries do not decode as such (their lenient decoder drops `-` and `_`, so about
three secrets in four come out as other bytes). So the key is:

- the 32 decoded bytes, when the secret is exactly `whsec_` + the canonical unpadded base64url
  encoding of 32 bytes (43 characters of `A-Z a-z 0-9 - _`, whose re-encoding is the same text);
- otherwise (a secret set by hand, any other length or alphabet) the secret's UTF-8 bytes, the
  whole string with any `whsec_` prefix, the key `X-Cycles-Signature` already uses.

`receiver_secret` gives the `whsec_` + standard padded base64 of those bytes: the value a receiver
configures in a Standard Webhooks library (`standardwebhooks.Webhook(value)`, `svix` likewise).
For an admin secret without `-` or `_` it is the admin's text plus one `=`.

Opt-in (nothing changes unless one is set):

- setting `WEBHOOK_STANDARD_HEADERS_ENABLED` (default false): every subscription;
- subscription metadata key `standard_webhooks` (true/false): this subscription, whatever the
  setting says (see `cycles_events.optin`).

Rotation. While a subscription's secret is being rotated, its previous secret is kept under
`webhook:secret:{id}:previous`, in the same format as `webhook:secret:{id}` (plaintext or `enc:`),
with the grace period as the key's TTL (`SET webhook:secret:{id}:previous <old> EX <grace s>`,
written by whoever rotates the secret). While it exists, `webhook-signature` carries one
signature per secret (current first) so that a receiver verifies with either. An absent,
undecryptable or equal previous secret adds nothing; it never holds or fails a delivery.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cycles_events.optin import flag, metadata_of

SETTING = "WEBHOOK_STANDARD_HEADERS_ENABLED"
METADATA_KEY = "standard_webhooks"
SECRET_PREFIX = "whsec_"
VERSION = "v1"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
# Custom subscription headers with these names (any case) must be dropped when the headers are on.
RESERVED = frozenset({ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER})
PREVIOUS_SECRET_SUFFIX = ":previous"

_ADMIN_SECRET = re.compile(r"whsec_([A-Za-z0-9_-]{43})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def previous_secret_key(subscription_id: str) -> str:
    """The Redis key of a subscription's previous secret during a rotation (TTL = grace)."""
    return f"webhook:secret:{subscription_id}{PREVIOUS_SECRET_SUFFIX}"


def enabled_for(subscription: Mapping[str, Any], setting: bool) -> bool:
    """Whether this subscription gets the headers: its metadata key, else the setting."""
    return flag(metadata_of(subscription), METADATA_KEY, setting)


def key_bytes(secret: str) -> bytes:
    """The HMAC key: an admin secret's 32 decoded bytes, any other secret's UTF-8 bytes."""
    match = _ADMIN_SECRET.fullmatch(secret)
    if match is not None:
        text = match.group(1)
        raw = base64.urlsafe_b64decode(text + "=")
        # canonical only: the two spare bits of the last character are zero
        if len(raw) == 32 and base64.urlsafe_b64encode(raw).decode("ascii")[:43] == text:
            return raw
    return secret.encode("utf-8")


def receiver_secret(secret: str) -> str:
    """The `whsec_` + standard base64 form a receiver configures in a Standard Webhooks library."""
    key = key_bytes(secret)
    if not key:
        raise ValueError("an empty secret has no Standard Webhooks form")
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def signature(key: bytes, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """One `v1,<base64>` signature of `{id}.{timestamp}.{body}`."""
    signed = f"{msg_id}.{timestamp_s}.".encode() + body
    return f"{VERSION},{base64.b64encode(hmac.digest(key, signed, 'sha256')).decode('ascii')}"


def secrets_in_force(current: str, previous: str | None) -> list[str]:
    """The secrets to sign with: the current one, then a different, non-empty previous one."""
    if previous and key_bytes(previous) != key_bytes(current):
        return [current, previous]
    return [current]


def headers(event_id: str, timestamp_s: int, body: bytes, secrets: Sequence[str]) -> dict[str, str]:
    """The three Standard Webhooks headers, one signature per distinct non-empty secret."""
    msg_id = _CONTROL.sub("", event_id).strip()
    if not msg_id:
        raise ValueError("webhook-id needs a non-blank event id")
    if isinstance(timestamp_s, bool) or not isinstance(timestamp_s, int) or timestamp_s < 0:
        raise ValueError("webhook-timestamp must be a non-negative whole number of seconds")
    keys = list(dict.fromkeys(k for k in map(key_bytes, secrets) if k))
    if not keys:
        raise ValueError("no non-empty secret to sign with")
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp_s),
        SIGNATURE_HEADER: " ".join(signature(k, msg_id, timestamp_s, body) for k in keys),
    }
