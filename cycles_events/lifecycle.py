"""Pure state transitions of contract sections 3 and 7: records in, records out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, NamedTuple

from cycles_events.models import (
    SYSTEM_TENANT,
    Delivery,
    JsonObject,
    format_instant,
    integer,
    text,
)

DISABLE_REASON = "consecutive_failures_exceeded_threshold"
SOURCE = "cycles-events"


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
    if attempts is not None:
        doc["attempts"] = attempts
    doc["completed_at"] = format_instant(now_ms)
    _set(doc, "response_status", status)
    _set(doc, "response_time_ms", elapsed_ms)
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


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What applying a change did: whether it disabled the subscription, and from what."""

    disabled: bool = False
    previous_status: str | None = None


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
    if count >= threshold and status in ("ACTIVE", "PAUSED"):
        sub["status"] = "DISABLED"
        return MergeResult(disabled=True, previous_status=str(status))
    return NO_EFFECT


def derived_event_id(correlation_id: str) -> str:
    """A deterministic event id, so a retried save does not duplicate the event."""
    return "evt_" + hashlib.sha256(correlation_id.encode("utf-8")).hexdigest()[:16]


def _meta_event(
    *,
    event_type: str,
    category: str,
    tenant_id: str,
    correlation_id: str,
    data: JsonObject,
    now_ms: int,
    delivery: Delivery,
    event: JsonObject | None,
) -> JsonObject:
    out: JsonObject = {
        "event_id": derived_event_id(correlation_id),
        "event_type": event_type,
        "category": category,
        "timestamp": format_instant(now_ms),
        "tenant_id": tenant_id,
        "actor": {"type": "system"},
        "source": SOURCE,
        "data": data,
        "correlation_id": correlation_id,
    }
    request_id = text(event, "request_id") if event else None
    if request_id:
        out["request_id"] = request_id
    trace = text(delivery.doc, "trace_id") or (text(event, "trace_id") if event else None)
    if trace:
        out["trace_id"] = trace
    return out


def disabled_event(
    sub: JsonObject, delivery: Delivery, event: JsonObject | None, previous: str, now_ms: int
) -> JsonObject:
    """The webhook.disabled event saved when a subscription is auto-disabled."""
    tenant = text(sub, "tenant_id") or SYSTEM_TENANT
    return _meta_event(
        event_type="webhook.disabled",
        category="webhook",
        tenant_id=tenant,
        correlation_id=f"webhook_auto_disable:{delivery.subscription_id}:{delivery.delivery_id}",
        data={
            "subscription_id": delivery.subscription_id,
            "tenant_id": tenant,
            "previous_status": previous,
            "new_status": "DISABLED",
            "changed_fields": [],
            "disable_reason": DISABLE_REASON,
        },
        now_ms=now_ms,
        delivery=delivery,
        event=event,
    )


def delivery_failed_event(
    sub: JsonObject,
    delivery: Delivery,
    event: JsonObject | None,
    *,
    attempts: int,
    status: int | None,
    error: str | None,
    now_ms: int,
) -> JsonObject:
    """The system.webhook_delivery_failed event saved when a delivery ends FAILED."""
    details: JsonObject = {
        "subscription_id": delivery.subscription_id,
        "tenant_id": text(sub, "tenant_id") or SYSTEM_TENANT,
        "delivery_id": delivery.delivery_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type or (text(event, "event_type") if event else "") or "",
        "attempts": attempts,
    }
    if status is not None:
        details["last_response_status"] = status
    if error:
        details["error"] = error
    return _meta_event(
        event_type="system.webhook_delivery_failed",
        category="system",
        tenant_id=SYSTEM_TENANT,
        correlation_id=f"webhook_delivery_failed:{delivery.subscription_id}:{delivery.delivery_id}",
        data={
            "component": "webhook_dispatcher",
            "message": (
                f"Webhook delivery {delivery.delivery_id} to subscription "
                f"{delivery.subscription_id} failed after {attempts} attempts"
            ),
            "severity": "warning",
            "details": details,
        },
        now_ms=now_ms,
        delivery=delivery,
        event=event,
    )
