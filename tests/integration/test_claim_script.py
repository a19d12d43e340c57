"""A small CLAIM (as when deliveries trickle in, and after a blocking wait) answers its delivery
records and the events, subscriptions and secrets they name; a bigger one its ids alone (real
Redis, through the store and the claimer)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from cycles_events import keys
from cycles_events.connection import RedisState
from cycles_events.dispatch.claimer import Claimer
from cycles_events.dispatch.counts import Counts
from cycles_events.dispatch.gate import Gate
from cycles_events.dispatch.intake import covers
from cycles_events.dispatch.outcomes import Outcome
from cycles_events.keys import ORPHAN
from cycles_events.metrics import Metrics
from cycles_events.models import Delivery
from cycles_events.store import Store
from cycles_events.storevalues import Related
from cycles_events.supervise import Faults


def record(delivery_id: str, event_id: str, sub_id: str, *, compact: bool = False) -> str:
    return json.dumps(
        {"id": delivery_id, "event_id": event_id, "subscription_id": sub_id, "status": "PENDING"},
        separators=(",", ":") if compact else None,
    )


# what the claimer passes when its least room worth a claim is 9
READ_UP_TO = 8


@pytest.mark.parametrize(("pushed", "reads"), [(31, True), (32, False)])
async def test_the_claimer_reads_in_its_claim_what_trickled_in_and_not_a_backlog(
    redis: Redis, pushed: int, reads: bool
) -> None:
    ids = [f"d{i}" for i in range(pushed)]
    for i, delivery_id in enumerate(ids):
        await redis.set(keys.delivery(delivery_id), record(delivery_id, f"evt_{i}", "whsub_a"))
    await redis.lpush(keys.PENDING, *ids)
    counts = Counts(64)  # the least room worth a claim: 32
    taken: list[tuple[list[str], Related | None]] = []
    outcomes: list[Outcome] = []  # none: every id goes to the intake

    def to_intake(
        got: Sequence[str],
        _token: str,
        _records: Sequence[bytes | None] | None,
        read: Related | None,
    ) -> None:
        taken.append((list(got), read))
        claimer.stop()

    claimer = Claimer(
        store=Store(redis, state=RedisState()),
        counts=counts,
        gate=Gate(
            counts=counts,
            per_subscription=8,
            clock=lambda: 0,
            to_record=outcomes.append,
            reload=lambda _job: None,
        ),
        metrics=Metrics(tenant_tag=False),
        faults=Faults(),
        pending_timeout_s=1.0,
        to_intake=to_intake,
        to_record=outcomes.append,
    )
    await asyncio.wait_for(claimer.run(), 10)
    [(got, read)] = taken
    assert got == ids and not outcomes
    assert (read is not None) is reads


@pytest.mark.parametrize("compact", [True, False])  # found by plain search, or by the pattern
async def test_a_small_claim_reads_the_records_its_deliveries_name(
    redis: Redis, compact: bool
) -> None:
    store = Store(redis, state=RedisState())
    await redis.set(keys.delivery("d1"), record("d1", "evt_1", "whsub_a", compact=compact))
    await redis.set(keys.delivery("d2"), record("d2", "evt_2", "whsub_a", compact=compact))
    await redis.set(keys.event("evt_1"), "E1")
    await redis.set(keys.subscription("whsub_a"), "S")
    await redis.set(keys.secret("whsub_a"), "K")
    await redis.lpush(keys.PENDING, "d1", "d2")
    got = await store.claim(10, "t:1", read_up_to=READ_UP_TO)
    assert got.related is not None
    assert got.related.events == {"evt_1": b"E1", "evt_2": None}
    assert got.related.subscriptions == {"whsub_a": b"S"}
    assert got.related.secrets == {"whsub_a": b"K"}
    assert got.related.previous_secrets == {"whsub_a": None}
    batch = [Delivery.parse(i, r) for i, r in zip(got.ids, got.records, strict=True) if r]
    assert covers(got.related, batch)
    # the same call after a lost reply
    again = await store.claim(10, "t:1", again=True, read_up_to=READ_UP_TO)
    assert again.ids == got.ids and again.related == got.related


async def test_a_bigger_claim_leaves_them_to_the_intake(redis: Redis) -> None:
    store = Store(redis, state=RedisState())
    ids = [f"d{i}" for i in range(READ_UP_TO + 1)]
    for i, delivery_id in enumerate(ids):
        await redis.set(keys.delivery(delivery_id), record(delivery_id, f"evt_{i}", "whsub_a"))
    await redis.lpush(keys.PENDING, *ids)
    got = await store.claim(100, "t:1", read_up_to=READ_UP_TO)
    assert got.ids == ids and got.records is None and got.related is None
    # the same call after a lost reply
    again = await store.claim(100, "t:1", again=True, read_up_to=READ_UP_TO)
    assert again.ids == got.ids and again.records is None


@pytest.mark.parametrize("compact", [True, False])
async def test_ids_a_claim_cannot_read_plainly_are_left_to_the_intake(
    redis: Redis, compact: bool
) -> None:
    store = Store(redis, state=RedisState())
    escaped = (
        '{"id": "d1", "event_id": "evt_\\u0031", "subscription_id": "whsub_a", "status": "PENDING"}'
    )
    if compact:
        escaped = escaped.replace('": "', '":"')
    await redis.set(keys.delivery("d1"), escaped)
    await redis.lpush(keys.PENDING, "d1")
    assert await store.wait_for_one(1.0) == "d1"
    got = await store.claim(8, "t:1", moved="d1", read_up_to=READ_UP_TO)
    assert got.related is not None and got.related.events == {}
    (raw,) = got.records
    assert raw is not None
    assert not covers(got.related, [Delivery.parse("d1", raw)])  # the intake reads them itself


async def test_an_adopted_claim_reads_the_records_it_names(redis: Redis) -> None:
    store = Store(redis, state=RedisState())
    await redis.set(keys.delivery("d1"), record("d1", "evt_1", "whsub_a"))
    await redis.set(keys.event("evt_1"), "E1")
    await redis.set(keys.subscription("whsub_a"), "S")
    await redis.set(keys.secret("whsub_a"), "K")
    await redis.lpush(keys.PENDING, "d1")
    moved = await store.wait_for_one(1.0)
    assert moved == "d1"
    got = await store.claim(8, "t:2", moved="d1", read_up_to=READ_UP_TO)
    assert got.ids == ["d1"] and got.related is not None
    assert got.related.events == {"evt_1": b"E1"}
    assert got.related.subscriptions == {"whsub_a": b"S"}
    assert got.related.secrets == {"whsub_a": b"K"}
    assert got.related.previous_secrets == {"whsub_a": None}
    assert covers(got.related, [Delivery.parse("d1", got.records[0] or b"")])
    # the same call after a lost reply: the same answer
    again = await store.claim(8, "t:2", again=True, moved="d1", read_up_to=READ_UP_TO)
    assert again.ids == got.ids and again.related == got.related


async def test_a_big_claim_leaves_its_records_to_one_read_of_the_intake(redis: Redis) -> None:
    """A retry lane may claim thousands at once: the ids come, and one MGET reads them all."""
    store = Store(redis, state=RedisState())
    ids = [f"d{i}" for i in range(3000)]
    pipe = redis.pipeline(transaction=False)
    for i, delivery_id in enumerate(ids):
        pipe.set(keys.delivery(delivery_id), record(delivery_id, f"evt_{i}", f"whsub_{i}"))
    await pipe.execute()
    await redis.lpush(keys.PENDING, *ids)
    got = await store.claim(3000, "t:1", read_up_to=READ_UP_TO)
    assert len(got.ids) == 3000 and got.records is None and got.related is None
    records = await store.load_deliveries(got.ids)
    assert all(records) and records[-1] == record(got.ids[-1], "evt_2999", "whsub_2999").encode()


async def test_a_repeated_claim_answers_what_its_token_took_and_takes_no_more(
    redis: Redis,
) -> None:
    store = Store(redis, state=RedisState())
    for delivery_id in ("d1", "d2", "d3"):
        await redis.set(keys.delivery(delivery_id), record(delivery_id, "evt_1", "whsub_a"))
    await redis.lpush(keys.PENDING, "d1", "d2", "d3")
    got = await store.claim(2, "t:1", read_up_to=READ_UP_TO)
    again = await store.claim(2, "t:1", again=True, read_up_to=READ_UP_TO)
    assert again.ids == got.ids == ["d1", "d2"] and again.records == got.records
    assert await redis.lrange(keys.PENDING, 0, -1) == [b"d3"]
    # its first call was lost on the way
    never_ran = await store.claim(2, "t:2", again=True, read_up_to=READ_UP_TO)
    assert never_ran.ids == ["d3"]
    assert await redis.hgetall(keys.CLAIM_OWNER) == {b"d1": b"t:1", b"d2": b"t:1", b"d3": b"t:2"}


@pytest.mark.parametrize("key", [keys.PENDING, keys.PROCESSING, keys.CLAIMED_AT, keys.CLAIM_OWNER])
async def test_a_claim_refuses_a_key_of_another_type_and_changes_nothing(
    redis: Redis, key: str
) -> None:
    """Pending's and claim_owner's reads are their type checks; the rest are asked first."""
    store = Store(redis, state=RedisState())
    await redis.set(keys.delivery("d1"), record("d1", "evt_1", "whsub_a"))
    if key != keys.PENDING:
        await redis.lpush(keys.PENDING, "d1")
    await redis.set(key, "not a list, zset or hash")
    with pytest.raises(ResponseError, match=f"WRONGTYPE {key} "):
        await store.claim(5, "t:1", read_up_to=READ_UP_TO)
    if key != keys.PENDING:
        assert await redis.lrange(keys.PENDING, 0, -1) == [b"d1"]
    for other in {keys.PROCESSING, keys.CLAIMED_AT, keys.CLAIM_OWNER} - {key}:
        assert not await redis.exists(other)


@pytest.mark.parametrize("key", [keys.PROCESSING, keys.CLAIMED_AT, keys.CLAIM_OWNER])
async def test_a_claim_of_an_empty_queue_refuses_a_key_of_another_type_too(
    redis: Redis, key: str
) -> None:
    """So that readiness falls as soon as a key is wrong, not with the next delivery."""
    store = Store(redis, state=RedisState())
    await redis.set(key, "not a list, zset or hash")
    with pytest.raises(ResponseError, match=f"WRONGTYPE {key} "):
        await store.claim(5, "t:1", read_up_to=READ_UP_TO)


async def test_an_id_a_blocking_wait_moved_is_claimed_first_with_those_that_came_with_it(
    redis: Redis,
) -> None:
    store = Store(redis, state=RedisState())
    for delivery_id in ("d1", "d2", "d3", "d4"):
        await redis.set(keys.delivery(delivery_id), record(delivery_id, "evt_1", "whsub_a"))
    await redis.lpush(keys.PENDING, "d1")
    assert await store.wait_for_one(1.0) == "d1"
    await redis.lpush(keys.PENDING, "d2", "d3", "d4")
    got = await store.claim(3, "t:1", moved="d1", read_up_to=READ_UP_TO)
    assert got.ids == ["d1", "d2", "d3"] and got.duplicates == 0
    assert got.records[0] == record("d1", "evt_1", "whsub_a").encode()
    assert await redis.lrange(keys.PENDING, 0, -1) == [b"d4"]
    assert sorted(await redis.lrange(keys.PROCESSING, 0, -1)) == [b"d1", b"d2", b"d3"]
    owners = {b"d1": b"t:1", b"d2": b"t:1", b"d3": b"t:1"}
    assert await redis.hgetall(keys.CLAIM_OWNER) == owners
    assert await redis.zcard(keys.CLAIMED_AT) == 3
    alone = await store.claim(1, "t:2", read_up_to=READ_UP_TO)  # a claim of one leaves the rest
    assert alone.ids == ["d4"]


async def test_a_moved_id_claimed_only_by_itself_when_the_claim_has_room_for_one(
    redis: Redis,
) -> None:
    store = Store(redis, state=RedisState())
    await redis.set(keys.delivery("d1"), record("d1", "evt_1", "whsub_a"))
    await redis.lpush(keys.PENDING, "d1")
    assert await store.wait_for_one(1.0) == "d1"
    await redis.lpush(keys.PENDING, "d2")
    got = await store.claim(1, "t:1", moved="d1", read_up_to=READ_UP_TO)
    assert got.ids == ["d1"] and await redis.lrange(keys.PENDING, 0, -1) == [b"d2"]


@pytest.mark.parametrize(("owner", "ours"), [("other:1", False), (ORPHAN, True)])
async def test_a_moved_copy_of_an_id_another_claimant_holds_is_a_duplicate(
    redis: Redis, owner: str, ours: bool
) -> None:
    """As Java does: a second copy of a live claim is dropped, Java's orphan mark is free."""
    store = Store(redis, state=RedisState())
    await redis.set(keys.delivery("d1"), record("d1", "evt_1", "whsub_a"))
    await redis.lpush(keys.PROCESSING, "d1")
    await redis.hset(keys.CLAIM_OWNER, "d1", owner)
    await redis.lpush(keys.PENDING, "d1")  # pushed again while claimed
    assert await store.wait_for_one(1.0) == "d1"
    got = await store.claim(8, "t:1", moved="d1", read_up_to=READ_UP_TO)
    if ours:
        assert got.ids == ["d1"] and got.duplicates == 0
        assert await redis.hget(keys.CLAIM_OWNER, "d1") == b"t:1"
        assert await redis.lrange(keys.PROCESSING, 0, -1) == [b"d1", b"d1"]
    else:
        assert got.ids == [] and got.duplicates == 1
        assert await redis.hget(keys.CLAIM_OWNER, "d1") == owner.encode()
        assert await redis.lrange(keys.PROCESSING, 0, -1) == [b"d1"]
