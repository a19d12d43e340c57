"""Pure state transitions of contract section 3: records in, records out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from cycles_events import backoff
from cycles_events.models import (
    Delivery,
    JsonObject,
    dumps,
    format_instant,
    integer,
    text,
)
from cycles_events.retry import Kind, RetryPolicy, classify

DISABLE_REASON = "consecutive_failures_exceeded_threshold"


def stale_message(age_ms: int, max_age_ms: int) -> str:
    """The error_message of a delivery too old to send."""
    return f"Delivery expired: {age_ms // 3_600_000}h old (max {max_age_ms // 3_600_000}h)"


def failed(
    delivery: Delivery,
    now_ms: int,
    message: str,
    *,
    attempts: int | None = None,
    status: int | None = None,
    elapsed_ms: int | None = None,
) -> JsonObject:
    """The delivery record ended FAILED (fields not named here are kept as they were)."""
    doc = dict(delivery.doc)
    doc["status"] = "FAILED"
    # after an attempt, its status (none without an HTTP answer) replaces the earlier one's;
    # a failure before any send keeps what the last attempt, if any, recorded
    if attempts is not None:
        doc["attempts"] = attempts
        _set(doc, "response_status", status)
        _set(doc, "response_time_ms", elapsed_ms)
    doc["completed_at"] = format_instant(now_ms)
    doc["error_message"] = message
    doc.pop("next_retry_at", None)
    return doc


def succeeded(
    delivery: Delivery, now_ms: int, *, attempts: int, status: int, elapsed_ms: int
) -> JsonObject:
    """The delivery record after a 2xx."""
    doc = dict(delivery.doc)
    doc["status"] = "SUCCESS"
    doc["attempts"] = attempts
    doc["response_status"] = status
    doc["response_time_ms"] = elapsed_ms
    doc["completed_at"] = format_instant(now_ms)
    doc.pop("error_message", None)
    doc.pop("next_retry_at", None)
    return doc


def retrying(
    delivery: Delivery,
    *,
    attempts: int,
    status: int | None,
    elapsed_ms: int,
    message: str,
    next_retry_ms: int,
) -> JsonObject:
    """The delivery record scheduled for another attempt."""
    doc = dict(delivery.doc)
    doc.update(
        status="RETRYING",
        attempts=attempts,
        response_time_ms=elapsed_ms,
        error_message=message,
        next_retry_at=format_instant(next_retry_ms),
    )
    _set(doc, "response_status", status)
    return doc


def with_trace(delivery: Delivery, event: JsonObject) -> Delivery:
    """Copy the event's trace_id onto a delivery that has none."""
    trace = text(event, "trace_id")
    if trace is None or text(delivery.doc, "trace_id") is not None:
        return delivery
    doc = dict(delivery.doc)
    doc["trace_id"] = trace
    return Delivery(
        delivery.delivery_id,
        delivery.subscription_id,
        delivery.event_id,
        delivery.status,
        delivery.attempts,
        delivery.attempted_at_ms,
        delivery.next_retry_at_ms,
        doc,
    )


def _set(doc: JsonObject, name: str, value: Any) -> None:
    if value is None:
        doc.pop(name, None)
    else:
        doc[name] = value


class SubscriptionChange(NamedTuple):
    """One delivery's effect on its subscription."""

    success: bool
    at_ms: int
    delivery_id: str
    disable_reason: str | None = None  # disable at once, whatever the count (410 Gone)


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What applying a change did: whether it disabled the subscription, and from what."""

    disabled: bool = False
    previous_status: str | None = None
    reason: str = DISABLE_REASON


NO_EFFECT = MergeResult()


def merge_subscription(sub: JsonObject, change: SubscriptionChange) -> MergeResult:
    """Apply a delivery outcome to a subscription in place (only counter, last_*_at, status)."""
    now = format_instant(change.at_ms)
    sub["last_triggered_at"] = now
    if change.success:
        sub["consecutive_failures"] = 0
        sub["last_success_at"] = now
        return NO_EFFECT
    count = max(0, integer(sub, "consecutive_failures", 0)) + 1
    sub["consecutive_failures"] = count
    sub["last_failure_at"] = now
    threshold = max(1, integer(sub, "disable_after_failures", 10))
    status = sub.get("status")
    # "exceeds", as the protocol says and Java does since v0.1.25.24: the 11th failure of 10
    exceeded = count > threshold
    if (exceeded or change.disable_reason) and status in ("ACTIVE", "PAUSED"):
        sub["status"] = "DISABLED"
        reason = DISABLE_REASON if exceeded else str(change.disable_reason)
        return MergeResult(disabled=True, previous_status=str(status), reason=reason)
    return NO_EFFECT


# The fields a success sets whatever they held: a write of it fits any change to them alone.
SUCCESS_FIELDS = ("last_triggered_at", "last_success_at", "consecutive_failures")
_SUCCESS_KEYS = tuple((name, f'"{name}":') for name in SUCCESS_FIELDS)
# A value OUTCOME can step over without decoding (its `value_end`): a string without escapes, a
# whole number or null, and then the value's end
_PLAIN = re.compile(r'(?:"[^"\\]*"|-?[0-9]+|null)(?=[,}])')


def success_parts(raw: str, merged: JsonObject) -> tuple[str, ...] | None:
    """`raw` cut around SUCCESS_FIELDS' values, `merged`'s in their places (OUTCOME's 'p' item).

    None unless each field is named once, with a plain value, and the pieces joined parse as
    `merged`: so the cuts are the top-level fields and the rest is the document as read.
    """
    cuts: list[tuple[int, int, str]] = []
    for name, key in _SUCCESS_KEYS:
        at = raw.find(key)
        if at < 0 or raw.find(key, at + 1) >= 0:
            return None
        value = _PLAIN.match(raw, at + len(key))
        if value is None:
            return None
        cuts.append((value.start(), value.end(), name))
    cuts.sort()
    pieces: list[str] = []
    pos = 0
    for start, end, name in cuts:
        pieces += (raw[pos:start], dumps(merged[name]))
        pos = end
    pieces.append(raw[pos:])
    # orjson alone: an integer past 64 bits it reads as a float compares unequal (then the whole
    # document is sent), so loads_object's walk would add nothing
    try:
        same = orjson.loads("".join(pieces)) == merged
    except orjson.JSONDecodeError:
        return None
    return tuple(pieces) if same else None


class Attempt(NamedTuple):
    """What one HTTP attempt means for its delivery: the record and where it goes next."""

    kind: Kind
    record: JsonObject
    attempts: int
    reason: str
    message: str | None
    retry_at_ms: int | None = None
    disable_reason: str | None = None


def after_attempt(
    delivery: Delivery,
    subscription: JsonObject,
    *,
    status: int | None,
    error: str | None,
    elapsed_ms: int,
    retry_after: str | None,
    now_ms: int,
    options: backoff.Options = backoff.OFF,
) -> Attempt:
    """Step 9: success, another try on the retry policy, or the end of the delivery."""
    attempts = delivery.attempts + 1
    outcome = classify(status, error)
    if outcome.kind is Kind.SUCCESS:
        assert status is not None
        record = succeeded(
            delivery, now_ms, attempts=attempts, status=status, elapsed_ms=elapsed_ms
        )
        return Attempt(Kind.SUCCESS, record, attempts, outcome.reason, None)
    message = outcome.message or "delivery failed"
    decision = backoff.decide(
        RetryPolicy.from_subscription(subscription),
        attempts,
        status=status,
        error=error,
        retry_after=retry_after,
        now_ms=now_ms,
        options=options,
    )
    if decision.action is backoff.Action.RETRY and decision.delay_ms is not None:
        retry_at = now_ms + decision.delay_ms
        record = retrying(
            delivery,
            attempts=attempts,
            status=status,
            elapsed_ms=elapsed_ms,
            message=message,
            next_retry_ms=retry_at,
        )
        return Attempt(Kind.RETRYABLE, record, attempts, outcome.reason, message, retry_at)
    record = failed(
        delivery, now_ms, message, attempts=attempts, status=status, elapsed_ms=elapsed_ms
    )
    gone = decision.disable_reason
    return Attempt(Kind.PERMANENT, record, attempts, outcome.reason, message, None, gone)
