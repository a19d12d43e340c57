"""The events this service stages in the outbox (contract section 7): ids, shapes, tasks (pure)."""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from cycles_events.lifecycle import DISABLE_REASON
from cycles_events.models import SYSTEM_TENANT, Delivery, JsonObject, dumps, format_instant, text

SOURCE = "cycles-events"


class Task(NamedTuple):
    """A staged meta-event: its task id, the task JSON and when it was created."""

    task_id: str
    json: str
    created_ms: int
    event_type: str


def event_id_for(task_id: str) -> str:
    """`evt_` + the first 16 hex of SHA-256(task id), exactly as the Java service derives it."""
    return "evt_" + hashlib.sha256(task_id.encode("utf-8")).hexdigest()[:16]


def failed_task_id(subscription_id: str, delivery_id: str) -> str:
    """The task id of a delivery's system.webhook_delivery_failed event."""
    return f"delivery-failed:{subscription_id}:{delivery_id}"


def disabled_task_id(subscription_id: str, delivery_id: str) -> str:
    """The task id of the webhook.disabled event of an auto-disable."""
    return f"webhook-disabled:{subscription_id}:{delivery_id}"


def task(task_id: str, event: JsonObject, now_ms: int) -> Task:
    """The outbox task `{task_id, created_at, event}` for an event."""
    doc = {"task_id": task_id, "created_at": format_instant(now_ms), "event": event}
    return Task(task_id, dumps(doc), now_ms, str(event["event_type"]))


def _meta_event(
    *,
    task_id: str,
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
        "event_id": event_id_for(task_id),
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


def disabled_task(
    sub: JsonObject,
    delivery: Delivery,
    event: JsonObject | None,
    previous: str,
    now_ms: int,
    *,
    reason: str = DISABLE_REASON,
) -> Task:
    """The webhook.disabled event staged when a subscription is auto-disabled."""
    tenant = text(sub, "tenant_id") or SYSTEM_TENANT
    task_id = disabled_task_id(delivery.subscription_id, delivery.delivery_id)
    doc = _meta_event(
        task_id=task_id,
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
            "disable_reason": reason,
        },
        now_ms=now_ms,
        delivery=delivery,
        event=event,
    )
    return task(task_id, doc, now_ms)


def failed_task(
    sub: JsonObject,
    delivery: Delivery,
    event: JsonObject | None,
    *,
    attempts: int,
    status: int | None,
    error: str | None,
    now_ms: int,
) -> Task:
    """The system.webhook_delivery_failed event staged when a delivery ends FAILED."""
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
    task_id = failed_task_id(delivery.subscription_id, delivery.delivery_id)
    doc = _meta_event(
        task_id=task_id,
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
    return task(task_id, doc, now_ms)
