"""What the demo writes, as the admin and the producers do: subscriptions, events, deliveries."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.crypto import encrypt_secret
from cycles_events.demo.common import hex16
from cycles_events.models import dumps, format_instant

TENANT = "acme"
DELIVERY_TTL_S = 14 * 86400
EVENT_TTL_S = 90 * 86400
SECURITY = {"allow_http": True, "blocked_cidr_ranges": ["192.0.2.0/24"], "allowed_url_patterns": []}
EVENT_TYPES = (
    ("budget.threshold_crossed", "budget"),
    ("budget.exhausted", "budget"),
    ("reservation.denied", "reservation"),
    ("budget.debited", "budget"),
    ("tenant.updated", "tenant"),
)


@dataclass
class Sub:
    """A demo subscription."""

    subscription_id: str
    name: str
    path: str
    secret: str
    encrypted: bool
    wants: Callable[[int, str], bool]
    retry_policy: dict[str, Any] | None = None
    disable_after_failures: int = 10


async def write_subscription(redis: Redis, sub: Sub, url: str, key: bytes) -> None:
    """A subscription and its secret, as the admin API writes them."""
    doc: dict[str, Any] = {
        "subscription_id": sub.subscription_id,
        "tenant_id": TENANT,
        "name": sub.name,
        "url": url,
        "event_types": [t for t, _ in EVENT_TYPES],
        "headers": {"X-Demo": "cycles-events"},
        "status": "ACTIVE",
        "retry_policy": sub.retry_policy
        or {
            "max_retries": 5,
            "initial_delay_ms": 1000,
            "backoff_multiplier": 2.0,
            "max_delay_ms": 60000,
        },
        "disable_after_failures": sub.disable_after_failures,
        "consecutive_failures": 0,
        "created_at": format_instant(int(time.time() * 1000)),
    }
    stored = encrypt_secret(sub.secret, key) if sub.encrypted else sub.secret
    pipe = redis.pipeline(transaction=True)
    pipe.set(keys.subscription(sub.subscription_id), dumps(doc))
    pipe.set(keys.secret(sub.subscription_id), stored)
    pipe.sadd(f"webhooks:{TENANT}", sub.subscription_id)
    pipe.sadd("webhooks:_all", sub.subscription_id)
    await pipe.execute()


def event_doc(n: int, at_ms: int) -> dict[str, Any]:
    """The n-th demo event, in the producers' shape."""
    event_type, category = EVENT_TYPES[n % len(EVENT_TYPES)]
    request_id = f"req_{hex16()[:8]}"
    return {
        "event_id": f"evt_{hex16()}",
        "event_type": event_type,
        "category": category,
        "timestamp": format_instant(at_ms),
        "tenant_id": TENANT,
        "scope": f"tenant:{TENANT}/workspace:demo",
        "actor": {"type": "api_key", "key_id": "key_demo"},
        "source": "cycles-server",
        "data": {"scope": f"tenant:{TENANT}/workspace:demo", "unit": "USD_MICROCENTS", "n": n},
        "correlation_id": request_id,
        "request_id": request_id,
        "trace_id": secrets.token_hex(16),
    }


async def push_events(
    redis: Redis,
    subs: Sequence[Sub],
    first: int,
    count: int,
    pushed_ms: dict[tuple[str, str], int],
) -> list[str]:
    """Save `count` events and their deliveries the way the producers do; returns delivery ids."""
    producer = redis.register_script(keys.REPLAY_DELIVERY)
    pipe = redis.pipeline(transaction=False)
    created: list[str] = []
    at = int(time.time() * 1000)
    for n in range(first, first + count):
        event = event_doc(n, at)
        event_id = event["event_id"]
        pipe.set(keys.event(event_id), dumps(event), ex=EVENT_TTL_S)
        pipe.zadd(keys.tenant_events(TENANT), {event_id: at})
        pipe.zadd(keys.EVENTS_ALL, {event_id: at})
        pipe.sadd(keys.correlation(event["correlation_id"]), event_id)
        pipe.expire(keys.correlation(event["correlation_id"]), EVENT_TTL_S)
        for sub in subs:
            if not sub.wants(n, event["event_type"]):
                continue
            delivery_id = f"del_{hex16()}"
            record = {
                "delivery_id": delivery_id,
                "subscription_id": sub.subscription_id,
                "event_id": event_id,
                "event_type": event["event_type"],
                "status": "PENDING",
                "attempted_at": format_instant(at),
                "attempts": 0,
                "trace_id": event["trace_id"],
            }
            await producer(
                keys=[
                    keys.delivery(delivery_id),
                    keys.deliveries(sub.subscription_id),
                    keys.PENDING,
                ],
                args=[dumps(record), DELIVERY_TTL_S, at, delivery_id],
                client=pipe,
            )
            created.append(delivery_id)
            pushed_ms[(sub.path, event_id)] = at
    await pipe.execute()
    return created
