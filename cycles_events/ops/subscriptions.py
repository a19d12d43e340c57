"""`subscriptions enable`: what an admin PATCH to ACTIVE does, as a compare-and-set."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from cycles_events.metaevents import SOURCE
from cycles_events.models import JsonObject, dumps, format_instant, integer, text
from cycles_events.ops.common import OpsError, load_record, now_ms
from cycles_events.store import Store

MAX_CAS_ROUNDS = 20


@dataclass(frozen=True, slots=True)
class Enabled:
    """The outcome of `subscriptions enable`."""

    subscription_id: str
    previous_status: str
    previous_failures: int
    changed: bool
    event_id: str | None
    before: JsonObject | None = field(default=None, compare=False)  # the record as it was


def resumed_event(sub: JsonObject, subscription_id: str, previous: str, at_ms: int) -> JsonObject:
    """The webhook.resumed event an admin PATCH to ACTIVE saves."""
    tenant = text(sub, "tenant_id") or "__system__"
    return {
        "event_id": "evt_" + secrets.token_hex(8),
        "event_type": "webhook.resumed",
        "category": "webhook",
        "timestamp": format_instant(at_ms),
        "tenant_id": tenant,
        "actor": {"type": "admin"},
        "source": SOURCE,
        "data": {
            "subscription_id": subscription_id,
            "tenant_id": tenant,
            "previous_status": previous,
            "new_status": "ACTIVE",
            "changed_fields": ["status"],
        },
    }


def _record(subscription_id: str, raw: bytes | None) -> tuple[str, JsonObject]:
    """The stored text and the parsed record of a subscription, or why it cannot be enabled."""
    if raw is None:
        raise OpsError(f"subscription {subscription_id} not found")
    expected = raw.decode("utf-8", "replace")
    doc = load_record(expected)
    if doc is None:
        raise OpsError(f"subscription {subscription_id} is not a valid JSON record")
    return expected, doc


def _plan(subscription_id: str, doc: JsonObject) -> Enabled:
    """What enabling would do to this record (no event id yet)."""
    previous = str(doc.get("status"))
    failures = integer(doc, "consecutive_failures", 0)
    changed = not (previous == "ACTIVE" and failures == 0)
    return Enabled(subscription_id, previous, failures, changed, None, dict(doc))


async def preview_enable(redis: Redis, subscription_id: str) -> Enabled:
    """What `enable_subscription` would do now, writing nothing."""
    _, doc = _record(subscription_id, await Store(redis).get_subscription(subscription_id))
    return _plan(subscription_id, doc)


async def enable_subscription(
    redis: Redis, subscription_id: str, *, event_ttl_s: int, clock: Callable[[], int] = now_ms
) -> Enabled:
    """Set status ACTIVE and reset consecutive_failures (compare-and-set), then save the event."""
    store = Store(redis)
    raw = await store.get_subscription(subscription_id)
    for _ in range(MAX_CAS_ROUNDS):
        expected, doc = _record(subscription_id, raw)
        plan = _plan(subscription_id, doc)
        previous, failures = plan.previous_status, plan.previous_failures
        if not plan.changed:
            return plan
        at = clock()
        doc["status"] = "ACTIVE"
        doc["consecutive_failures"] = 0
        doc["updated_at"] = format_instant(at)
        status, current = await store.cas_subscription(subscription_id, expected, dumps(doc))
        if status == "ok":
            event_id: str | None = None
            if previous != "ACTIVE":
                event = resumed_event(doc, subscription_id, previous, at)
                await store.save_event(event, event_ttl_s)
                event_id = str(event["event_id"])
            return Enabled(subscription_id, previous, failures, True, event_id, plan.before)
        raw = current
    raise OpsError(f"subscription {subscription_id} kept changing; nothing written, try again")
