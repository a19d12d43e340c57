"""The OUTCOME script's subscription step, called straight through the store on a real Redis:
a subscription key of the wrong type fails only its own item; a changed one conflicts."""

from __future__ import annotations

from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.connection import RedisState
from cycles_events.store import Store
from cycles_events.storevalues import Write


async def claimed(store: Store, redis: Redis, ids: list[str]) -> str:
    """Put ids on dispatch:pending with a record each and claim them all under one token."""
    for i in ids:
        await redis.set(keys.delivery(i), f'{{"id": "{i}", "status": "PENDING"}}')
    await redis.lpush(keys.PENDING, *ids)
    token = "test-instance:1"
    got = await store.claim(len(ids), token)
    assert sorted(got.ids) == sorted(ids)
    return token


async def test_a_wrong_typed_subscription_fails_its_item_alone(redis: Redis) -> None:
    store = Store(redis, state=RedisState())
    token = await claimed(store, redis, ["d1", "d2"])
    await redis.hset(keys.subscription("sub_bad"), "an", "operator's mistake")
    await redis.set(keys.subscription("sub_ok"), '{"v": 1}')
    replies = await store.record(
        [
            Write(
                "d1",
                token,
                '{"id": "d1", "status": "SUCCESS"}',
                subscription_id="sub_bad",
                expected='{"v": 1}',
                new='{"v": 2}',
            ),
            Write(
                "d2",
                token,
                '{"id": "d2", "status": "SUCCESS"}',
                subscription_id="sub_ok",
                expected='{"v": 1}',
                new='{"v": 2}',
            ),
        ],
        failed_max_len=100,
    )
    assert replies[0].status == "error" and "webhook:sub_bad" in (replies[0].error or "")
    assert replies[1].status == "ok"
    # the failed item changed nothing and keeps its claim; its batch-mate is written
    assert await redis.get(keys.delivery("d1")) == b'{"id": "d1", "status": "PENDING"}'
    assert await redis.hget(keys.CLAIM_OWNER, "d1") == token.encode()
    assert await redis.lrange(keys.PROCESSING, 0, -1) == [b"d1"]
    assert await redis.get(keys.subscription("sub_ok")) == b'{"v": 2}'
    assert await redis.hget(keys.CLAIM_OWNER, "d2") is None


async def test_a_subscription_changed_meanwhile_conflicts_with_its_current_record(
    redis: Redis,
) -> None:
    store = Store(redis, state=RedisState())
    token = await claimed(store, redis, ["d1"])
    await redis.set(keys.subscription("sub"), '{"v": 7}')
    (reply,) = await store.record(
        [
            Write(
                "d1",
                token,
                '{"id": "d1"}',
                subscription_id="sub",
                expected='{"v": 1}',
                new='{"v": 2}',
            )
        ],
        failed_max_len=100,
    )
    assert reply.status == "conflict" and reply.current == b'{"v": 7}'
    assert await redis.get(keys.subscription("sub")) == b'{"v": 7}'
    assert await redis.lrange(keys.PROCESSING, 0, -1) == [b"d1"]
