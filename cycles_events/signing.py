"""The outbound request's signature and headers (contract section 4)."""

from __future__ import annotations

import hmac
import random
import re
from collections.abc import Callable, Mapping
from typing import Any

from cycles_events.models import is_trace_flags, is_trace_id

SIGNATURE_PREFIX = "sha256="

# Headers a subscription's custom headers can never set: ours, and those that would change how
# the request is framed or routed.
_RESERVED = frozenset(
    {
        "content-type",
        "user-agent",
        "x-cycles-event-id",
        "x-cycles-event-type",
        "x-cycles-trace-id",
        "traceparent",
        "x-request-id",
        "x-cycles-signature",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "expect",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
    }
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def sign(secret: str, body: bytes) -> str:
    """`sha256=` + hex HMAC-SHA256 of the body, keyed by the secret's UTF-8 bytes."""
    return SIGNATURE_PREFIX + hmac.digest(secret.encode("utf-8"), body, "sha256").hex()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """Constant-time check of an X-Cycles-Signature value."""
    return hmac.compare_digest(sign(secret, body), signature.strip())


def random_hex(nbytes: int) -> str:
    """Lower-case hex of `nbytes` random bytes, for trace and span ids (not secrets)."""
    return f"{random.getrandbits(nbytes * 8):0{nbytes * 2}x}"


def custom_headers(raw: Any) -> dict[str, str]:
    """The subscription's custom headers that may be sent: valid, and never one of ours."""
    if not raw or not isinstance(raw, Mapping):
        return {}
    out: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            continue
        if name.lower() in _RESERVED:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            continue
        text = str(value)
        if _BAD_VALUE.search(text):
            continue
        out[name] = text
    return out


def _clean(value: Any) -> str:
    """A header value from a record field, with control characters removed."""
    if not isinstance(value, str):
        return ""
    return value if value.isprintable() else _BAD_VALUE.sub("", value)


def build_headers(
    *,
    event: Mapping[str, Any],
    delivery: Mapping[str, Any],
    subscription: Mapping[str, Any],
    body: bytes,
    secret: str | None,
    user_agent: str,
    rand_hex: Callable[[int], str] = random_hex,
) -> dict[str, str]:
    """Every header of the outbound POST; ours always win over custom ones."""
    headers = custom_headers(subscription.get("headers"))
    given = event.get("trace_id")
    trace_id: str = given if is_trace_id(given) else rand_hex(16)
    flags = delivery.get("trace_flags")
    if not (delivery.get("traceparent_inbound_valid") is True and is_trace_flags(flags)):
        flags = "01"
    headers["Content-Type"] = "application/json"
    headers["User-Agent"] = user_agent
    headers["X-Cycles-Event-Id"] = _clean(event.get("event_id"))
    headers["X-Cycles-Event-Type"] = _clean(event.get("event_type"))
    headers["X-Cycles-Trace-Id"] = trace_id
    headers["traceparent"] = f"00-{trace_id}-{rand_hex(8)}-{flags}"
    request_id = event.get("request_id")
    if (
        isinstance(request_id, str)
        and request_id.strip()
        and (request_id.isprintable() or not _BAD_VALUE.search(request_id))
    ):
        headers["X-Request-Id"] = request_id
    if secret is not None:
        headers["X-Cycles-Signature"] = sign(secret, body)
    return headers
