"""Worker pool behaviour: isolation between subscriptions, retry wake-ups, recovery, retention."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from redis.asyncio import Redis

from tests.integration.conftest import StartApp
from tests.support import Admin, Receiver, now_ms


async def test_hung_receiver_does_not_hold_up_other_subscriptions(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    release = asyncio.Event()
    answered: list[str] = []

    async def stuck(request: web.Request) -> web.StreamResponse:
        await release.wait()
        answered.append("slow")
        return web.Response(status=200)

    receiver.behaviours["/stuck"] = stuck
    await admin.security()
    slow = await admin.subscription(receiver.url("/stuck"))
    fast = await admin.subscription(receiver.url("/fast"))
    slow_ids = [await admin.deliver(slow) for _ in range(40)]
    fast_ids = [await admin.deliver(fast) for _ in range(150)]
    app = await start_app(DISPATCH_CONCURRENCY=16, DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION=4)
    await admin.wait_status(fast_ids, {"SUCCESS"}, timeout=30)
    # every fast delivery arrived while the slow receiver still held its first requests,
    # and the slow subscription never had more than its bound in flight
    assert answered == []
    assert len(receiver.for_path("/stuck")) == 4
    release.set()
    await admin.wait_status(slow_ids, {"SUCCESS"}, timeout=60)
    assert len(receiver.for_path("/stuck")) == 40
    assert app.pipeline.counts.claimed == 0


async def test_retry_fires_without_waiting_for_the_poll_interval(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    from tests.support import status

    receiver.behaviours["/flaky"] = status(500)
    await admin.security()
    sub = await admin.subscription(
        receiver.url("/flaky"),
        retry_policy={
            "max_retries": 1,
            "initial_delay_ms": 300,
            "backoff_multiplier": 1.0,
            "max_delay_ms": 1000,
        },
    )
    delivery_id = await admin.deliver(sub)
    # a poll interval of a minute: only the promoter's wake-up can send the retry in time
    await start_app(**{"dispatch.retry.poll-interval-ms": 60_000})
    (doc,) = await admin.wait_status([delivery_id], {"FAILED"}, timeout=10)
    assert doc["attempts"] == 2
    first, second = receiver.for_path("/flaky")
    assert second.at - first.at >= 0.29


async def test_orphaned_claims_are_recovered(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    sub = await admin.subscription(receiver.url())
    old = now_ms() - 600_000
    claimed = await admin.deliver(sub)
    moved = await admin.deliver(sub)
    # a dead instance's claim, and a BLMOVE whose process died before recording its claim
    await redis.delete("dispatch:pending")
    await redis.lpush("dispatch:processing", claimed, moved)
    await redis.zadd("dispatch:processing:claimed_at", {claimed: old})
    await redis.hset("dispatch:processing:claim_owner", claimed, "dead:1")
    app = await start_app(DISPATCH_PROCESSING_RECOVERY_IDLE_MS=600)
    await admin.wait_status([claimed, moved], {"SUCCESS"}, timeout=15)
    assert await redis.llen("dispatch:processing") == 0
    assert await redis.zcard("dispatch:processing:claimed_at") == 0
    text = app.metrics.exposition().decode()
    assert "cycles_webhook_dispatch_recovered_total 2.0" in text


async def test_live_claims_are_not_recovered_while_heartbeating(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    from tests.support import hang

    receiver.behaviours["/slow"] = hang(2.5)
    await admin.security()
    sub = await admin.subscription(receiver.url("/slow"))
    ids = [await admin.deliver(sub) for _ in range(3)]
    await start_app(DISPATCH_PROCESSING_RECOVERY_IDLE_MS=600)
    await admin.wait_status(ids, {"SUCCESS"}, timeout=20)
    assert len(receiver.requests) == 3  # a send slower than the idle period is not re-sent


async def test_retention_trims_indexes_and_skips_sets(
    start_app: StartApp, admin: Admin, redis: Redis
) -> None:
    now = now_ms()
    day = 86_400_000
    await redis.zadd("events:acme", {"evt_old": now - 91 * day, "evt_new": now - day})
    await redis.zadd("events:_all", {"evt_old": now - 91 * day, "evt_new": now - day})
    await redis.sadd("events:correlation:req_1", "evt_old")
    await redis.zadd("deliveries:whsub_1", {"del_old": now - 15 * day, "del_new": now - day})
    await redis.set("events:odd-string", "not a zset")
    await start_app(RETENTION_CLEANUP_INTERVAL_MS=3_600_000)
    for _ in range(100):
        if await redis.zcard("deliveries:whsub_1") == 1:
            break
        await asyncio.sleep(0.05)
    assert await redis.zrange("events:acme", 0, -1) == [b"evt_new"]
    assert await redis.zrange("events:_all", 0, -1) == [b"evt_new"]
    assert await redis.zrange("deliveries:whsub_1", 0, -1) == [b"del_new"]
    assert await redis.smembers("events:correlation:req_1") == {b"evt_old"}
    assert await redis.get("events:odd-string") == b"not a zset"
    # one instance per interval: a second instance finds the lock taken
    assert await redis.pttl("maintenance:events-retention:lock") > 3_000_000
    await redis.zadd("deliveries:whsub_1", {"del_old2": now - 15 * day})
    await start_app(RETENTION_CLEANUP_INTERVAL_MS=3_600_000)
    await asyncio.sleep(0.5)
    assert await redis.zcard("deliveries:whsub_1") == 2


async def test_security_config_is_read_from_redis(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    sub = await admin.subscription(receiver.url())
    blocked = await admin.deliver(sub)  # no stored config: defaults forbid http
    await start_app()
    (doc,) = await admin.wait_status([blocked], {"FAILED"})
    assert "http is not allowed" in doc["error_message"]
    assert receiver.requests == []
    await redis.set(
        "config:webhook-security",
        json.dumps(
            {
                "allow_http": True,
                "blocked_cidr_ranges": ["192.0.2.0/24"],
                "allowed_url_patterns": [],
            }
        ),
    )
    await asyncio.sleep(5.5)  # the refresher reads the config every 5 s
    allowed = await admin.deliver(sub)
    await admin.wait_status([allowed], {"SUCCESS"})


async def test_never_more_than_the_concurrency_in_flight(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    in_flight = 0
    peak = 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.2)
        in_flight -= 1
        return web.Response(status=200)

    receiver.behaviours["/slow"] = slow
    await admin.security()
    # many subscriptions, none near its own bound: only the process-wide bound applies
    subs = [await admin.subscription(receiver.url("/slow")) for _ in range(16)]
    ids = [await admin.deliver(subs[i % len(subs)]) for i in range(96)]
    app = await start_app(DISPATCH_CONCURRENCY=8, DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION=8)
    await admin.wait_status(ids, {"SUCCESS"}, timeout=30)
    assert peak == 8
    assert app.pipeline.counts.claimed == 0


async def test_idle_workers_do_not_pile_up_wake_ups(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    sub = await admin.subscription(receiver.url())
    app = await start_app(DISPATCH_CONCURRENCY=4)
    await asyncio.sleep(2.5)  # idle workers re-check every second
    assert len(app.pipeline.gate._idle) <= 4
    delivery_id = await admin.deliver(sub)
    await admin.wait_status([delivery_id], {"SUCCESS"}, timeout=10)
