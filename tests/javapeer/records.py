"""Record helpers of the Java-protocol peer: instants, JSON, secrets, signing, policies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = "0.1.25.24"
USER_AGENT = f"cycles-server-events/{VERSION}"
SYSTEM_TENANT = "__system__"
STATUSES = ("PENDING", "RETRYING", "SUCCESS", "FAILED")
TENANT_TYPE_PREFIXES = ("budget.", "reservation.", "tenant.")
TENANT_CATEGORIES = ("budget", "reservation", "tenant")
BOUNDARY_MESSAGE = (
    "Delivery blocked by webhook ownership boundary (#209): "
    "concrete-tenant subscription cannot receive admin-only event"
)
DEFAULT_RETRY = {
    "max_retries": 5,
    "initial_delay_ms": 1000,
    "backoff_multiplier": 2.0,
    "max_delay_ms": 60000,
}
DEFAULT_DISABLE_AFTER = 10
HOUR_MS = 3_600_000
_INSTANT = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
)
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX2 = re.compile(r"^[0-9a-f]{2}$")


class CorruptRecord(ValueError):
    """A delivery record this peer cannot use."""


def wall_ms(skew_ms: int = 0) -> int:
    """The peer's client clock in epoch milliseconds (optionally skewed)."""
    return int(time.time() * 1000) + skew_ms


def format_instant(ms: int) -> str:
    """Epoch ms as Java's Instant.toString() writes it."""
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac = ms % 1000
    return f"{base}.{frac:03d}Z" if frac else f"{base}Z"


def parse_instant_ms(value: Any) -> int | None:
    """An ISO-8601 instant as epoch ms; None when it does not parse."""
    if not isinstance(value, str):
        return None
    m = _INSTANT.match(value)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:
        return None
    offset_s = 0
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset_s = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    seconds = int(dt.replace(tzinfo=UTC).timestamp()) - offset_s
    millis = int((frac or "0").ljust(9, "0")[:3])
    return seconds * 1000 + millis


def text(value: object) -> str | None:
    """A Redis reply as a string (None stays None)."""
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def texts(values: object) -> list[str]:
    """A Redis list reply as strings."""
    assert isinstance(values, list | tuple)
    return [str(text(v)) for v in values]


def dumps(doc: Any) -> str:
    """Compact JSON, key order as given, UTF-8 characters kept (like Jackson)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def load_object(raw: str | None) -> dict[str, Any] | None:
    """A JSON object (order kept), or None when absent, unparseable or not an object."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def check_delivery(raw: str) -> dict[str, Any]:
    """The delivery record, or CorruptRecord when a value cannot be used."""
    doc = load_object(raw)
    if doc is None:
        raise CorruptRecord("not a JSON object")
    if doc.get("status") not in STATUSES:
        raise CorruptRecord("bad status")
    attempts = doc.get("attempts", 0)
    if isinstance(attempts, float) and attempts.is_integer():
        attempts = int(attempts)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise CorruptRecord("bad attempts")
    if "attempts" in doc:
        doc["attempts"] = attempts
    for name in ("subscription_id", "event_id"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise CorruptRecord(f"bad {name}")
    for name in ("attempted_at", "next_retry_at", "completed_at"):
        if doc.get(name) is not None and parse_instant_ms(doc[name]) is None:
            raise CorruptRecord(f"bad {name}")
    return doc


def load_key(key_b64: str | None) -> bytes | None:
    """The AES-256 key from Base64; None when empty; ValueError unless 32 bytes."""
    if not key_b64:
        return None
    key = base64.b64decode(key_b64, validate=True)
    if len(key) != 32:
        raise ValueError("WEBHOOK_SECRET_ENCRYPTION_KEY must decode to exactly 32 bytes")
    return key


def decrypt_secret(stored: str | None, key: bytes | None) -> str | None:
    """The usable signing secret, or None (absent, empty, no key, or undecryptable)."""
    if not stored:
        return None
    if not stored.startswith("enc:"):
        return stored
    if key is None:
        return None
    try:
        blob = base64.b64decode(stored[4:], validate=True)
        if len(blob) < 12 + 16:
            return None
        plain = AESGCM(key).decrypt(blob[:12], blob[12:], None)
        return plain.decode("utf-8") or None
    except Exception:
        return None


def encrypt_secret(secret: str, key: bytes, iv: bytes) -> str:
    """The admin's `enc:` form of a secret (for tests of the peer)."""
    return "enc:" + base64.b64encode(iv + AESGCM(key).encrypt(iv, secret.encode(), None)).decode()


def sign(body: bytes, secret: str) -> str:
    """The X-Cycles-Signature value of a body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def derive_event_id(task_id: str) -> str:
    """A meta-event id derived from its outbox task id, as Java derives it."""
    return "evt_" + hashlib.sha256(task_id.encode("utf-8")).hexdigest()[:16]


def valid_trace_id(value: Any) -> bool:
    """Whether a value is a W3C trace id (32 lower-case hex)."""
    return isinstance(value, str) and _HEX32.match(value) is not None


def trace_flags(delivery: dict[str, Any]) -> str:
    """The traceparent flags: the inbound ones when valid, else 01."""
    flags = delivery.get("trace_flags")
    inbound_ok = delivery.get("traceparent_inbound_valid") is True
    if inbound_ok and isinstance(flags, str) and _HEX2.match(flags):
        return flags
    return "01"


def retry_policy(sub: dict[str, Any]) -> tuple[int, int, float, int]:
    """The subscription's (max_retries, initial_delay_ms, multiplier, max_delay_ms)."""
    given = sub.get("retry_policy")
    given = given if isinstance(given, dict) else {}

    def number(name: str) -> float:
        """One numeric field, or its default."""
        value = given.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return float(DEFAULT_RETRY[name])

    return (
        int(number("max_retries")),
        int(number("initial_delay_ms")),
        number("backoff_multiplier"),
        int(number("max_delay_ms")),
    )


def backoff_ms(attempts: int, initial: int, multiplier: float, maximum: int) -> int:
    """min(initial x multiplier^(attempts-1), max) in whole milliseconds."""
    return int(min(initial * multiplier ** (attempts - 1), maximum))


def disable_after(sub: dict[str, Any]) -> int:
    """The subscription's disable_after_failures (default 10)."""
    value = sub.get("disable_after_failures")
    if isinstance(value, bool) or not isinstance(value, int):
        return DEFAULT_DISABLE_AFTER
    return value


def is_system_owned(sub: dict[str, Any]) -> bool:
    """Whether the subscription is system-owned (tenant absent, null or __system__)."""
    return sub.get("tenant_id") is None or sub.get("tenant_id") == SYSTEM_TENANT


def boundary_allows(sub: dict[str, Any], event: dict[str, Any]) -> bool:
    """The ownership boundary of contract section 3, step 6."""
    if is_system_owned(sub):
        return True
    etype, category = event.get("event_type"), event.get("category")
    if etype is None and category is None:
        return False
    if etype is not None and not (
        isinstance(etype, str) and etype.startswith(TENANT_TYPE_PREFIXES)
    ):
        return False
    return category is None or category in TENANT_CATEGORIES


def stale_message(age_ms: int, max_age_ms: int) -> str:
    """The FAILED error_message of the stale rule."""
    return f"Delivery expired: {age_ms // HOUR_MS}h old (max {max_age_ms // HOUR_MS}h)"
