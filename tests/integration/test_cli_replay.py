"""Bulk replay driven through the real CLI (a subprocess), delivered by the running daemon."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from tests.clitools import cli, seed_deliveries
from tests.integration.conftest import StartApp
from tests.support import Admin, Receiver, RedisServer


async def test_bulk_replay_of_1000_failed_deliveries_is_delivered(
    start_app: StartApp,
    admin: Admin,
    receiver: Receiver,
    redis: Redis,
    redis_server: RedisServer,
) -> None:
    await admin.security()
    sub = await admin.subscription(receiver.url(), encrypt=True, secret="whsec_replay")
    sources = await seed_deliveries(redis, sub, 1000)
    noise = await seed_deliveries(redis, sub, 20, error="HTTP 404")
    run = await cli(
        redis_server.url, "replay", "--subscription", sub, "--reason", "http_5xx", "--json"
    )
    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert report["selected"] == 1000 and not report["interrupted"] and not report["in_doubt"]
    pairs = {p["source"]: p["delivery_id"] for p in report["replayed"]}
    assert set(pairs) == set(sources)
    assert await redis.llen("dispatch:pending") == 1000

    await start_app(DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION=64)
    docs = await admin.wait_status(list(pairs.values()), {"SUCCESS"}, timeout=60)
    assert all(d["attempts"] == 1 and d["replay_of"] in pairs for d in docs)
    await receiver.wait_count(1000)
    events = {r.headers["X-Cycles-Event-Id"] for r in receiver.requests}
    source_events = {json.loads(await redis.get(f"delivery:{s}"))["event_id"] for s in sources}
    assert events == source_events and len(receiver.requests) == 1000
    for s in sources[:5] + noise[:2]:
        assert json.loads(await redis.get(f"delivery:{s}"))["status"] == "FAILED"

    again = await cli(redis_server.url, "replay", "--subscription", sub, "--reason", "http_5xx")
    assert again.code == 0, again.err
    lines = again.out.splitlines()
    assert lines[0] == "replayed 0 of 0 deliveries (skipped: already_replayed 1000)"
    assert lines[1].startswith("1000 sources were already replayed; --again replays them anyway")
    for line in lines[2:7]:  # five pairs, each source with the replay written above
        source, _, _, earlier = line.split()
        assert pairs[source] == earlier
    assert lines[7] == "  \u2026 and 995 more (--json lists every pair)"
