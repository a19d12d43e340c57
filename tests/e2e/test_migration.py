"""A rolling migration from the Java service on one Redis (issue 11, contract section 10).

Java-protocol workers (tests/javapeer, written from the contract's description of Java's
protocol) work a backlog; some die mid-flight (a claim left after its send, an entry left
between BLMOVE and its claim script, a SIGKILL during sends) and one never publishes its
outbox; our daemons start beside the survivors, and then Java is stopped.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from redis.asyncio import Redis

from cycles_events import metaevents
from cycles_events.signing import verify
from tests.e2e.conftest import Daemon
from tests.javapeer import PeerProcess
from tests.support import KEY_B64, Admin, Receiver, RedisServer, wait_until

pytestmark = pytest.mark.e2e

SECRET = "whsec_migration_secret"
FAST = {"max_retries": 2, "initial_delay_ms": 200, "backoff_multiplier": 2.0, "max_delay_ms": 1000}
IDLE_MS = 4000


@pytest.fixture
async def peers(persistent_redis: RedisServer) -> AsyncIterator[Callable[..., PeerProcess]]:
    made: list[PeerProcess] = []

    def make(**options: object) -> PeerProcess:
        peer = PeerProcess(
            redis_url=persistent_redis.url,
            encryption_key=KEY_B64,
            recovery_idle_ms=IDLE_MS,
            recovery_interval_ms=1000,
            pending_timeout_s=0.5,
            http_timeout_s=5.0,
            **options,
        )
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.cleanup()


def behaviours(receiver: Receiver) -> None:
    """Healthy, slow, flaky (first request of every 4th event 500s) and always-500 paths."""
    seen: Counter[str] = Counter()

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.2)
        return web.Response(status=200)

    async def flaky(request: web.Request) -> web.StreamResponse:
        event_id = request.headers["X-Cycles-Event-Id"]
        seen[event_id] += 1
        failing = int(event_id[-2:], 16) % 4 == 0 and seen[event_id] == 1
        return web.Response(status=500 if failing else 200)

    async def down(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500)

    receiver.behaviours.update({"/slow": slow, "/flaky": flaky, "/down": down})


async def test_a_rolling_migration_from_java_loses_nothing(
    daemon_factory: Callable[..., Daemon],
    persistent_redis: RedisServer,
    receiver: Receiver,
    peers: Callable[..., PeerProcess],
) -> None:
    redis = Redis.from_url(persistent_redis.url)
    admin = Admin(redis)
    await admin.security()
    behaviours(receiver)
    subs = [
        await admin.subscription(
            receiver.url(path), secret=SECRET, encrypt=i % 2 == 0, retry_policy=FAST
        )
        for i, path in enumerate(["/ok", "/ok", "/slow", "/slow", "/flaky", "/flaky"])
    ]
    # both implementations count its failures: disabled when the count exceeds 3
    down = await admin.subscription(
        receiver.url("/down"), secret=SECRET, retry_policy=FAST, disable_after_failures=3
    )
    ids = [await admin.deliver(subs[i % len(subs)]) for i in range(400)]
    down_ids = [await admin.deliver(down) for _ in range(8)]

    java = [
        peers(die_after_send=10),  # dies after an answer, before writing it: a claim is left
        peers(die_after_blmove=5),  # dies between BLMOVE and its claim: an owner-less entry
        peers(publisher=False, workers=2),  # stages meta-events it never publishes
        peers(workers=2),
    ]
    for peer in java:
        peer.start()
    for peer in java:
        await peer.wait_started()
    assert await java[0].wait_exit(30) == 137 and await java[1].wait_exit(30) == 137
    await receiver.wait_count(60, timeout=30)
    await java[2].wait_for("outcome", timeout=30)

    ours = [
        daemon_factory(persistent_redis, DISPATCH_PROCESSING_RECOVERY_IDLE_MS=IDLE_MS)
        for _ in range(2)
    ]
    for daemon in ours:
        daemon.start()
    for i in range(200):  # the producers keep writing during the migration
        ids.append(await admin.deliver(subs[i % len(subs)]))
        await asyncio.sleep(0.01)
    java[2].signal(signal.SIGKILL)  # a Java instance killed with sends under way
    await asyncio.sleep(2)
    for peer in java:
        if peer.returncode is None:
            assert await peer.stop() == 0
    exits = [peer.returncode for peer in java]
    assert exits[0] == 137 and exits[1] == 137 and exits[2] == -signal.SIGKILL

    everything = ids + down_ids
    docs = {
        d["delivery_id"]: d
        for d in await admin.wait_status(everything, {"SUCCESS", "FAILED"}, timeout=120)
    }
    for queue in ("dispatch:processing", "dispatch:pending"):
        await wait_until(lambda q=queue: redis.llen(q), 0, timeout=30)  # type: ignore[misc]
    await wait_until(lambda: redis.zcard("dispatch:retry"), 0, timeout=30)
    await wait_until(lambda: redis.zcard("dispatcher:event-outbox:pending"), 0, timeout=30)

    # nothing lost, nothing stuck: every delivery final, every one of the healthy ones delivered
    assert all(docs[d]["status"] == "SUCCESS" for d in ids)
    # never unsigned, always with the subscription's secret
    assert all(verify(SECRET, r.body, r.headers["X-Cycles-Signature"]) for r in receiver.requests)
    # duplicates only where a kill makes them unavoidable (one per dead Java instance at most)
    ok_answers = Counter(
        r.headers["X-Cycles-Event-Id"] for r in receiver.requests if r.path in ("/ok", "/slow")
    )
    duplicates = sum(n - 1 for n in ok_answers.values() if n > 1)
    cut_short = {  # claimed by a Java instance that died before writing the outcome
        docs[r["delivery_id"]]["event_id"]
        for peer in (java[0], java[2])
        for r in peer.find("claimed")
        if not peer.find("outcome", r["delivery_id"]) and r["delivery_id"] in docs
    }
    unexplained = {e for e, n in ok_answers.items() if n > 1} - cut_short
    assert not unexplained, "a duplicate no kill explains"

    # the auto-disable: both implementations agree on "exceeds" (the 4th failure disables);
    # sends under way when it happened still end FAILED and are counted, with no second event
    sub_doc = await admin.sub_record(down)
    assert sub_doc["status"] == "DISABLED"
    failed_sent = [d for d in down_ids if docs[d]["error_message"] == "HTTP 500"]
    assert sub_doc["consecutive_failures"] == len(failed_sent) >= 4
    assert all(
        docs[d]["error_message"] == "Subscription not active: DISABLED"
        for d in down_ids
        if d not in failed_sent
    )

    # every staged meta-event saved exactly once, under the id Java derives, whoever staged it
    saved = Counter(e.decode() for e in await redis.zrange("events:__system__", 0, -1))
    for delivery_id in failed_sent:
        event_id = metaevents.event_id_for(metaevents.failed_task_id(down, delivery_id))
        assert saved[event_id] == 1
        stored = json.loads(await redis.get(f"event:{event_id}"))
        assert stored["data"]["details"]["delivery_id"] == delivery_id
    tenant_events = [
        json.loads(await redis.get(f"event:{e.decode()}"))
        for e in await redis.zrange("events:acme", 0, -1)
    ]
    (disabled,) = [e for e in tenant_events if e["event_type"] == "webhook.disabled"]
    disabling = disabled["correlation_id"].rsplit(":", 1)[1]
    assert disabling in failed_sent and disabled["data"]["previous_status"] == "ACTIVE"
    assert disabled["event_id"] == metaevents.event_id_for(
        metaevents.disabled_task_id(down, disabling)
    )
    assert await redis.llen("dispatcher:event-outbox:failed") == 0
    assert not await redis.keys("dispatcher:event-outbox:task:*")
    assert not await redis.exists("dispatch:ordering:lock")
    recovered = sum(len(d.actions("claims_recovered")) for d in ours)
    ours_published = {r["task_id"] for d in ours for r in d.actions("meta_event_published")}
    java_published = {r.get("task_id") for p in java for r in p.find("published")}
    assert not ours_published & java_published  # each task saved once, by one publisher
    print(
        f"\nmigration: {len(everything)} deliveries, {len(receiver.requests)} requests, "
        f"{duplicates} duplicate sends, {len(failed_sent)} auto-disable failures, "
        f"{len(saved)} system events ({len(ours_published)} published by us, "
        f"{len(java_published)} by Java), {recovered} recovery passes that recovered claims"
    )
    await redis.aclose()
