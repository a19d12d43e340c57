"""Faults injected from outside a running daemon: keys of the wrong type, corrupt records,
deep orphans (issue 10, defects 1 to 4 and 8)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from tests.e2e.conftest import Daemon
from tests.support import Admin, Receiver, fail_first, hang, wait_until

pytestmark = pytest.mark.e2e

FAST = {"max_retries": 3, "initial_delay_ms": 100, "backoff_multiplier": 1.0, "max_delay_ms": 1000}


def sends(receiver: Receiver, event_id: str) -> int:
    return sum(1 for r in receiver.requests if r.headers["X-Cycles-Event-Id"] == event_id)


async def test_a_wrong_typed_retry_zset_loses_nothing_and_kills_nothing(
    daemon_factory: Callable[..., Daemon], admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    """Defect 1: with dispatch:retry of the wrong type for 3 s, every retry still lands."""
    await admin.security()
    receiver.behaviours["/flaky"] = fail_first()
    subs = [await admin.subscription(receiver.url("/flaky"), retry_policy=FAST) for _ in range(4)]
    daemon = daemon_factory()
    daemon.start()
    await daemon.wait_ready()
    await redis.set("dispatch:retry", "an operator's mistake")
    ids = [await admin.deliver(subs[i % 4]) for i in range(104)]
    await receiver.wait_count(50, timeout=30)  # first attempts failed: retries to be written
    await asyncio.sleep(3)
    await redis.delete("dispatch:retry")
    docs = await admin.wait_status(ids, {"SUCCESS"}, timeout=60)
    assert all(d["attempts"] == 2 for d in docs)
    assert all(sends(receiver, d["event_id"]) == 2 for d in docs)  # nothing sent again
    assert daemon.proc is not None and daemon.proc.poll() is None  # the promoter survived
    assert daemon.actions("unexpected_error")  # logged and counted, not silent
    assert await redis.llen("dispatch:processing") == 0


async def test_a_wrong_typed_quarantine_fails_only_its_own_items(
    daemon_factory: Callable[..., Daemon], admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    """Defect 2: a poison quarantine entry never fails (or re-sends) its batch-mates."""
    await admin.security()
    sub = await admin.subscription(receiver.url())
    await redis.set("dispatch:failed", "an operator's mistake")
    corrupt = [f"del_badbad{i:010d}" for i in range(5)]
    good: list[str] = []
    for i, delivery_id in enumerate(corrupt):  # corrupt records in the middle of good ones
        good += [await admin.deliver(sub) for _ in range(6)]
        await redis.set(f"delivery:{delivery_id}", "{corrupt " + str(i))
        await redis.lpush("dispatch:pending", delivery_id)
    good += [await admin.deliver(sub) for _ in range(6)]
    daemon = daemon_factory()
    daemon.start()
    docs = await admin.wait_status(good, {"SUCCESS"}, timeout=30)
    await asyncio.sleep(1)  # the queue sampler ran (at start) on the wrong-typed key
    assert all(sends(receiver, d["event_id"]) == 1 for d in docs)
    assert daemon.proc is not None and daemon.proc.poll() is None
    await redis.delete("dispatch:failed")
    await wait_until(lambda: redis.llen("dispatch:failed"), len(corrupt), timeout=30)
    quarantined = [
        json.loads(e)["delivery_id"] for e in await redis.lrange("dispatch:failed", 0, -1)
    ]
    assert sorted(quarantined) == sorted(corrupt)
    assert await redis.llen("dispatch:processing") == 0
    assert len(receiver.requests) == len(good)


async def test_a_park_that_cannot_be_written_is_not_stuck_until_restart(
    daemon_factory: Callable[..., Daemon], admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    """Defect 3: a release (park) that fails keeps trying; nothing waits for a restart."""
    await admin.security()
    receiver.behaviours["/slow"] = hang(1.2)
    slow = await admin.subscription(receiver.url("/slow"))
    daemon = daemon_factory(DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION=1, DISPATCH_CONCURRENCY=4)
    daemon.start()
    await daemon.wait_ready()
    await redis.set("dispatch:retry", "an operator's mistake")
    ids = [await admin.deliver(slow) for _ in range(8)]  # overflow of a stuck subscription
    await asyncio.sleep(3)
    await redis.delete("dispatch:retry")
    docs = await admin.wait_status(ids, {"SUCCESS"}, timeout=60)
    assert all(sends(receiver, d["event_id"]) == 1 for d in docs)
    assert await redis.llen("dispatch:processing") == 0
    assert daemon.starts == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"attempts": float("nan")},
        {"attempts": float("inf")},
        {"attempts": 1.5},
        {"attempts": -1},
        {"attempted_at": "99999-01-01T00:00:00Z"},
        {"attempted_at": "yesterday"},
        {"next_retry_at": "soon", "status": "RETRYING"},
        {"status": "pending"},
        {"status": ["PENDING"]},
    ],
)
async def test_unusable_records_are_quarantined_at_once(
    daemon_factory: Callable[..., Daemon],
    admin: Admin,
    receiver: Receiver,
    redis: Redis,
    fields: dict[str, object],
) -> None:
    """Defect 4: NaN, 1e400 (inf), huge or invalid timestamps: quarantined, never sent."""
    await admin.security()
    sub = await admin.subscription(receiver.url())
    event = await admin.event()
    delivery_id = await admin.delivery(sub, event)
    doc = await admin.record(delivery_id)
    doc.update(fields)
    raw = json.dumps(doc)  # NaN and Infinity as Python's json writes them; 1e400 reads as inf
    if fields.get("attempts") == float("inf"):
        raw = raw.replace("Infinity", "1e400")
    await redis.set(f"delivery:{delivery_id}", raw, keepttl=True)
    daemon = daemon_factory()
    daemon.start()
    await wait_until(lambda: redis.llen("dispatch:failed"), 1, timeout=20)
    entry = json.loads(await redis.lindex("dispatch:failed", 0))
    assert entry["delivery_id"] == delivery_id and entry["reason"] == "corrupt_record"
    assert entry["payload"] == raw
    assert receiver.requests == []
    assert await redis.llen("dispatch:processing") == 0
    assert not daemon.actions("unexpected_error")


async def test_an_orphan_deep_in_a_long_processing_list_is_recovered(
    daemon_factory: Callable[..., Daemon], admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    """Defect 8: an orphan beyond the first 10,000 entries of dispatch:processing."""
    await admin.security()
    sub = await admin.subscription(receiver.url())
    orphan = await admin.deliver(sub)
    assert await redis.rpop("dispatch:pending") == orphan.encode()
    # 10,050 live claims of another instance (kept fresh: claimed in the far future), and at
    # the deep end an entry a crashed BLMOVE left behind: no claim time, no owner
    live = [f"del_live{i:012d}" for i in range(10_050)]
    pipe = redis.pipeline(transaction=False)
    for chunk in range(0, len(live), 1000):
        part = live[chunk : chunk + 1000]
        pipe.lpush("dispatch:processing", *part)
        pipe.zadd("dispatch:processing:claimed_at", dict.fromkeys(part, 99_999_999_999_999))
        pipe.hset("dispatch:processing:claim_owner", mapping=dict.fromkeys(part, "java-uuid"))
    await pipe.execute()
    await redis.rpush("dispatch:processing", orphan)
    assert await redis.lpos("dispatch:processing", orphan) == 10_050
    daemon = daemon_factory(DISPATCH_PROCESSING_RECOVERY_IDLE_MS=1000)
    daemon.start()
    (doc,) = await admin.wait_status([orphan], {"SUCCESS"}, timeout=30)
    assert sends(receiver, doc["event_id"]) == 1
    assert await redis.llen("dispatch:processing") == len(live)  # live claims untouched
