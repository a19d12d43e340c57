"""Lost replies and slow round trips, injected by a proxy between the daemon and Redis (issue
10, defects 6 and 9): a fenced step that ran but whose answer never came is harmless when
called again, and a retry scheduled during a promote round trip is not forgotten."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.connection import RedisState
from cycles_events.maintenance import RetryPromoter, forever
from cycles_events.store import Store
from cycles_events.supervise import Faults
from tests.faultproxy import FaultProxy, command
from tests.integration.conftest import StartApp
from tests.support import Admin, Receiver, RedisServer, metric, status, wait_until

ONE_TRY = {
    "max_retries": 0,
    "initial_delay_ms": 100,
    "backoff_multiplier": 1.0,
    "max_delay_ms": 1000,
}


def sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(redis_server.port) as p:
        yield p


@pytest.mark.parametrize("lost", [1, 2])  # 2: redis-py's own retry loses its answer too
async def test_a_terminal_failure_whose_reply_was_lost_counts_once(
    start_app: StartApp,
    admin: Admin,
    receiver: Receiver,
    redis: Redis,
    proxy: FaultProxy,
    lost: int,
) -> None:
    await admin.security()
    receiver.behaviours["/down"] = status(500)
    # one terminal failure makes 2 (not > 2: still ACTIVE); counted twice it would disable
    sub = await admin.subscription(
        receiver.url("/down"),
        retry_policy=ONE_TRY,
        disable_after_failures=2,
        consecutive_failures=1,
    )
    rule = proxy.drop_reply(command("EVALSHA", sha(keys.OUTCOME)), times=lost)
    app = await start_app(REDIS_URL=proxy.url)
    delivery_id = await admin.deliver(sub)
    (doc,) = await admin.wait_status([delivery_id], {"FAILED"})
    await wait_until(lambda: redis.llen("dispatch:processing"), 0)

    async def settled() -> bool:
        return app.pipeline.counts.recording == 0

    await wait_until(settled, True)  # the write was tried again until an answer came
    assert rule.hits == lost and proxy.dropped_replies == lost  # it ran, its answer was lost
    sub_doc = await admin.sub_record(sub)
    assert sub_doc["consecutive_failures"] == 2 and sub_doc["status"] == "ACTIVE"
    assert doc["attempts"] == 1 and len(receiver.requests) == 1  # nothing sent again
    await wait_until(lambda: redis.zcard("events:__system__"), 1)
    saved = [
        json.loads(await redis.get(f"event:{e.decode()}"))
        for e in await redis.zrange("events:__system__", 0, -1)
    ]
    assert [e["event_type"] for e in saved] == ["system.webhook_delivery_failed"]
    assert await redis.zcard("dispatcher:event-outbox:pending") == 0


@pytest.mark.parametrize("lost", [1, 2])
@pytest.mark.parametrize("idle", [False, True])  # True: the claim that adopts what BLMOVE moved
@pytest.mark.parametrize("ran", [True, False])  # False: the claim was lost on its way, not run
async def test_a_claim_whose_reply_was_lost_is_not_left_behind(
    start_app: StartApp,
    admin: Admin,
    receiver: Receiver,
    redis: Redis,
    proxy: FaultProxy,
    lost: int,
    idle: bool,
    ran: bool,
) -> None:
    await admin.security()
    sub = await admin.subscription(receiver.url())
    claims = command("EVALSHA", sha(keys.CLAIM))
    fault = proxy.drop_reply if ran else proxy.fail_request
    ids = [] if idle else [await admin.deliver(sub) for _ in range(20)]
    if not idle:  # the start-up claims take the backlog
        rule = fault(claims, times=lost)
    app = await start_app(REDIS_URL=proxy.url)  # the recovery idle is 180 s: no sweep helps
    if idle:  # the claims of deliveries that come after the blocking wait

        async def blocked() -> bool:
            return app.pipeline.claimer.blocking

        await wait_until(blocked, True)
        rule = fault(claims, times=lost)
        ids = [await admin.deliver(sub) for _ in range(3)]
    docs = await admin.wait_status(ids, {"SUCCESS"}, timeout=10)
    assert rule.hits == lost == (proxy.dropped_replies if ran else proxy.failed_requests)
    assert len(receiver.requests) == len(docs) == len(ids)
    await wait_until(lambda: redis.llen("dispatch:processing"), 0)
    assert await redis.hlen("dispatch:processing:claim_owner") == 0
    assert metric(app, "cycles_webhook_dispatch_recovered_total") == 0


async def test_a_retry_notified_during_a_promote_round_trip_is_not_forgotten(
    redis: Redis, proxy: FaultProxy
) -> None:
    # every PROMOTE answer takes a second to come back; a retry is scheduled while one is on
    # its way: the promoter must not sleep its whole 10 s poll interval before promoting it
    proxy.delay_reply(command("EVALSHA", sha(keys.PROMOTE)), 1.0)
    client = Redis.from_url(proxy.url)
    promoter = RetryPromoter(
        Store(client, state=RedisState()), poll_interval_ms=10_000, batch_size=100
    )
    loop = asyncio.create_task(forever("retry-promoter", promoter.step, Faults()))
    try:
        await wait_until(lambda: _sleeping(proxy), True)  # its first round trip is over
        await asyncio.sleep(0.2)
        promoter.notify(0)  # wakes it: a round trip starts
        await wait_until(lambda: _in_flight(proxy, 2), True)
        due_ms = int(time.time() * 1000)
        await redis.zadd("dispatch:retry", {"del_notified00000001": due_ms})
        promoter.notify(due_ms)  # while that round trip is under way
        started = time.monotonic()
        await wait_until(lambda: redis.llen("dispatch:pending"), 1, timeout=9)
        assert time.monotonic() - started < 5.0  # not the poll interval (10 s)
    finally:
        loop.cancel()
        await client.aclose()


async def _sleeping(proxy: FaultProxy) -> bool:
    await asyncio.sleep(1.1)
    return proxy.commands["EVALSHA"] >= 1


async def _in_flight(proxy: FaultProxy, n: int) -> bool:
    return proxy.commands["EVALSHA"] >= n
