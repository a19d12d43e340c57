"""Operator operations (cycles_events.ops) against a real redis-server."""

from __future__ import annotations

import json

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from cycles_events import ops
from cycles_events.models import format_instant, parse_instant_ms
from tests.clitools import seed_deliveries, snapshot
from tests.support import Admin, RedisServer, now_ms


async def test_stats_counts_every_queue(redis: Redis, admin: Admin) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook")
    old = await admin.delivery(sub, await admin.event(), created_ms=now_ms() - 90_000)
    await admin.deliver(sub)
    now = now_ms()
    await redis.zadd(
        "dispatch:retry",
        {"del_a": now - 10, "del_b": now - 5, "del_c": now + 30_000, "del_d": now + 300_000},
    )
    await redis.lpush("dispatch:processing", "del_e")
    await redis.lpush("dispatch:failed", '{"delivery_id":"del_f"}', '{"delivery_id":"del_g"}')
    st = await ops.stats(redis, now)
    assert (st.pending, st.retry, st.retry_due, st.retry_due_next_minute) == (2, 4, 2, 1)
    assert (st.processing, st.quarantine) == (1, 2)
    assert st.oldest_pending_age_s is not None and 89 < st.oldest_pending_age_s < 95
    assert await redis.lindex("dispatch:pending", -1) == old.encode()


async def test_show_masks_headers_and_secret(redis: Redis, admin: Admin) -> None:
    sub = await admin.subscription(
        "https://user:pw@hooks.example.com/x?token=t0k",
        headers={"Authorization": "Bearer s3cret-value"},
        secret="whsec_very_secret",
        encrypt=True,
    )
    delivery_id = await admin.deliver(sub)
    report = await ops.show_delivery(redis, delivery_id)
    text = json.dumps(report)
    for secret in ("s3cret-value", "whsec_very_secret", "pw@", "t0k", "enc:"):
        assert secret not in text
    assert report["subscription"]["headers"] == {"Authorization": "***"}
    assert report["subscription"]["secret"] == "set (encrypted)"
    assert report["subscription"]["url"] == "https://hooks.example.com/x"
    assert report["queue"] == {"queue": "dispatch:pending"}
    assert report["event"]["event_type"] == "budget.exhausted"
    assert report["failure_reason"] is None
    await redis.delete("dispatch:pending")
    await redis.zadd("dispatch:retry", {delivery_id: 1795335330140})
    report = await ops.show_delivery(redis, delivery_id)
    assert report["queue"] == {"queue": "dispatch:retry", "due_at": "2026-11-22T08:15:30.140Z"}
    with pytest.raises(ops.OpsError, match="delivery del_missing not found"):
        await ops.show_delivery(redis, "del_missing")


async def test_list_filters_and_orders_newest_first(redis: Redis, admin: Admin) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook")
    base = now_ms() - 10_000
    failed = await seed_deliveries(redis, sub, 5, created_ms=base, step_ms=1000)
    done = await seed_deliveries(
        redis, sub, 3, status="SUCCESS", error=None, created_ms=base + 500, step_ms=1000
    )
    listing = await ops.list_deliveries(redis, sub)
    assert [d["delivery_id"] for d in listing.deliveries] == [
        failed[4],
        failed[3],
        done[2],
        failed[2],
        done[1],
        failed[1],
        done[0],
        failed[0],
    ]
    only_failed = await ops.list_deliveries(redis, sub, statuses=["FAILED"], limit=2)
    assert [d["delivery_id"] for d in only_failed.deliveries] == [failed[4], failed[3]]
    window = await ops.list_deliveries(redis, sub, since_ms=base + 1000, until_ms=base + 2500)
    assert [d["delivery_id"] for d in window.deliveries] == [done[2], failed[2], done[1], failed[1]]
    await redis.delete(f"delivery:{failed[0]}")
    assert (await ops.list_deliveries(redis, sub)).expired == 1
    with pytest.raises(ops.OpsError, match="subscription whsub_nope not found"):
        await ops.list_deliveries(redis, "whsub_nope")


async def test_replay_writes_exactly_what_the_producer_writes(redis: Redis, admin: Admin) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook")
    (source,) = await seed_deliveries(redis, sub, 1, trace_flags="01")
    sel = await ops.select_by_ids(redis, [source], again=False)
    before = now_ms()
    result = await ops.replay(redis, sel.sources, ttl_s=14 * 86400)
    ((src, new),) = result.replayed
    assert src == source and new != source and new.startswith("del_") and len(new) == 20
    doc = json.loads(await redis.get(f"delivery:{new}"))
    old = json.loads(await redis.get(f"delivery:{source}"))
    assert doc == {
        "delivery_id": new,
        "subscription_id": sub,
        "event_id": old["event_id"],
        "event_type": "budget.exhausted",
        "status": "PENDING",
        "attempted_at": doc["attempted_at"],
        "attempts": 0,
        "trace_id": old["trace_id"],
        "replay_of": source,
    }
    created = parse_instant_ms(doc["attempted_at"])
    assert created is not None and before <= created <= now_ms()
    assert format_instant(created) == doc["attempted_at"]
    assert await redis.zscore(f"deliveries:{sub}", new) == created
    assert await redis.lrange("dispatch:pending", 0, -1) == [new.encode()]
    assert 14 * 86400 - 5 < await redis.ttl(f"delivery:{new}") <= 14 * 86400
    assert json.loads(await redis.get(f"delivery:{source}")) == old


async def test_bulk_selection_filters_and_skips_replayed_sources(
    redis: Redis, admin: Admin
) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook")
    base = now_ms() - 100_000
    http5 = await seed_deliveries(redis, sub, 4, created_ms=base)
    http4 = await seed_deliveries(redis, sub, 2, error="HTTP 410", created_ms=base + 10)
    await seed_deliveries(redis, sub, 2, error="Timeout: no response", created_ms=base + 20)
    await seed_deliveries(redis, sub, 3, status="SUCCESS", error=None, created_ms=base + 30)
    other = await seed_deliveries(redis, sub, 2, event_type="tenant.updated", created_ms=base + 40)
    gone = await seed_deliveries(redis, sub, 1, created_ms=base + 50)
    await redis.delete(f"event:{json.loads(await redis.get(f'delivery:{gone[0]}'))['event_id']}")

    everything = await ops.select_by_subscription(redis, sub, ops.ReplayFilter())
    assert len(everything.sources) == 10 and everything.skipped == {"event_missing": 1}
    flt = ops.ReplayFilter(reasons=frozenset({"http_5xx"}), event_types=("budget.*",))
    sel = await ops.select_by_subscription(redis, sub, flt)
    assert [s.delivery_id for s in sel.sources] == http5
    typed = await ops.select_by_subscription(
        redis, sub, ops.ReplayFilter(event_types=("tenant.updated",))
    )
    assert [s.delivery_id for s in typed.sources] == other
    window = ops.ReplayFilter(since_ms=base + 10, until_ms=base + 11)
    assert [
        s.delivery_id for s in (await ops.select_by_subscription(redis, sub, window)).sources
    ] == http4

    ops.limit_selection(sel, 3)
    assert sel.skipped["over_limit"] == 1
    done = await ops.replay(redis, sel.sources, ttl_s=3600)
    assert [s for s, _ in done.replayed] == http5[:3]
    again = await ops.select_by_subscription(redis, sub, flt)
    assert [s.delivery_id for s in again.sources] == http5[3:]
    assert again.skipped["already_replayed"] == 3
    assert set(again.already) == set(http5[:3])
    forced = await ops.select_by_subscription(redis, sub, flt, again=True)
    assert [s.delivery_id for s in forced.sources] == http5
    by_id = await ops.select_by_ids(redis, [http5[0], http5[3]], again=False)
    assert [s.delivery_id for s in by_id.sources] == [http5[3]]


async def test_replay_refuses_inactive_or_unknown_and_changes_nothing(
    redis: Redis, admin: Admin
) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook", status="DISABLED")
    ids = await seed_deliveries(redis, sub, 3)
    before = await snapshot(redis)
    with pytest.raises(ops.OpsError, match=rf"subscription {sub} is DISABLED, not ACTIVE"):
        await ops.select_by_subscription(redis, sub, ops.ReplayFilter())
    with pytest.raises(ops.OpsError, match="is DISABLED"):
        await ops.select_by_ids(redis, ids, again=False)
    with pytest.raises(ops.OpsError, match="delivery del_0000000000000000 not found"):
        await ops.select_by_ids(redis, [ids[0], "del_0000000000000000"], again=False)
    with pytest.raises(ops.OpsError, match="subscription whsub_x not found"):
        await ops.select_by_subscription(redis, "whsub_x", ops.ReplayFilter())
    assert await snapshot(redis) == before


async def test_quarantine_requeue_and_drop_are_atomic(redis: Redis) -> None:
    entries = [
        {
            "delivery_id": "del_a",
            "reason": "corrupt_record",
            "quarantined_at_ms": 1,
            "payload": "{",
        },
        {
            "delivery_id": "del_b",
            "reason": "corrupt_record",
            "quarantined_at_ms": 2,
            "payload": "x",
        },
        {
            "delivery_id": "del_a",
            "reason": "corrupt_record",
            "quarantined_at_ms": 3,
            "payload": "[",
        },
    ]
    for e in entries:
        await redis.lpush("dispatch:failed", json.dumps(e))
    await redis.lpush("dispatch:failed", "not json at all")
    total, listed = await ops.quarantine_list(redis, 2)
    assert total == 4 and [e["index"] for e in listed] == [0, 1]
    assert listed[0]["reason"] == "unreadable_entry" and listed[1]["quarantined_at_ms"] == 3
    assert await ops.quarantine_take(redis, "del_a", requeue=True) == 2
    assert await redis.lrange("dispatch:pending", 0, -1) == [b"del_a"]
    remaining = await redis.lrange("dispatch:failed", 0, -1)
    assert remaining == [b"not json at all", json.dumps(entries[1]).encode()]
    before = await snapshot(redis)
    with pytest.raises(ops.OpsError, match="del_a is not in quarantine"):
        await ops.quarantine_take(redis, "del_a", requeue=True)
    assert await snapshot(redis) == before
    assert await ops.quarantine_take(redis, "del_b", requeue=False) == 1
    assert await redis.lrange("dispatch:pending", 0, -1) == [b"del_a"]
    assert await redis.lrange("dispatch:failed", 0, -1) == [b"not json at all"]


async def test_enable_is_a_partial_merge_that_survives_a_concurrent_write(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub = await admin.subscription(
        "http://127.0.0.1:1/hook",
        status="DISABLED",
        consecutive_failures=10,
        metadata={"owner": "ops", "big": 12345678901234567890, "ratio": 2.0},
        future_field=[1, {"x": None}],
    )
    raw_before = await redis.get(f"webhook:{sub}")
    writer = sync_redis.Redis.from_url(redis_server.url)
    calls = 0

    def clock() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:  # the admin renames the subscription between our read and our write
            doc = json.loads(writer.get(f"webhook:{sub}") or b"{}")
            doc["name"] = "renamed by admin"
            writer.set(f"webhook:{sub}", json.dumps(doc, separators=(",", ":")))
        return 1795335330140

    res = await ops.enable_subscription(redis, sub, event_ttl_s=90 * 86400, clock=clock)
    writer.close()
    assert calls == 2 and res.changed and res.previous_status == "DISABLED"
    after = json.loads(await redis.get(f"webhook:{sub}"))
    expected = json.loads(raw_before)
    expected.update(
        name="renamed by admin",
        status="ACTIVE",
        consecutive_failures=0,
        updated_at="2026-11-22T08:15:30.140Z",
    )
    assert after == expected
    assert list(after) == list(expected)
    assert b'"big":12345678901234567890,"ratio":2.0' in await redis.get(f"webhook:{sub}")
    assert res.event_id is not None
    event = json.loads(await redis.get(f"event:{res.event_id}"))
    assert event["event_type"] == "webhook.resumed"
    assert event["actor"] == {"type": "admin"} and event["source"] == "cycles-events"
    assert event["data"]["previous_status"] == "DISABLED"
    assert await redis.zscore("events:acme", res.event_id) == 1795335330140
    assert await redis.zscore("events:_all", res.event_id) == 1795335330140
    assert 89 * 86400 < await redis.ttl(f"event:{res.event_id}") <= 90 * 86400

    again = await ops.enable_subscription(redis, sub, event_ttl_s=60)
    assert not again.changed and again.event_id is None
    with pytest.raises(ops.OpsError, match="subscription whsub_nope not found"):
        await ops.enable_subscription(redis, "whsub_nope", event_ttl_s=60)


async def test_replay_reports_what_it_wrote_when_redis_dies_mid_run() -> None:
    from cycles_events.app import redis_client
    from cycles_events.config import Settings

    server = RedisServer()
    server.start()
    client = redis_client(Settings(REDIS_URL=server.url))
    try:
        admin = Admin(client)
        sub = await admin.subscription("http://127.0.0.1:1/hook")
        await seed_deliveries(client, sub, 250)
        sel = await ops.select_by_subscription(client, sub, ops.ReplayFilter())
        assert len(sel.sources) == 250

        def progress(done: int) -> None:
            if done == 100:
                server.stop()  # Redis goes away after the first batch of 100

        result = await ops.replay(client, sel.sources, ttl_s=3600, on_progress=progress)
    finally:
        await client.aclose()
        server.cleanup()
    assert len(result.replayed) == 100 and [s for s, _ in result.replayed] == [
        s.delivery_id for s in sel.sources[:100]
    ]
    assert result.error is not None and "ConnectionError" in result.error
    assert [s for s, _ in result.in_doubt] == [s.delivery_id for s in sel.sources[100:200]]
    assert not result.interrupted
