"""The Java-protocol peer (tests/javapeer) alone: lifecycle, fences, outbox, recovery, kills."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.javapeer import JavaPeer, PeerOptions, PeerProcess, derive_event_id
from tests.support import KEY_B64, Admin, Receiver, RedisServer, status

StartPeer = Callable[..., Awaitable[JavaPeer]]
FAST_RETRY = {"max_retries": 1, "initial_delay_ms": 100, "backoff_multiplier": 2.0}


def peer_options(redis_server: RedisServer, **overrides: Any) -> PeerOptions:
    values: dict[str, Any] = {
        "redis_url": redis_server.url,
        "encryption_key": KEY_B64,
        "pending_timeout_s": 0.2,
        "http_timeout_s": 5.0,
        "retry_poll_ms": 100,
        "publisher_poll_ms": 100,
    }
    values.update(overrides)
    return PeerOptions(**values)


@pytest.fixture
async def start_peer(redis_server: RedisServer) -> AsyncIterator[StartPeer]:
    peers: list[JavaPeer] = []

    async def start(**overrides: Any) -> JavaPeer:
        peer = JavaPeer(peer_options(redis_server, **overrides))
        peers.append(peer)
        await peer.start()
        return peer

    yield start
    for peer in peers:
        await (peer.kill() if peer.dead else peer.stop(timeout=5))


async def claim_state(redis: Redis, delivery_id: str) -> tuple[Any, Any, Any]:
    processing = await redis.lrange("dispatch:processing", 0, -1)
    claimed_at = await redis.zscore("dispatch:processing:claimed_at", delivery_id)
    owner = await redis.hget("dispatch:processing:claim_owner", delivery_id)
    return processing, claimed_at, owner


async def load(redis: Redis, key: str) -> Any:
    raw = await redis.get(key)
    assert raw is not None, f"{key} is missing"
    return json.loads(raw)


async def test_success_is_signed_and_recorded(
    redis: Redis, admin: Admin, receiver: Receiver, start_peer: StartPeer
) -> None:
    secret = "whsec_peer_secret"
    sub_id = await admin.subscription(
        receiver.url(),
        secret=secret,
        encrypt=True,
        headers={"X-Team": "ops", "x-cycles-signature": "forged"},
        x_unknown={"kept": True},
    )
    event = await admin.event(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", request_id="req_9")
    inbound = {"trace_flags": "00", "traceparent_inbound_valid": True}
    delivery_id = await admin.delivery(sub_id, event, **inbound)
    peer = await start_peer()

    [doc] = await admin.wait_status([delivery_id], {"SUCCESS"}, timeout=10)
    assert doc["attempts"] == 1 and doc["response_status"] == 200
    assert "completed_at" in doc and isinstance(doc["response_time_ms"], int)
    assert 0 < await redis.ttl(f"delivery:{delivery_id}") <= 14 * 86400  # KEEPTTL

    [req] = receiver.requests
    assert req.body == await redis.get(f"event:{event['event_id']}")  # the event as stored
    expected = hmac.new(secret.encode(), req.body, hashlib.sha256).hexdigest()
    assert req.headers["X-Cycles-Signature"] == f"sha256={expected}"
    assert req.headers["User-Agent"] == "cycles-server-events/0.1.25.24"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["X-Cycles-Event-Id"] == event["event_id"]
    assert req.headers["X-Cycles-Event-Type"] == "budget.exhausted"
    assert req.headers["X-Cycles-Trace-Id"] == event["trace_id"]
    assert re.fullmatch(rf"00-{event['trace_id']}-[0-9a-f]{{16}}-00", req.headers["traceparent"])
    assert req.headers["X-Request-Id"] == "req_9"
    assert req.headers["X-Team"] == "ops"

    sub = await admin.sub_record(sub_id)
    assert sub["consecutive_failures"] == 0
    assert sub["last_success_at"] == sub["last_triggered_at"]
    assert sub["x_unknown"] == {"kept": True}
    assert list(sub)[:3] == ["subscription_id", "tenant_id", "name"]  # field order kept
    await peer.log.wait_for("outcome", delivery_id)
    assert await claim_state(redis, delivery_id) == ([], None, None)
    assert [r["action"] for r in peer.log.records if r["delivery_id"] == delivery_id] == [
        "claimed",
        "sent",
        "outcome",
    ]
    assert secret not in json.dumps(peer.log.records)


async def test_500_retries_then_fails_and_stages_the_meta_event(
    redis: Redis, admin: Admin, receiver: Receiver, start_peer: StartPeer
) -> None:
    receiver.behaviours["/fail"] = status(500)
    sub_id = await admin.subscription(receiver.url("/fail"), retry_policy=FAST_RETRY)
    delivery_id = await admin.deliver(sub_id)
    peer = await start_peer(publisher=False)

    [doc] = await admin.wait_status([delivery_id], {"FAILED"}, timeout=10)
    assert doc["attempts"] == 2 and doc["response_status"] == 500
    assert doc["error_message"] == "HTTP 500" and "next_retry_at" not in doc
    outcomes = [r["outcome"] for r in peer.log.find("outcome", delivery_id)]
    assert outcomes == ["retrying", "failed"]
    sub = await admin.sub_record(sub_id)
    assert sub["consecutive_failures"] == 1 and sub["status"] == "ACTIVE"
    assert sub["last_failure_at"] == sub["last_triggered_at"]

    task_id = f"delivery-failed:{sub_id}:{delivery_id}"
    task = await load(redis, f"dispatcher:event-outbox:task:{task_id}")
    assert list(task) == ["task_id", "created_at", "event"] and task["task_id"] == task_id
    event_id = derive_event_id(task_id)
    assert task["event"]["event_id"] == event_id
    assert task["event"]["event_type"] == "system.webhook_delivery_failed"
    assert task["event"]["data"]["details"]["last_response_status"] == 500
    assert await redis.zscore("dispatcher:event-outbox:pending", task_id) is not None

    assert await peer.publish_once() == 1  # what the publisher loop does when it is on
    saved = await load(redis, f"event:{event_id}")
    assert saved["tenant_id"] == "__system__" and saved["category"] == "system"
    assert await redis.zscore("events:__system__", event_id) is not None
    assert await redis.zscore("events:_all", event_id) is not None
    cid = f"webhook_delivery_failed:{sub_id}:{delivery_id}"
    assert await redis.smembers(f"events:correlation:{cid}") == {event_id.encode()}
    assert await redis.zcard("dispatcher:event-outbox:pending") == 0
    assert await redis.exists(f"dispatcher:event-outbox:task:{task_id}") == 0


async def test_publisher_saves_right_away(
    redis: Redis, admin: Admin, receiver: Receiver, start_peer: StartPeer
) -> None:
    receiver.behaviours["/fail"] = status(503)
    sub_id = await admin.subscription(receiver.url("/fail"), retry_policy={"max_retries": 0})
    delivery_id = await admin.deliver(sub_id)
    peer = await start_peer(publisher_poll_ms=60_000)  # only the kick can publish in time
    await admin.wait_status([delivery_id], {"FAILED"}, timeout=10)
    await peer.log.wait_for("published", timeout=5)
    assert await redis.exists(f"event:{derive_event_id(f'delivery-failed:{sub_id}:{delivery_id}')}")


async def test_exceeds_rule_disables_on_the_second_failure(
    redis: Redis, admin: Admin, receiver: Receiver, start_peer: StartPeer
) -> None:
    receiver.behaviours["/fail"] = status(404)
    sub_id = await admin.subscription(
        receiver.url("/fail"), retry_policy={"max_retries": 0}, disable_after_failures=1
    )
    await start_peer(publisher=False)
    first = await admin.deliver(sub_id)
    await admin.wait_status([first], {"FAILED"}, timeout=10)
    sub = await admin.sub_record(sub_id)
    assert (sub["consecutive_failures"], sub["status"]) == (1, "ACTIVE")  # 1 does not exceed 1
    assert not await redis.exists(f"dispatcher:event-outbox:task:webhook-disabled:{sub_id}:{first}")

    second = await admin.deliver(sub_id)
    await admin.wait_status([second], {"FAILED"}, timeout=10)
    sub = await admin.sub_record(sub_id)
    assert (sub["consecutive_failures"], sub["status"]) == (2, "DISABLED")
    task_id = f"webhook-disabled:{sub_id}:{second}"
    task = await load(redis, f"dispatcher:event-outbox:task:{task_id}")
    event = task["event"]
    assert event["event_id"] == derive_event_id(task_id) and event["tenant_id"] == "acme"
    assert event["data"]["previous_status"] == "ACTIVE"
    assert event["data"]["disable_reason"] == "consecutive_failures_exceeded_threshold"
    assert event["correlation_id"] == f"webhook_auto_disable:{sub_id}:{second}"


async def test_upstream_outcomes(
    redis: Redis, admin: Admin, receiver: Receiver, start_peer: StartPeer
) -> None:
    tenant_sub = await admin.subscription(receiver.url())
    no_secret = await admin.subscription(receiver.url(), secret=None)
    blocked = await admin.deliver(tenant_sub, event_type="api_key.created", category="api_key")
    held = await admin.deliver(no_secret)
    await redis.set("delivery:del_corrupt000000000", "{not json")
    await redis.lpush("dispatch:pending", "del_corrupt000000000", "del_missing000000000")
    peer = await start_peer(secret_retry_delay_ms=60_000)

    [doc] = await admin.wait_status([blocked], {"FAILED"}, timeout=10)
    assert doc["error_message"].startswith("Delivery blocked by webhook ownership boundary (#209)")
    assert doc["attempts"] == 0 and "completed_at" in doc
    await peer.log.wait_for("outcome", held)
    assert (await admin.record(held))["status"] == "PENDING"  # never sent unsigned
    assert await redis.zscore("dispatch:retry", held) is not None
    await peer.log.wait_for("outcome", "del_missing000000000")
    [entry] = [json.loads(e) for e in await redis.lrange("dispatch:failed", 0, -1)]
    assert entry["delivery_id"] == "del_corrupt000000000" and entry["reason"] == "corrupt_record"
    assert entry["payload"] == "{not json" and isinstance(entry["quarantined_at_ms"], int)
    assert receiver.requests == []
    assert (await admin.sub_record(tenant_sub))["consecutive_failures"] == 0


async def test_writes_are_fenced_on_the_claim_owner(
    redis: Redis, admin: Admin, receiver: Receiver, redis_server: RedisServer
) -> None:
    sub_id = await admin.subscription(receiver.url())
    delivery_id = await admin.deliver(sub_id)
    await redis.lmove("dispatch:pending", "dispatch:processing", "RIGHT", "LEFT")
    other = str(uuid.uuid4())  # someone else (a recovering instance) owns it now
    await redis.hset("dispatch:processing:claim_owner", delivery_id, other)
    await redis.zadd("dispatch:processing:claimed_at", {delivery_id: 1})
    peer = JavaPeer(peer_options(redis_server))
    await peer.connect()
    try:
        await peer.workers[0].handle(delivery_id, str(uuid.uuid4()))
    finally:
        await peer.stop()
    assert len(receiver.requests) == 1  # the send happened (a crash-window duplicate) ...
    assert peer.log.find("fenced_out", delivery_id)  # ... but nothing was written
    assert (await admin.record(delivery_id))["status"] == "PENDING"
    assert (await admin.sub_record(sub_id)).get("last_success_at") is None
    assert await claim_state(redis, delivery_id) == ([delivery_id.encode()], 1.0, other.encode())


async def test_recovery_waits_a_whole_idle_window_for_an_ownerless_entry(
    redis: Redis, admin: Admin, receiver: Receiver, start_peer: StartPeer
) -> None:
    sub_id = await admin.subscription(receiver.url())
    delivery_id = await admin.deliver(sub_id)
    await redis.lmove("dispatch:pending", "dispatch:processing", "RIGHT", "LEFT")  # a crash
    peer = await start_peer(recovery_idle_ms=500, recovery_interval_ms=100)
    _, claimed_at, owner = await claim_state(redis, delivery_id)
    assert owner == b"__orphan__" and claimed_at is not None  # stamped by the start-up pass
    [recovered] = await peer.log.wait_for("recovered", delivery_id, timeout=5)
    assert recovered["ts_ms"] - claimed_at >= 500
    await admin.wait_status([delivery_id], {"SUCCESS"}, timeout=5)
    assert await claim_state(redis, delivery_id) == ([], None, None)


async def test_die_after_send_leaves_a_claim_behind(
    redis: Redis, admin: Admin, receiver: Receiver, redis_server: RedisServer, start_peer: StartPeer
) -> None:
    sub_id = await admin.subscription(receiver.url())
    delivery_id = await admin.deliver(sub_id)
    proc = PeerProcess(peer_options(redis_server, die_after_send=1))
    try:
        proc.start()
        assert await proc.wait_exit(timeout=15) == 137, proc.stderr()
    finally:
        proc.cleanup()
    assert len(receiver.requests) == 1
    doc = await admin.record(delivery_id)
    assert (doc["status"], doc["attempts"]) == ("PENDING", 0)  # the outcome was never written
    processing, claimed_at, owner = await claim_state(redis, delivery_id)
    assert processing == [delivery_id.encode()] and claimed_at is not None
    assert uuid.UUID(owner.decode()).version == 4

    await start_peer(recovery_idle_ms=300, recovery_interval_ms=100)  # a second instance
    await admin.wait_status([delivery_id], {"SUCCESS"}, timeout=8)
    assert len(receiver.requests) == 2  # the duplicate a crash allows


async def test_die_after_blmove_leaves_an_ownerless_entry(
    redis: Redis, admin: Admin, receiver: Receiver, redis_server: RedisServer
) -> None:
    delivery_id = await admin.deliver(await admin.subscription(receiver.url()))
    proc = PeerProcess(peer_options(redis_server, die_after_blmove=1))
    try:
        proc.start()
        assert await proc.wait_exit(timeout=15) == 137, proc.stderr()
        assert proc.find("dying")[0]["point"] == "blmove"
    finally:
        proc.cleanup()
    assert await claim_state(redis, delivery_id) == ([delivery_id.encode()], None, None)
    assert receiver.requests == []


async def test_in_process_kill_point_freezes_the_peer(
    redis: Redis, admin: Admin, receiver: Receiver, start_peer: StartPeer
) -> None:
    delivery_id = await admin.deliver(await admin.subscription(receiver.url()))
    peer = await start_peer(die_after_send=1)  # in-process: freeze, never os._exit
    await peer.log.wait_for("dying", timeout=10)
    await receiver.wait_count(1)
    assert peer.dead and not peer.log.find("outcome", delivery_id)
    assert (await admin.record(delivery_id))["status"] == "PENDING"
    processing, claimed_at, owner = await claim_state(redis, delivery_id)
    assert processing == [delivery_id.encode()] and claimed_at is not None
    assert owner not in (None, b"__orphan__")


async def test_subscription_merge_is_compare_and_set(
    redis: Redis, admin: Admin, receiver: Receiver, redis_server: RedisServer
) -> None:
    sub_id = await admin.subscription(receiver.url(), consecutive_failures=3)
    delivery_id = await admin.deliver(sub_id)
    peer = JavaPeer(peer_options(redis_server, pending_timeout_s=1.0))
    await peer.connect()
    real = peer.sc.outcome
    calls: list[int] = []

    async def racing(keys: list[str], args: list[Any]) -> Any:
        calls.append(1)
        if len(calls) == 1:  # an admin PATCH lands between the read and the fenced write
            doc = await admin.sub_record(sub_id)
            doc["name"] = "patched"
            await redis.set(f"webhook:{sub_id}", json.dumps(doc))
        return await real(keys=keys, args=args)

    peer.sc.outcome = racing  # type: ignore[assignment]
    try:
        assert await peer.step() == delivery_id
    finally:
        await peer.stop()
    assert len(calls) == 2  # the conflict was seen and the merge redone on the new JSON
    sub = await admin.sub_record(sub_id)
    assert (sub["name"], sub["consecutive_failures"]) == ("patched", 0)
    assert (await admin.record(delivery_id))["status"] == "SUCCESS"


async def test_ordering_lock_option_takes_and_releases_the_lease(
    redis: Redis, admin: Admin, receiver: Receiver, start_peer: StartPeer
) -> None:
    started = time.monotonic()
    await redis.set("dispatch:ordering:lock", "java-instance-a", px=600)
    delivery_id = await admin.deliver(await admin.subscription(receiver.url()))
    await start_peer(ordering_lock=True)
    await admin.wait_status([delivery_id], {"SUCCESS"}, timeout=5)
    assert receiver.requests[0].at - started >= 0.5  # sent only once the other lease expired
    assert await redis.exists("dispatch:ordering:lock") == 0
