"""The OUTCOME script's subscription step, called straight through the store on a real Redis:
a subscription key of the wrong type fails only its own item; a changed one conflicts; each
form of an item reads as its write."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from cycles_events import keys
from cycles_events.connection import RedisState
from cycles_events.lifecycle import success_parts
from cycles_events.metaevents import Task
from cycles_events.store import Store
from cycles_events.storevalues import Reply, Write, outcome_args


async def claimed(store: Store, redis: Redis, ids: list[str]) -> str:
    """Put ids on dispatch:pending with a record each and claim them all under one token."""
    for i in ids:
        await redis.set(keys.delivery(i), f'{{"id": "{i}", "status": "PENDING"}}')
    await redis.lpush(keys.PENDING, *ids)
    token = "test-instance:1"
    got = await store.claim(len(ids), token, read_up_to=0)  # the ids alone matter here
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


def _parts() -> tuple[str, ...]:
    parts = success_parts(READ, json.loads(OURS))
    assert parts is not None
    return parts


PARTS = _parts()


def test_a_success_s_parts_are_the_document_as_read_cut_around_its_values() -> None:
    assert PARTS == (
        '{"subscription_id":"sub","status":"ACTIVE","consecutive_failures":',
        "0",
        ',"last_triggered_at":',
        '"2026-12-01T10:00:05.000Z"',
        ',"last_success_at":',
        '"2026-12-01T10:00:05.000Z"',
        ',"metadata":{"k":"v"}}',
    )
    assert "".join(PARTS) == OURS


async def write_against(
    redis: Redis, stored: str, *, expected: str = READ, new: str = OURS, by_parts: bool = True
) -> tuple[Reply, bytes]:
    """One write, made from `expected` (a success's by parts, from READ, unless told), against
    a subscription stored as `stored`: its reply and the subscription after it."""
    store = Store(redis, state=RedisState())
    token = await claimed(store, redis, ["d1"])
    await redis.set(keys.subscription("sub"), stored)
    parts = PARTS if by_parts else ()
    write = Write(
        "d1", token, '{"id": "d1"}', subscription_id="sub", expected=expected, new=new, parts=parts
    )
    assert outcome_args(write)[2] == ("p" if parts else "s")
    (reply,) = await store.record([write], failed_max_len=100)
    return reply, await redis.get(keys.subscription("sub")) or b""


async def test_a_subscription_changed_meanwhile_conflicts_with_its_current_record(
    redis: Redis,
) -> None:
    reply, now = await write_against(
        redis, '{"v": 7}', expected='{"v": 1}', new='{"v": 2}', by_parts=False
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
        "more after the end": changed + " ",
        "a part of the middle longer": changed.replace('"ACTIVE"', '"ACTIVE","x":1'),
    }
    for case, stored in cases.items():
        reply, now = await write_against(redis, stored)
        assert (reply.status, now) == ("conflict", stored.encode()), case
        await redis.flushdb()
    reply, _ = await write_against(redis, changed, by_parts=False)  # not a success's write
    assert reply.status == "conflict"


async def test_each_form_of_an_item_is_read_as_its_write(redis: Redis) -> None:
    """A chained item ('c') follows the write before it, applied or not; a general one ('g')
    carries a retry and a task; a claim lost meanwhile changes nothing."""
    store = Store(redis, state=RedisState())
    token = await claimed(store, redis, ["d1", "d2", "d3", "d4", "d5"])
    await redis.hset(keys.CLAIM_OWNER, "d3", "another-instance:9")
    await redis.set(keys.subscription("a"), '{"v": 0}')
    await redis.set(keys.subscription("b"), '{"w": 0}')
    task = Task("t1", '{"task": 1}', 1_700_000_000_000, "system.webhook_delivery_failed")
    writes = [
        Write(
            "d1", token, '{"id": "d1"}', subscription_id="a", expected='{"v": 0}', new='{"v": 1}'
        ),
        Write("d2", token, '{"id": "d2"}', subscription_id="a", expected="^", new="="),
        Write(
            "d3", token, '{"id": "d3"}', subscription_id="b", expected='{"w": 0}', new='{"w": 1}'
        ),
        Write("d4", token, '{"id": "d4"}', subscription_id="b", expected="^", new="="),
        Write("d5", token, '{"id": "d5"}', retry_at_ms=12_345, tasks=(task,)),
    ]
    assert [outcome_args(w)[2] for w in writes] == ["s", "c", "s", "c", "g"]
    replies = await store.record(writes, failed_max_len=100)
    assert [r.status for r in replies] == ["ok", "ok", "lost", "conflict", "ok"]
    assert replies[3].current == b'{"w": 0}'
    assert await redis.get(keys.subscription("a")) == b'{"v": 1}'
    assert await redis.get(keys.subscription("b")) == b'{"w": 0}'
    assert await redis.get(keys.delivery("d3")) == b'{"id": "d3", "status": "PENDING"}'
    assert await redis.get(keys.delivery("d4")) == b'{"id": "d4", "status": "PENDING"}'
    assert await redis.zscore(keys.RETRY, "d5") == 12_345
    assert await redis.get(keys.outbox_task("t1")) == b'{"task": 1}'
    assert sorted(await redis.lrange(keys.PROCESSING, 0, -1)) == [b"d3", b"d4"]


async def test_an_item_of_no_known_form_fails_the_call_before_it_changes_anything(
    redis: Redis,
) -> None:
    store = Store(redis, state=RedisState())
    token = await claimed(store, redis, ["d1", "d2"])
    prefixes = [keys.DELIVERY_PREFIX, keys.SUBSCRIPTION_PREFIX, keys.OUTBOX_TASK_PREFIX]
    good = outcome_args(Write("d1", token, '{"id": "d1", "status": "SUCCESS"}'))
    bad = [token, '{"id": "d2", "status": "SUCCESS"}', "x", "sub"]
    args = [100, *prefixes, 2, "d1", "d2", *good, *bad]
    with pytest.raises(ResponseError, match="item 2 has no form"):
        await redis.eval(keys.OUTCOME, len(keys.OUTCOME_KEYS), *keys.OUTCOME_KEYS, *args)
    for i in ("d1", "d2"):  # the well-formed item before it is not written either
        assert await redis.get(keys.delivery(i)) == f'{{"id": "{i}", "status": "PENDING"}}'.encode()
        assert await redis.hget(keys.CLAIM_OWNER, i) == token.encode()
    assert sorted(await redis.lrange(keys.PROCESSING, 0, -1)) == [b"d1", b"d2"]
