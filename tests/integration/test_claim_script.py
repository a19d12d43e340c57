"""CLAIM and ADOPT read what the intake needs next: the events, subscriptions and secrets the
claimed delivery records name (real Redis, through the store)."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.connection import RedisState
from cycles_events.dispatch.intake import covers
from cycles_events.models import Delivery
from cycles_events.store import Store


def record(delivery_id: str, event_id: str, sub_id: str) -> str:
    return json.dumps(
        {"id": delivery_id, "event_id": event_id, "subscription_id": sub_id, "status": "PENDING"}
    )


async def test_a_claim_reads_the_records_its_deliveries_name(redis: Redis) -> None:
    store = Store(redis, state=RedisState())
    await redis.set(keys.delivery("d1"), record("d1", "evt_1", "whsub_a"))
    await redis.set(keys.delivery("d2"), record("d2", "evt_2", "whsub_a"))
    await redis.set(keys.event("evt_1"), "E1")
    await redis.set(keys.subscription("whsub_a"), "S")
    await redis.set(keys.secret("whsub_a"), "K")
    await redis.lpush(keys.PENDING, "d1", "d2")
    got = await store.claim(10, "t:1")
    assert got.related is not None
    assert got.related.events == {"evt_1": b"E1", "evt_2": None}
    assert got.related.subscriptions == {"whsub_a": b"S"}
    assert got.related.secrets == {"whsub_a": b"K"}
    assert got.related.previous_secrets == {"whsub_a": None}
    batch = [Delivery.parse(i, r) for i, r in zip(got.ids, got.records, strict=True) if r]
    assert covers(got.related, batch)
    again = await store.claim(10, "t:1")  # the same call after a lost reply: the same answer
    assert again.ids == got.ids and again.related == got.related


async def test_ids_the_script_cannot_read_plainly_are_left_to_the_intake(redis: Redis) -> None:
    store = Store(redis, state=RedisState())
    escaped = (
        '{"id": "d1", "event_id": "evt_\\u0031", "subscription_id": "whsub_a", "status": "PENDING"}'
    )
    await redis.set(keys.delivery("d1"), escaped)
    await redis.lpush(keys.PENDING, "d1")
    got = await store.claim(10, "t:1")
    assert got.related is not None and got.related.events == {}
    (raw,) = got.records
    assert raw is not None
    assert not covers(got.related, [Delivery.parse("d1", raw)])  # the intake reads them itself


async def test_an_adopted_claim_reads_them_too(redis: Redis) -> None:
    store = Store(redis, state=RedisState())
    await redis.set(keys.delivery("d1"), record("d1", "evt_1", "whsub_a"))
    await redis.set(keys.event("evt_1"), "E1")
    await redis.lpush(keys.PENDING, "d1")
    moved = await store.wait_for_one(1.0)
    assert moved == "d1"
    got = await store.adopt("d1", "t:2")
    assert got.ids == ["d1"] and got.related is not None
    assert got.related.events == {"evt_1": b"E1"}
    assert got.related.subscriptions == {"whsub_a": None}


async def test_a_big_claim_reads_its_related_records_in_parts(redis: Redis) -> None:
    """3,000 deliveries of 3,000 subscriptions name 12,000 records: more than one unpack."""
    store = Store(redis, state=RedisState())
    ids = [f"d{i}" for i in range(3000)]
    pipe = redis.pipeline(transaction=False)
    for i, delivery_id in enumerate(ids):
        pipe.set(keys.delivery(delivery_id), record(delivery_id, f"evt_{i}", f"whsub_{i}"))
        pipe.set(keys.secret(f"whsub_{i}"), f"K{i}")
    await pipe.execute()
    await redis.lpush(keys.PENDING, *ids)
    got = await store.claim(3000, "t:1")
    assert len(got.ids) == 3000 and got.related is not None
    assert len(got.related.events) == 3000 and len(got.related.previous_secrets) == 3000
    assert got.related.secrets["whsub_2999"] == b"K2999"
