"""Receiver-aware delivery (issue 14), each behaviour opt-in, against real receivers; with
everything off the daemon behaves as the Java service does."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from aiohttp import web
from redis.asyncio import Redis

from cycles_events.models import parse_instant_ms
from tests.integration.conftest import StartApp
from tests.support import Admin, Behaviour, Receiver, metric, status, wait_until

FAST = {"max_retries": 3, "initial_delay_ms": 100, "backoff_multiplier": 1.0, "max_delay_ms": 1000}


async def _events(redis: Redis, index: str) -> list[dict[str, object]]:
    return [
        json.loads(await redis.get(f"event:{e.decode()}")) for e in await redis.zrange(index, 0, -1)
    ]


async def test_410_gone_disables_at_once_when_opted_in(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    receiver.behaviours["/gone"] = status(410)
    opted = await admin.subscription(receiver.url("/gone"), retry_policy=FAST)
    by_metadata = await admin.subscription(
        receiver.url("/gone"), retry_policy=FAST, metadata={"disable_on_410": True}
    )
    default = await admin.subscription(receiver.url("/gone"), retry_policy=FAST, tenant="globex")
    await start_app(DISPATCH_DISABLE_ON_410="true")
    first = await admin.deliver(opted)
    second = await admin.deliver(by_metadata)
    docs = await admin.wait_status([first, second], {"FAILED"})
    assert all(d["attempts"] == 1 and d["response_status"] == 410 for d in docs)
    for sub in (opted, by_metadata):
        doc = await admin.sub_record(sub)
        assert doc["status"] == "DISABLED" and doc["consecutive_failures"] == 1
    await wait_until(lambda: redis.zcard("events:acme"), 4)  # 2 delivered events, 2 disables
    disabled = [
        e for e in await _events(redis, "events:acme") if e["event_type"] == "webhook.disabled"
    ]
    assert len(disabled) == 2
    assert {e["data"]["disable_reason"] for e in disabled} == {"endpoint_gone_http_410"}  # type: ignore[index]
    # a subscription that opts out keeps the Java behaviour even when the setting is on
    await redis.set(
        f"webhook:{default}",
        json.dumps({**(await admin.sub_record(default)), "metadata": {"disable_on_410": False}}),
    )
    kept = await admin.deliver(default, tenant="globex")
    (doc,) = await admin.wait_status([kept], {"FAILED"}, timeout=20)
    assert doc["attempts"] == 4  # retried like any 4xx, then failed
    assert (await admin.sub_record(default))["status"] == "ACTIVE"


async def test_an_overload_floor_and_retry_after_are_opt_in_per_subscription(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    receiver.behaviours["/busy"] = status(429, {"Retry-After": "2"})
    plain = await admin.subscription(receiver.url("/busy"), retry_policy=FAST)
    floored = await admin.subscription(
        receiver.url("/busy"), retry_policy=FAST, metadata={"retry_overload_floor_ms": 3000}
    )
    honouring = await admin.subscription(
        receiver.url("/busy"), retry_policy=FAST, metadata={"retry_honor_retry_after": True}
    )
    ids = [await admin.deliver(s) for s in (plain, floored, honouring)]
    await start_app()
    docs = await admin.wait_status(ids, {"RETRYING"})
    # from the delivery's creation (just before its first attempt) to its next attempt
    delays = [
        (parse_instant_ms(d["next_retry_at"]) or 0) - (parse_instant_ms(d["attempted_at"]) or 0)
        for d in docs
    ]
    assert delays[0] < 1000  # the contract's formula: 100 ms
    assert delays[1] >= 2900  # at least the floor after a 429
    assert delays[2] >= 1900  # what the receiver asked for


async def test_jitter_spreads_retries_that_failed_together(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    receiver.behaviours["/down"] = status(503)
    policy = {**FAST, "initial_delay_ms": 10_000, "max_delay_ms": 60_000}
    sub = await admin.subscription(receiver.url("/down"), retry_policy=policy)
    event = await admin.event()
    ids = [await admin.delivery(sub, event) for _ in range(20)]
    await start_app(DISPATCH_RETRY_JITTER="0.5")
    await admin.wait_status(ids, {"RETRYING"})
    scores = [await redis.zscore("dispatch:retry", d) for d in ids]
    spread = max(scores) - min(scores)  # type: ignore[type-var,operator]
    assert spread > 2000  # ±50% of 10 s, not all at once
    assert all(s is not None for s in scores)


async def test_standard_webhooks_headers_verify_with_the_reference_libraries(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    from standardwebhooks.webhooks import Webhook
    from svix.webhooks import Webhook as SvixWebhook

    from cycles_events.signing import verify as verify_cycles
    from cycles_events.stdwebhooks import receiver_secret

    await admin.security()
    current, previous = (
        "whsec_Jm2cQy8lVb3sTqXo0rP1aK7eZ4uNw9dH5fGiLcRtYvE",
        "whsec_old-secret_kept_1",
    )
    opted = await admin.subscription(
        receiver.url("/std"), secret=current, encrypt=True, metadata={"standard_webhooks": True}
    )
    await redis.set(f"webhook:secret:{opted}:previous", previous, ex=3600)  # a rotation
    plain = await admin.subscription(receiver.url("/plain"), secret=current)
    ids = [await admin.deliver(opted), await admin.deliver(plain)]
    await start_app()
    await admin.wait_status(ids, {"SUCCESS"})
    (std,) = receiver.for_path("/std")
    (java_like,) = receiver.for_path("/plain")
    headers = {k.lower(): v for k, v in std.headers.items()}
    assert headers["webhook-id"] == headers["x-cycles-event-id"]
    assert len(headers["webhook-signature"].split(" ")) == 2  # one per secret in force
    for secret in (current, previous):  # a receiver verifies with either during the rotation
        Webhook(receiver_secret(secret)).verify(std.body, headers)
        SvixWebhook(receiver_secret(secret)).verify(std.body, headers)
    assert verify_cycles(current, std.body, headers["x-cycles-signature"])  # still sent
    assert not {"webhook-id", "webhook-signature"} & {k.lower() for k in java_like.headers}


def _fragile(limit: int, counts: dict[str, int]) -> Behaviour:
    """A receiver that takes 40 ms, and answers 503 above `limit` requests at once."""
    busy = {"now": 0}

    async def respond(request: web.Request) -> web.StreamResponse:
        busy["now"] += 1
        try:
            if busy["now"] > limit:
                counts["503"] += 1
                return web.Response(status=503)
            await asyncio.sleep(0.04)
            counts["200"] += 1
            return web.Response(status=200)
        finally:
            busy["now"] -= 1

    return respond


async def test_adaptive_concurrency_fails_fewer_attempts_on_a_fragile_receiver(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    fixed_counts, adaptive_counts = Counter[str](), Counter[str]()
    receiver.behaviours["/fixed"] = _fragile(2, fixed_counts)
    receiver.behaviours["/adaptive"] = _fragile(2, adaptive_counts)
    policy = {
        "max_retries": 10,
        "initial_delay_ms": 100,
        "backoff_multiplier": 1.0,
        "max_delay_ms": 1000,
    }
    fixed = await admin.subscription(receiver.url("/fixed"), retry_policy=policy)
    adapting = await admin.subscription(
        receiver.url("/adaptive"), retry_policy=policy, metadata={"adaptive_concurrency": True}
    )
    event = await admin.event()
    fixed_ids = [await admin.delivery(fixed, event) for _ in range(60)]
    adaptive_ids = [await admin.delivery(adapting, event) for _ in range(60)]
    app = await start_app(DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION=8)

    seen: list[int] = []

    async def halfway() -> bool:
        seen.append(app.pipeline.gate.limits.limit(adapting))
        return adaptive_counts["200"] >= 30

    await wait_until(halfway, True, timeout=30)
    limit = app.pipeline.gate.limits.limit(adapting)
    await app.loops["limits-sampler"]()  # what the gauges and `subscriptions show` see
    # held down towards what the receiver takes (2), not at 8 (AIMD climbs back between cuts)
    assert min(seen) <= 4 and limit < 8, (seen, limit)
    assert metric(app, "cycles_webhook_dispatch_concurrency_limited_subscriptions") == 1
    assert await redis.hget("cycles-events:concurrency-limits", adapting) is not None
    assert await redis.hget("cycles-events:concurrency-limits", fixed) is None
    await admin.wait_status(adaptive_ids, {"SUCCESS"}, timeout=60)
    await admin.wait_status(fixed_ids, {"SUCCESS", "FAILED"}, timeout=60)
    assert adaptive_counts["200"] == 60  # every one delivered, well inside its retry policy
    assert adaptive_counts["503"] * 3 < fixed_counts["503"], (adaptive_counts, fixed_counts)
    app.pipeline.gate.limits.forget(adapting)  # as a re-enable does: back at the maximum
    await app.loops["limits-sampler"]()
    assert await redis.hget("cycles-events:concurrency-limits", adapting) is None  # not stale


async def test_the_retry_lane_keeps_first_attempts_ahead_of_a_retry_backlog(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.02)
        return web.Response(status=200)

    receiver.behaviours["/retried"] = slow
    retried = await admin.subscription(receiver.url("/retried"))
    fresh_sub = await admin.subscription(receiver.url("/fresh"))
    event = await admin.event()
    backlog = []
    for _ in range(1500):  # retries all due at once, as after an outage of their receiver
        delivery_id = await admin.delivery(
            retried, event, status="RETRYING", attempts=1, next_retry_at="2026-01-01T00:00:00Z"
        )
        await redis.lrem("dispatch:pending", 0, delivery_id)
        await redis.zadd("dispatch:retry", {delivery_id: 1})
        backlog.append(delivery_id)
    await start_app(DISPATCH_FIRST_ATTEMPT_SHARE="0.25", DISPATCH_CONCURRENCY=16)
    await receiver.wait_count(100, path="/retried")  # the backlog is being worked through
    fresh = [await admin.deliver(fresh_sub) for _ in range(20)]
    await admin.wait_status(fresh, {"SUCCESS"}, timeout=10)
    left = await redis.zcard("dispatch:retry")
    assert left > 500, left  # every fresh one went out while most retries still waited
    await admin.wait_status(backlog, {"SUCCESS"}, timeout=60)  # and the retries all went out
    assert await redis.llen("dispatch:pending") == 0
