"""The daemon behind Redis Sentinel follows a failover of the primary under load (issue 11)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from tests.e2e.conftest import Daemon
from tests.sentinel import SentinelSet
from tests.support import Admin, Receiver, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
async def sentinels() -> AsyncIterator[SentinelSet]:
    sset = SentinelSet(persistent=True, password="redis-pw", sentinel_password="sentinel-pw")
    await asyncio.to_thread(sset.start)
    yield sset
    sset.cleanup()


def _ready(daemon: Daemon) -> bool:
    try:
        return daemon.health()[0] == 200
    except OSError:
        return False


async def test_the_daemon_follows_a_failover_and_loses_nothing_redis_kept(
    daemon_factory: Callable[..., Daemon], sentinels: SentinelSet, receiver: Receiver
) -> None:
    primary: Redis = sentinels.async_sentinel().master_for(sentinels.master_name)
    admin = Admin(primary)
    await admin.security()
    subs = [await admin.subscription(receiver.url()) for _ in range(4)]
    daemon = daemon_factory(
        REDIS_URL="",
        REDIS_SENTINEL_MASTER=sentinels.master_name,
        REDIS_SENTINEL_NODES=sentinels.nodes,
        REDIS_PASSWORD="redis-pw",
        REDIS_SENTINEL_PASSWORD="sentinel-pw",
    )
    daemon.start()
    await daemon.wait_ready()
    before = [await admin.deliver(subs[i % 4]) for i in range(100)]
    await admin.wait_status(before, {"SUCCESS"})
    await primary.execute_command("WAIT", 1, 2000)

    pushed: list[str] = []
    stop = asyncio.Event()

    async def push() -> None:  # a steady load through the failover; a push that failed is lost
        writer = Admin(sentinels.async_sentinel().master_for(sentinels.master_name))
        i = 0
        while not stop.is_set():
            try:
                pushed.append(await writer.deliver(subs[i % 4]))
            except Exception:
                await asyncio.sleep(0.05)
            i += 1
            await asyncio.sleep(0.01)

    pusher = asyncio.create_task(push())
    await asyncio.sleep(1)
    old = sentinels.kill_primary()
    killed_at = time.monotonic()
    seen_down = False
    deadline = killed_at + 30
    while time.monotonic() < deadline and not seen_down:
        seen_down = not _ready(daemon)
        await asyncio.sleep(0.1)
    await sentinels.await_new_primary(old, timeout=30)
    received_before = len(receiver.requests)
    await receiver.wait_count(received_before + 1, timeout=30)
    first_delivery_s = time.monotonic() - killed_at
    await asyncio.sleep(2)
    stop.set()
    await pusher
    await wait_until(lambda: asyncio.to_thread(_ready, daemon), True, timeout=30)

    # what the new primary kept (a push acknowledged just before the kill may be gone with it)
    kept = [d for d in pushed if await primary.exists(f"delivery:{d}")]
    assert len(kept) >= len(pushed) - 20
    docs = await admin.wait_status(kept, {"SUCCESS"}, timeout=60)
    assert len(docs) == len(kept)
    assert await primary.llen("dispatch:processing") == 0
    assert seen_down, "readiness never turned DOWN while the primary was gone"
    assert daemon.proc is not None and daemon.proc.poll() is None
    print(f"\nfailover: first delivery {first_delivery_s:.1f} s after the primary was killed")
    await primary.aclose()
