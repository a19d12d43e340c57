"""The Sentinel harness: redis-py's asyncio Sentinel client follows its failovers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.sentinel import HOST, SentinelSet

PASSWORD = "data-pw"
SENTINEL_PASSWORD = "sentinel-pw"


def _running(sset: SentinelSet) -> Iterator[SentinelSet]:
    sset.start()
    try:
        yield sset
    finally:
        print(sset.log_tails())  # pytest shows captured output only when the test failed
        sset.cleanup()


async def _write_after_demotion(master: Redis, key: str, value: str) -> None:
    """SET through a master_for client whose pooled connection may be on the demoted primary."""
    # that connection is still open: READONLY becomes ConnectionError, and redis-py's own retries
    # reconnect to the same address (redis/redis-py#3874); the next command asks the sentinels
    try:
        await master.set(key, value)
    except RedisConnectionError:
        await master.set(key, value)


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    yield from _running(SentinelSet(persistent=True))


@pytest.fixture
def secured() -> Iterator[SentinelSet]:
    yield from _running(SentinelSet(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD))


async def test_master_for_follows_a_killed_primary(sentinels: SentinelSet) -> None:
    assert sentinels.master_name == "mymaster"
    assert sentinels.nodes == ",".join(f"{h}:{p}" for h, p in sentinels.addresses)
    assert len(sentinels.addresses) == 3
    assert sentinels.primary_port() == sentinels.servers[0].port
    assert sentinels.wait_ready(timeout=1) == sentinels.servers[0].port

    sentinel = sentinels.async_sentinel()
    master = sentinel.master_for(sentinels.master_name)
    try:
        await master.set("harness:key", "before")
        assert await master.execute_command("WAIT", 1, 2000) == 1  # on the replica before the kill

        started = time.monotonic()
        old = sentinels.kill_primary()
        new = await sentinels.await_new_primary(old, timeout=15)
        print(f"failover after SIGKILL took {time.monotonic() - started:.2f}s")
        assert new != old
        assert new == sentinels.servers[1].port

        assert await master.get("harness:key") == b"before"  # the same client reconnected
        fresh = sentinel.master_for(sentinels.master_name)
        assert await fresh.connection_pool.get_master_address() == (HOST, new)  # type: ignore[attr-defined]
        await fresh.set("harness:key", "after")
        assert await master.get("harness:key") == b"after"
        await fresh.aclose()
    finally:
        await master.aclose()
        await sentinel.aclose()


async def test_passwords_manual_failover_and_restart(secured: SentinelSet) -> None:
    with pytest.raises(AuthenticationError):  # no retries: redis-py retries auth errors ~3 s
        bare = Redis(host=HOST, port=secured.addresses[0][1], retry=Retry(NoBackoff(), 0))
        try:
            await bare.execute_command("SENTINEL", "MASTERS")
        finally:
            await bare.aclose()

    sentinel = secured.async_sentinel()
    master = sentinel.master_for(secured.master_name)
    try:
        await master.set("harness:key", "v1")
        assert await master.execute_command("WAIT", 1, 2000) == 1

        old = secured.primary_port()
        new = await secured.afailover(timeout=15)
        assert new != old
        await _write_after_demotion(master, "harness:other", "x")  # now on the new primary
        assert await master.connection_pool.get_master_address() == (HOST, new)  # type: ignore[attr-defined]
        assert await master.get("harness:key") == b"v1"
        await master.set("harness:key", "v2")

        await asyncio.to_thread(secured.wait_ready, 15)  # failover() demoted the old primary
        previous = Redis(host=HOST, port=old, password=PASSWORD)
        try:
            assert await master.execute_command("WAIT", 1, 2000) == 1
            assert await previous.get("harness:key") == b"v2"
            assert (await previous.info("replication"))["role"] == "slave"
        finally:
            await previous.aclose()

        killed = secured.kill_primary()
        assert killed == new
        assert await secured.await_new_primary(killed, timeout=15) == old
        await secured.arestart(killed)
        assert await master.get("harness:key") == b"v2"
    finally:
        await master.aclose()
        await sentinel.aclose()
    secured.cleanup()
    assert not secured.root.exists()
    assert not any(n.alive() for n in (*secured.servers, *secured.sentinels))
