"""Record shapes of the contract: parsing, Java-style instants, JSON that keeps unknown fields."""

from __future__ import annotations

import functools
import json
import math
import re
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeGuard

import orjson

JsonObject = dict[str, Any]

ACTIVE_STATUSES = frozenset({"PENDING", "RETRYING"})
SYSTEM_TENANT = "__system__"

EVENT_CATALOG: frozenset[str] = frozenset(
    [
        f"budget.{t}"
        for t in [
            "created",
            "updated",
            "funded",
            "debited",
            "reset",
            "reset_spent",
            "debt_repaid",
            "frozen",
            "unfrozen",
            "closed",
            "closed_via_tenant_cascade",
            "threshold_crossed",
            "exhausted",
            "over_limit_entered",
            "over_limit_exited",
            "debt_incurred",
            "burn_rate_anomaly",
        ]
    ]
    + [
        f"reservation.{t}"
        for t in [
            "denied",
            "denial_rate_spike",
            "expired",
            "expiry_rate_spike",
            "commit_overage",
            "released_via_tenant_cascade",
        ]
    ]
    + [
        f"tenant.{t}"
        for t in ["created", "updated", "suspended", "reactivated", "closed", "settings_changed"]
    ]
    + [
        f"api_key.{t}"
        for t in [
            "created",
            "revoked",
            "revoked_via_tenant_cascade",
            "expired",
            "permissions_changed",
            "auth_failed",
            "auth_failure_rate_spike",
        ]
    ]
    + [f"policy.{t}" for t in ["created", "updated", "deleted"]]
    + [
        f"webhook.{t}"
        for t in [
            "created",
            "updated",
            "paused",
            "resumed",
            "disabled",
            "deleted",
            "disabled_via_tenant_cascade",
        ]
    ]
    + [
        f"system.{t}"
        for t in [
            "store_connection_lost",
            "store_connection_restored",
            "high_latency",
            "webhook_delivery_failed",
            "webhook_test",
        ]
    ]
)
CATEGORIES = frozenset(t.split(".", 1)[0] for t in EVENT_CATALOG) | {"custom"}
REQUIRED_EVENT_FIELDS = ("event_id", "event_type", "category", "timestamp", "tenant_id", "source")

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX2 = re.compile(r"[0-9a-f]{2}")
_INSTANT = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"(Z|z|[+-]\d{2}:?\d{2})?"
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RecordError(ValueError):
    """A record is not valid JSON of the expected shape."""


# Instants this service can read and write: years 1 to 9999 (what datetime and Java share).
_MAX_MS = 253_402_300_800_000
_MIN_MS = -62_135_596_800_000


def parse_instant_ms(value: Any) -> int | None:
    """Parse an ISO-8601 instant (Java Instant.toString style and common variants) to epoch ms."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):  # epoch ms written by other tools, when in range
        return int(value) if _MIN_MS <= value < _MAX_MS else None
    if not isinstance(value, str):
        return None
    try:  # the C parser covers every form Java writes; the regex below takes the rest
        dt = datetime.fromisoformat(value)
    except ValueError:
        pass
    else:
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            delta = dt - _EPOCH
        except OverflowError:  # an offset that takes it past year 1 or 9999
            return None
        return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
    m = _INSTANT.fullmatch(value.strip())
    if not m:
        return None
    year, month, day, hour, minute = (int(m.group(i)) for i in range(1, 6))
    second = int(m.group(6) or 0)
    fraction = (m.group(7) or "").ljust(9, "0")
    zone = m.group(8) or "Z"
    try:
        dt = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except ValueError:
        return None
    offset_s = 0
    if zone not in ("Z", "z"):
        digits = zone[1:].replace(":", "")
        offset_s = (int(digits[:2]) * 3600 + int(digits[2:]) * 60) * (1 if zone[0] == "+" else -1)
    ms = int(dt.timestamp() - offset_s) * 1000 + int(fraction[:3])
    return ms if _MIN_MS <= ms < _MAX_MS else None


def format_instant(ms: int) -> str:
    """Write epoch ms the way Java's Instant.toString does (fraction only when non-zero)."""
    seconds, millis = divmod(ms, 1000)
    base = _second_text(seconds)
    return f"{base}.{millis:03d}Z" if millis else f"{base}Z"


@functools.lru_cache(maxsize=64)
def _second_text(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


# Values orjson reads and writes exactly as the standard library does. It reads integers past
# 64 bits as floats and writes non-finite floats as null, so a record holding a float goes
# through the standard library instead: what is written back keeps every digit.
_EXACT = frozenset({str, int, bool, type(None)})


# orjson reads an integer past 64 bits as a float (of at least this size); a decimal literal it
# reads as the standard library does (two million random doubles and decimal strings compared)
_INT_AS_FLOAT = 2.0**63


def _exact(value: Any) -> bool:
    """Whether a value orjson read holds no float at any depth that may have been an integer."""
    # a walk of its own, not _plain's with a flag: that one (keys and floats checked too) made
    # reading an event 2.8 -> 4.5 us, on every delivery; a loop, not all() of a generator: a
    # subscription 2.2 -> 1.1 us
    for v in value.values() if type(value) is dict else value:
        kind = type(v)
        if kind in _EXACT:
            continue
        if kind is float:
            if not -_INT_AS_FLOAT < v < _INT_AS_FLOAT:
                return False
        elif not _exact(v):  # a dict or a list: all orjson makes besides
            return False
    return True


def _plain(value: Any) -> bool:
    """Whether orjson writes this value exactly as the standard library does."""
    # it differs only on floats written with an exponent below 1e-4 (1e-05) and on non-finite
    # floats (it writes null); integers past 64 bits and lone surrogates make it raise
    kind = type(value)
    if kind in _EXACT:
        return True
    if kind is float:
        return math.isfinite(value) and "e" not in repr(value)
    if kind is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if kind is list:
        return all(_plain(v) for v in value)
    return False


def dumps(obj: Any) -> str:
    """Compact JSON as the Java services write it (UTF-8, no spaces, field order kept)."""
    kind = type(obj)
    if kind in _EXACT or (
        kind is dict and (all(type(v) in _EXACT for v in obj.values()) or _plain(obj))
    ):  # a value alone, then the flat case first
        try:
            return orjson.dumps(obj).decode()
        except orjson.JSONEncodeError:  # an integer past 64 bits, a lone surrogate
            pass
    # The standard writer for the rest: orjson would write a non-finite float (which only a
    # record read with NaN or Infinity in it can hold) as null; this writes it back as read.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def loads_object(raw: bytes | str) -> JsonObject:
    """Parse a JSON object, raising RecordError for anything else."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        if type(value) is dict and _exact(value):
            return value
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RecordError(f"not valid JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise RecordError("not a JSON object")
    return value


def read_object(raw: bytes) -> JsonObject:
    """Parse a JSON object that is only read, never written back (it may round big numbers)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:  # what only the standard parser takes (NaN, a BOM, ...)
        return loads_object(raw)
    if not isinstance(value, dict):
        raise RecordError("not a JSON object")
    return value


def text(obj: JsonObject, name: str) -> str | None:
    """A non-blank string field, or None."""
    value = obj.get(name)
    return value if isinstance(value, str) and value.strip() else None


def integer(obj: JsonObject, name: str, default: int) -> int:
    """An integer field (JSON ints, or whole floats), else the default."""
    value = obj.get(name)
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return default


DELIVERY_STATUSES = frozenset({"PENDING", "RETRYING", "SUCCESS", "FAILED"})
_INSTANT_FIELDS = ("attempted_at", "next_retry_at", "completed_at")


def _attempts(value: Any) -> int:
    """The attempts field as a whole number, or RecordError."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError("attempts is not a number")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise RecordError("attempts is not a whole number")
    if value < 0:
        raise RecordError("attempts is negative")
    return int(value)


class Delivery(NamedTuple):
    """A parsed delivery record; `doc` keeps every field as stored."""

    delivery_id: str
    subscription_id: str
    event_id: str
    status: str
    attempts: int
    attempted_at_ms: int | None
    next_retry_at_ms: int | None
    doc: JsonObject

    @classmethod
    def parse(cls, delivery_id: str, raw: bytes | str) -> Delivery:
        """Parse a delivery record, raising RecordError when it cannot be used (section 3.1)."""
        doc = loads_object(raw)
        sub = text(doc, "subscription_id")
        event = text(doc, "event_id")
        if sub is None or event is None:
            raise RecordError("missing subscription_id or event_id")
        status = doc.get("status")
        if not isinstance(status, str) or status not in DELIVERY_STATUSES:
            raise RecordError("status is not PENDING, RETRYING, SUCCESS or FAILED")
        instants: dict[str, int | None] = {}
        for name in _INSTANT_FIELDS:
            value = doc.get(name)
            instants[name] = parse_instant_ms(value)
            if value is not None and instants[name] is None:
                raise RecordError(f"{name} is not a timestamp")
        return cls(
            delivery_id=delivery_id,
            subscription_id=sub,
            event_id=event,
            status=status,
            attempts=_attempts(doc.get("attempts", 0)),
            attempted_at_ms=instants["attempted_at"],
            next_retry_at_ms=instants["next_retry_at"],
            doc=doc,
        )

    @property
    def event_type(self) -> str:
        """The delivery's event type, as recorded."""
        return text(self.doc, "event_type") or ""


BUDGET_OPERATIONS = frozenset(
    {
        "CREDIT",
        "DEBIT",
        "RESET",
        "RESET_SPENT",
        "REPAY_DEBT",
        "STATUS_CHANGE",
        "CREATE",
        "UPDATE",
    }
)


def payload_problems(event: JsonObject) -> list[str]:
    """The payload-shape rules an event breaks (it is delivered all the same)."""
    problems: list[str] = []
    for name in REQUIRED_EVENT_FIELDS:
        value = event.get(name)
        if not (isinstance(value, str) and value.strip()):
            problems.append("missing_required")
            break
    event_type = text(event, "event_type") or ""
    category = text(event, "category") or ""
    known_type = event_type in EVENT_CATALOG
    if event_type and not known_type and not event_type.startswith("custom."):
        problems.append("unknown_event_type")
    if category and category not in CATEGORIES:
        problems.append("unknown_category")
    checkable = known_type or event_type.startswith("custom.")
    if category and checkable and event_type.split(".", 1)[0] != category:
        problems.append("category_mismatch")
    data = event.get("data")
    if event_type.startswith("budget.") or category == "budget":
        operation = data.get("operation") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict)
            or data.get("ledger_id") is None
            or (
                operation is not None
                and not (isinstance(operation, str) and operation in BUDGET_OPERATIONS)
            )
        ):
            problems.append("budget_data_shape")
    if event_type == "budget.reset_spent" and isinstance(data, dict):
        provided = data.get("spent_override_provided")
        if provided is not None and not isinstance(provided, bool):
            problems.append("reset_spent_shape")
    trace = event.get("trace_id")
    if trace is not None and not is_trace_id(trace):
        problems.append("trace_id_shape")
    return problems


def is_trace_id(value: Any) -> TypeGuard[str]:
    """A W3C trace id: 32 lower-case hex, not all zeros."""
    return isinstance(value, str) and bool(_HEX32.fullmatch(value)) and value != "0" * 32


def is_trace_flags(value: Any) -> bool:
    """W3C trace flags: 2 lower-case hex."""
    return isinstance(value, str) and bool(_HEX2.fullmatch(value))
