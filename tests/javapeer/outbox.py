"""Meta-events of contract section 7 and the outbox publisher that saves them."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from tests.javapeer import scripts as k
from tests.javapeer.log import PeerLog
from tests.javapeer.records import (
    SYSTEM_TENANT,
    derive_event_id,
    dumps,
    format_instant,
    load_object,
    parse_instant_ms,
    text,
    texts,
    wall_ms,
)

SOURCE = "cycles-events"
LOCK_MS = 30_000
MAX_ATTEMPTS = 100
DEFER_MS = 5000


@dataclass
class Task:
    """One staged outbox task."""

    task_id: str
    created_ms: int
    json: str


def owner_of(sub: dict[str, Any]) -> str:
    """The subscription's owner tenant (__system__ when absent or null)."""
    tenant = sub.get("tenant_id")
    return tenant if isinstance(tenant, str) else SYSTEM_TENANT


def _stage(task_id: str, now: int, event: dict[str, Any]) -> Task:
    """The task JSON `{task_id, created_at, event}` of one meta-event."""
    doc = {"task_id": task_id, "created_at": format_instant(now), "event": event}
    return Task(task_id, now, dumps(doc))


def _common(task_id: str, etype: str, category: str, tenant: str, now: int) -> dict[str, Any]:
    """The fields every meta-event shares."""
    return {
        "event_id": derive_event_id(task_id),
        "event_type": etype,
        "category": category,
        "timestamp": format_instant(now),
        "tenant_id": tenant,
        "actor": {"type": "system"},
        "source": SOURCE,
    }


def _tail(event: dict[str, Any], cid: str, delivery: dict[str, Any], src: dict[str, Any]) -> None:
    """correlation_id, the delivery's trace_id and the event's request_id (when set)."""
    event["correlation_id"] = cid
    if delivery.get("trace_id"):
        event["trace_id"] = delivery["trace_id"]
    if isinstance(src.get("request_id"), str) and src["request_id"].strip():
        event["request_id"] = src["request_id"]


def delivery_failed_task(
    del_id: str,
    delivery: dict[str, Any],
    sub: dict[str, Any],
    src_event: dict[str, Any],
    now: int,
    last_status: int | None,
    error: str | None,
) -> Task:
    """The `system.webhook_delivery_failed` task of a delivery that ended FAILED."""
    sub_id = delivery["subscription_id"]
    task_id = f"delivery-failed:{sub_id}:{del_id}"
    cid = f"webhook_delivery_failed:{sub_id}:{del_id}"
    details: dict[str, Any] = {
        "subscription_id": sub_id,
        "tenant_id": owner_of(sub),
        "delivery_id": del_id,
        "event_id": delivery["event_id"],
        "event_type": delivery.get("event_type") or src_event.get("event_type"),
        "attempts": delivery["attempts"],
    }
    if last_status is not None:
        details["last_response_status"] = last_status
    if error:
        details["error"] = error
    event = _common(task_id, "system.webhook_delivery_failed", "system", SYSTEM_TENANT, now)
    event["data"] = {
        "component": "webhook_dispatcher",
        "message": f"Webhook delivery {del_id} failed after {delivery['attempts']} attempts",
        "severity": "warning",
        "details": details,
    }
    _tail(event, cid, delivery, src_event)
    return _stage(task_id, now, event)


def webhook_disabled_task(
    del_id: str, delivery: dict[str, Any], sub: dict[str, Any], src_event: dict[str, Any], now: int
) -> Task:
    """The `webhook.disabled` task of an auto-disabled subscription."""
    sub_id = delivery["subscription_id"]
    task_id = f"webhook-disabled:{sub_id}:{del_id}"
    cid = f"webhook_auto_disable:{sub_id}:{del_id}"
    tenant = owner_of(sub)
    event = _common(task_id, "webhook.disabled", "webhook", tenant, now)
    event["data"] = {
        "subscription_id": sub_id,
        "tenant_id": tenant,
        "previous_status": sub.get("status"),
        "new_status": "DISABLED",
        "changed_fields": [],
        "disable_reason": "consecutive_failures_exceeded_threshold",
    }
    _tail(event, cid, delivery, src_event)
    return _stage(task_id, now, event)


class Publisher:
    """Saves due outbox tasks (ours and anyone's) under a per-task lock."""

    def __init__(
        self, redis: Redis, sc: k.Scripts, log: PeerLog, *, ttl_days: int, skew_ms: int = 0
    ) -> None:
        """A publisher on the peer's client, saving events with a TTL of `ttl_days`."""
        self.redis, self.sc, self.log = redis, sc, log
        self.ttl_s = ttl_days * 86400
        self.skew_ms = skew_ms
        self.kick = asyncio.Event()

    def _now(self) -> int:
        """The peer's clock, epoch ms."""
        return wall_ms(self.skew_ms)

    async def publish_due(self, limit: int = 100) -> int:
        """Save every due task once; the number saved."""
        due = texts(await self.redis.zrangebyscore(k.OUTBOX_PENDING, "-inf", self._now(), 0, limit))
        saved = 0
        for task_id in due:
            try:
                saved += await self._publish(task_id)
            except Exception as exc:  # one bad task never stops the others
                self.log.emit("outbox_error", None, task_id=task_id, error=type(exc).__name__)
        return saved

    async def _publish(self, task_id: str) -> int:
        """Lock, save and remove one task; 1 when saved."""
        token = str(uuid.uuid4())
        lock = k.lock_key(task_id)
        if not await self.redis.set(lock, token, nx=True, px=LOCK_MS):
            return 0
        raw = text(await self.redis.get(k.task_key(task_id)))
        keys = [lock, k.OUTBOX_PENDING, k.task_key(task_id), k.OUTBOX_ATTEMPTS]
        if raw is None:  # a task already saved (or lost): nothing to save
            await self.sc.run(self.sc.finish_task, keys, [token, task_id])
            return 0
        doc = load_object(raw)
        event = doc.get("event") if doc is not None else None
        try:
            if not isinstance(event, dict) or not isinstance(event.get("event_id"), str):
                raise ValueError("task without an event")
            await self._save(event)
        except Exception as exc:
            entry = dumps({"task_id": task_id, "payload": raw})
            args = [token, task_id, self._now() + DEFER_MS, MAX_ATTEMPTS, entry, 10_000]
            await self.sc.run(self.sc.defer_task, [*keys, k.OUTBOX_FAILED], args)
            self.log.emit("outbox_deferred", None, task_id=task_id, error=type(exc).__name__)
            return 0
        if await self.sc.run(self.sc.finish_task, keys, [token, task_id]) == 1:
            self.log.emit("published", None, task_id=task_id, event_id=event["event_id"])
            return 1
        self.log.emit("outbox_lock_lost", None, task_id=task_id)
        return 0

    async def _save(self, event: dict[str, Any]) -> None:
        """Save one event the way admin saves events."""
        tenant = event.get("tenant_id") or SYSTEM_TENANT
        score = parse_instant_ms(event.get("timestamp"))
        if score is None:
            score = self._now()
        keys = [f"event:{event['event_id']}", f"events:{tenant}", "events:_all"]
        cid = event.get("correlation_id")
        if isinstance(cid, str) and cid.strip():
            keys.append(f"events:correlation:{cid}")
        args = [dumps(event), self.ttl_s, score, event["event_id"]]
        await self.sc.run(self.sc.save_event, keys, args)

    async def run(self, poll_ms: int, stopping: asyncio.Event) -> None:
        """Publish at once when kicked, else every poll interval."""
        while not stopping.is_set():
            self.kick.clear()
            try:
                await self.publish_due()
            except Exception as exc:
                self.log.emit("outbox_error", None, error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kick.wait(), timeout=poll_ms / 1000)
