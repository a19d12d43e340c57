"""The OUTCOME script's subscription step, called straight through the store on a real Redis:
a subscription key of the wrong type fails only its own item; a changed one conflicts."""

from __future__ import annotations

from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.connection import RedisState
from cycles_events.store import Store
from cycles_events.storevalues import Reply, Write


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


READ = (
    '{"subscription_id":"sub","status":"ACTIVE","consecutive_failures":0,'
    '"last_triggered_at":"2026-12-01T10:00:00.000Z","last_success_at":null,"metadata":{"k":"v"}}'
)
OURS = READ.replace('"last_success_at":null', '"last_success_at":"2026-12-01T10:00:05.000Z"')
OURS = OURS.replace("10:00:00.000Z", "10:00:05.000Z")


async def write_against(
    redis: Redis, stored: str, *, expected: str = READ, new: str = OURS, merge: str = "S"
) -> tuple[Reply, bytes]:
    """One write, made from `expected` (a success's, from READ, unless told), against a
    subscription stored as `stored`: its reply and the subscription after it."""
    store = Store(redis, state=RedisState())
    token = await claimed(store, redis, ["d1"])
    await redis.set(keys.subscription("sub"), stored)
    write = Write(
        "d1", token, '{"id": "d1"}', subscription_id="sub", expected=expected, new=new, merge=merge
    )
    (reply,) = await store.record([write], failed_max_len=100)
    return reply, await redis.get(keys.subscription("sub")) or b""


async def test_a_subscription_changed_meanwhile_conflicts_with_its_current_record(
    redis: Redis,
) -> None:
    reply, now = await write_against(
        redis, '{"v": 7}', expected='{"v": 1}', new='{"v": 2}', merge=""
    )
    assert reply.status == "conflict" and reply.current == b'{"v": 7}'
    assert now == b'{"v": 7}'
    assert await redis.lrange(keys.PROCESSING, 0, -1) == [b"d1"]


async def test_a_success_fits_a_subscription_changed_only_where_a_success_writes(
    redis: Redis,
) -> None:
    # another instance's success and failure counts meanwhile: the success sets those fields
    stored = READ.replace('"consecutive_failures":0', '"consecutive_failures":12')
    stored = stored.replace("10:00:00.000Z", "10:00:03.123456Z")
    stored = stored.replace('"last_success_at":null', '"last_success_at":"2026-12-01T10:00:02Z"')
    reply, now = await write_against(redis, stored)
    assert reply.status == "ok" and now == OURS.encode()
    assert await redis.hget(keys.CLAIM_OWNER, "d1") is None


async def test_what_a_success_cannot_be_sure_of_conflicts(redis: Redis) -> None:
    changed = READ.replace("10:00:00.000Z", "10:00:03.000Z")
    cases = {
        "another field": changed.replace('"ACTIVE"', '"PAUSED"'),
        "a field named twice": changed.replace('{"k":"v"}', '{"last_success_at":"x"}'),
        "an escaped value": changed.replace("10:00:03.000Z", '10:00:03\\".000Z'),
        "a value of another kind": changed.replace(
            '"consecutive_failures":0', '"consecutive_failures":0.5'
        ),
        "a field gone": changed.replace('"last_success_at":null,', ""),
        "a value after a space": changed.replace(
            '"consecutive_failures":0', '"consecutive_failures": 0'
        ),
    }
    for case, stored in cases.items():
        reply, now = await write_against(redis, stored)
        assert (reply.status, now) == ("conflict", stored.encode()), case
        await redis.flushdb()
    reply, _ = await write_against(redis, changed, merge="")  # not a success's write
    assert reply.status == "conflict"
