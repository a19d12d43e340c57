"""Fencing from outside the daemons: a recovered claimant, a Redis outage longer than the
recovery idle, clock skew between instances (issue 10, defects 5 and 7)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from redis.asyncio import Redis

from tests.e2e.conftest import Daemon, wait_for
from tests.support import Admin, Receiver, RedisServer, fail_first, wait_until

pytestmark = pytest.mark.e2e

SKEW_SHIM = str(Path(__file__).parent / "skew")
ONE_TRY = {
    "max_retries": 0,
    "initial_delay_ms": 100,
    "backoff_multiplier": 1.0,
    "max_delay_ms": 1000,
}


def paced(seconds: float) -> Callable[[web.Request], object]:
    async def respond(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=200)

    return respond


def per_event(receiver: Receiver) -> Counter[str]:
    return Counter(r.headers["X-Cycles-Event-Id"] for r in receiver.requests)


async def test_a_claimant_whose_claim_was_recovered_changes_nothing(
    daemon_factory: Callable[..., Daemon], admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    """Defect 5: a paused daemon's late 500 neither disables the subscription nor saves events."""
    await admin.security()
    answered: set[str] = set()

    async def late_500_then_200(request: web.Request) -> web.StreamResponse:
        event_id = request.headers["X-Cycles-Event-Id"]
        if event_id in answered:
            return web.Response(status=200)
        answered.add(event_id)
        await asyncio.sleep(4)
        return web.Response(status=500)

    receiver.behaviours["/late"] = late_500_then_200
    # one more terminal failure would disable it (1 + 1 > 1)
    sub = await admin.subscription(
        receiver.url("/late"),
        retry_policy=ONE_TRY,
        disable_after_failures=1,
        consecutive_failures=1,
    )
    paused = daemon_factory(DISPATCH_PROCESSING_RECOVERY_IDLE_MS=1000)
    paused.start()
    await paused.wait_ready()
    delivery_id = await admin.deliver(sub)
    await receiver.wait_count(1)
    paused.signal(signal.SIGSTOP)  # past the recovery idle, with its request under way
    try:
        other = daemon_factory(DISPATCH_PROCESSING_RECOVERY_IDLE_MS=1000)
        other.start()
        await admin.wait_status([delivery_id], {"SUCCESS"}, timeout=20)
        await asyncio.sleep(4.5)  # the first request has been answered 500 meanwhile
    finally:
        paused.signal(signal.SIGCONT)
    await wait_for(
        lambda: bool(paused.actions("claim_lost")), 20, "the late outcome was not fenced"
    )
    assert (await admin.record(delivery_id))["status"] == "SUCCESS"
    sub_doc = await admin.sub_record(sub)
    assert sub_doc["status"] == "ACTIVE" and sub_doc["consecutive_failures"] == 0
    assert "last_failure_at" not in sub_doc
    assert await redis.zcard("dispatcher:event-outbox:pending") == 0
    saved = [
        json.loads(await redis.get(f"event:{e.decode()}"))
        for e in await redis.zrange("events:_all", 0, -1)
    ]
    assert [e["event_type"] for e in saved if e["source"] == "cycles-events"] == []


async def _steady_push(admin: Admin, subs: list[str], n: int, rate: float) -> list[str]:
    ids = []
    for i in range(n):
        ids.append(await admin.deliver(subs[i % len(subs)]))
        await asyncio.sleep(1 / rate)
    return ids


async def test_a_redis_outage_longer_than_the_recovery_idle_sends_nothing_twice(
    daemon_factory: Callable[..., Daemon], persistent_redis: RedisServer, receiver: Receiver
) -> None:
    """Defect 7: 2 daemons, a Redis stop half as long again as the recovery idle."""
    client = Redis.from_url(persistent_redis.url)
    admin = Admin(client)
    await admin.security()
    receiver.behaviours["/slow"] = paced(1.0)  # many claims in flight when Redis goes away
    subs = [await admin.subscription(receiver.url("/slow")) for _ in range(16)]
    daemons = [
        daemon_factory(persistent_redis, DISPATCH_PROCESSING_RECOVERY_IDLE_MS=2000)
        for _ in range(2)
    ]
    for d in daemons:
        d.start()
    for d in daemons:
        await d.wait_ready()
    ids = await _steady_push(admin, subs, 200, 100)
    await receiver.wait_count(100, timeout=20)
    persistent_redis.stop()
    await asyncio.sleep(3)
    persistent_redis.start()
    await client.aclose()
    client = Redis.from_url(persistent_redis.url)
    admin = Admin(client)
    ids += await _steady_push(admin, subs, 200, 100)
    docs = await admin.wait_status(ids, {"SUCCESS", "FAILED"}, timeout=90)
    assert {d["status"] for d in docs} == {"SUCCESS"}  # every one was answered 200
    sent = per_event(receiver)
    twice = {e: n for e, n in sent.items() if n > 1}
    assert twice == {}, f"{len(twice)} of {len(ids)} sent more than once"
    assert all(d.proc is not None and d.proc.poll() is None for d in daemons)
    await client.aclose()


async def test_a_daemon_whose_clock_is_behind_keeps_its_claims(
    daemon_factory: Callable[..., Daemon], admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    """Defect 7: claim times are Redis's clock, so a skewed instance's live claims stay its own."""
    await admin.security()
    receiver.behaviours["/slow"] = paced(0.5)
    subs = [await admin.subscription(receiver.url("/slow")) for _ in range(4)]
    behind = daemon_factory(
        DISPATCH_PROCESSING_RECOVERY_IDLE_MS=3000,
        PYTHONPATH=os.pathsep.join(filter(None, [SKEW_SHIM, os.environ.get("PYTHONPATH")])),
        CYCLES_TEST_CLOCK_SKEW_S=-600,
    )
    behind.start()
    await behind.wait_ready()
    ids = [await admin.deliver(subs[i % 4]) for i in range(120)]
    await receiver.wait_count(20, timeout=20)  # the skewed daemon holds live claims now
    sweeper = daemon_factory(DISPATCH_PROCESSING_RECOVERY_IDLE_MS=3000)
    sweeper.start()
    docs = await admin.wait_status(ids, {"SUCCESS"}, timeout=60)
    assert len(docs) == len(ids)
    twice = {e: n for e, n in per_event(receiver).items() if n > 1}
    assert twice == {}
    assert not sweeper.actions("claims_recovered")
    # the skewed daemon's own retry times are Redis's clock too: a retry is not ten minutes late
    receiver.behaviours["/once"] = fail_first()
    retried = await admin.subscription(
        receiver.url("/once"),
        retry_policy={
            "max_retries": 2,
            "initial_delay_ms": 500,
            "backoff_multiplier": 1.0,
            "max_delay_ms": 1000,
        },
    )
    sweeper.signal(signal.SIGTERM)
    await asyncio.to_thread(sweeper.wait, 30)
    late = await admin.deliver(retried)
    (doc,) = await admin.wait_status([late], {"SUCCESS"}, timeout=20)
    assert doc["attempts"] == 2
    await wait_until(lambda: redis.llen("dispatch:processing"), 0)
