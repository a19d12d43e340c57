"""The delivery lifecycle of contract section 3 against a real Redis and a real receiver."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable

import pytest
from redis.asyncio import Redis
from redis.exceptions import WatchError

from cycles_events import logs
from cycles_events.crypto import encrypt_secret
from cycles_events.models import dumps, format_instant, parse_instant_ms
from cycles_events.signing import sign
from tests.integration.conftest import StartApp
from tests.support import KEY, Admin, Receiver, hang, now_ms, status, wait_until


async def test_delivers_signed_event_with_every_header(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    sub = await admin.subscription(
        receiver.url(),
        encrypt=True,
        secret="whsec_abc",
        headers={"X-Team": "ops", "x-cycles-signature": "forged", "Content-Type": "text/plain"},
    )
    event = await admin.event(request_id="req_42")
    delivery_id = await admin.delivery(sub, event, trace_flags="00", traceparent_inbound_valid=True)
    await start_app()
    (doc,) = await admin.wait_status([delivery_id], {"SUCCESS"})
    assert doc["attempts"] == 1 and doc["response_status"] == 200
    assert "completed_at" in doc and "error_message" not in doc
    assert doc["trace_id"] == event["trace_id"]
    (req,) = receiver.requests
    stored = await redis.get(f"event:{event['event_id']}")
    assert req.body == stored
    assert req.headers["X-Cycles-Signature"] == sign("whsec_abc", req.body)
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"].startswith("cycles-server-events/")
    assert req.headers["X-Cycles-Event-Id"] == event["event_id"]
    assert req.headers["X-Cycles-Event-Type"] == "budget.exhausted"
    assert req.headers["X-Cycles-Trace-Id"] == event["trace_id"]
    version, trace, span, flags = req.headers["traceparent"].split("-")
    assert (version, trace, len(span), flags) == ("00", event["trace_id"], 16, "00")
    assert req.headers["X-Request-Id"] == "req_42"
    assert req.headers["X-Team"] == "ops"
    sub_doc = await admin.sub_record(sub)
    assert sub_doc["consecutive_failures"] == 0
    assert sub_doc["last_success_at"] == sub_doc["last_triggered_at"]
    assert sub_doc["headers"]["x-cycles-signature"] == "forged"  # kept as the admin wrote it
    assert await redis.llen("dispatch:processing") == 0
    assert await redis.hlen("dispatch:processing:claim_owner") == 0
    ttl = await redis.ttl(f"delivery:{delivery_id}")
    assert 13 * 86400 < ttl <= 14 * 86400
    assert (
        json.loads(await redis.get(f"delivery:{delivery_id}"))["attempted_at"]
        == ((await admin.record(delivery_id))["attempted_at"])
    )


FAST_RETRY = {
    "max_retries": 2,
    "initial_delay_ms": 100,
    "backoff_multiplier": 2.0,
    "max_delay_ms": 1000,
}


async def test_retries_then_fails_then_auto_disables_with_events(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    receiver.behaviours["/down"] = status(503)
    sub = await admin.subscription(
        receiver.url("/down"),
        retry_policy=FAST_RETRY,
        disable_after_failures=2,
        consecutive_failures=2,
        metadata={"owner": "ops"},
    )
    event = await admin.event(request_id="req_9")
    delivery_id = await admin.delivery(sub, event)
    app = await start_app()
    (doc,) = await admin.wait_status([delivery_id], {"FAILED"})
    assert doc["attempts"] == 3 and doc["response_status"] == 503
    assert doc["error_message"] == "HTTP 503" and "next_retry_at" not in doc
    assert len(receiver.for_path("/down")) == 3
    sub_doc = await admin.sub_record(sub)
    # revision 2: disabled when the count exceeds the threshold (3 > 2), not when it reaches it
    assert sub_doc["status"] == "DISABLED" and sub_doc["consecutive_failures"] == 3
    assert sub_doc["metadata"] == {"owner": "ops"} and "last_failure_at" in sub_doc
    await wait_until(lambda: redis.zcard("events:_all"), 3)  # its event and both meta-events
    all_events = [e.decode() for e in await redis.zrange("events:_all", 0, -1)]
    saved = [json.loads(await redis.get(f"event:{e}")) for e in all_events]
    types = {e["event_type"]: e for e in saved}
    disabled = types["webhook.disabled"]
    assert disabled["tenant_id"] == "acme" and disabled["data"]["previous_status"] == "ACTIVE"
    assert disabled["request_id"] == "req_9" and disabled["trace_id"] == event["trace_id"]
    assert disabled["event_id"].encode() in await redis.zrange("events:acme", 0, -1)
    cid = disabled["correlation_id"]
    assert await redis.smembers(f"events:correlation:{cid}") == {disabled["event_id"].encode()}
    assert await redis.ttl(f"event:{disabled['event_id']}") > 89 * 86400
    failed = types["system.webhook_delivery_failed"]
    assert failed["data"]["details"]["delivery_id"] == delivery_id
    assert failed["event_id"].encode() in await redis.zrange("events:__system__", 0, -1)
    exposition = app.metrics.exposition().decode()
    disabled_line = (
        "cycles_webhook_subscription_auto_disabled_total"
        '{reason="consecutive_failures_exceeded_threshold",tenant="acme"} 1.0'
    )
    assert disabled_line in exposition
    assert (
        'cycles_webhook_delivery_retried_total{event_type="budget.exhausted",tenant="acme"} 2.0'
        in exposition
    )


@pytest.mark.parametrize("honoured", [False, True])
async def test_retrying_record_between_attempts(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis, honoured: bool
) -> None:
    await admin.security()
    receiver.behaviours["/slow-down"] = status(429, {"Retry-After": "5"})
    sub = await admin.subscription(receiver.url("/slow-down"), retry_policy=FAST_RETRY)
    delivery_id = await admin.deliver(sub)
    await start_app(DISPATCH_RETRY_HONOR_RETRY_AFTER=str(honoured).lower())
    (doc,) = await admin.wait_status([delivery_id], {"RETRYING"})
    assert doc["attempts"] == 1 and doc["response_status"] == 429
    assert doc["error_message"] == "HTTP 429"
    score = await redis.zscore("dispatch:retry", delivery_id)
    assert score == parse_instant_ms(doc["next_retry_at"])
    delay = score - parse_instant_ms(doc["attempted_at"])
    if honoured:  # opted in: Retry-After (5 s) raised the policy's 100 ms first delay
        assert delay >= 4900
    else:  # by default, as the Java service: the contract's formula only
        assert delay < 1000


async def test_status_gate_and_missing_records(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    sub = await admin.subscription(receiver.url())
    done = await admin.deliver(sub)
    await redis.set(
        f"delivery:{done}", json.dumps({**(await admin.record(done)), "status": "SUCCESS"})
    )
    await redis.lpush("dispatch:pending", "del_0000000000000000")  # no record at all
    later = await admin.deliver(sub)
    await start_app()
    await admin.wait_status([later], {"SUCCESS"})
    for _ in range(200):  # the id with no record is acked too
        if not await redis.llen("dispatch:processing"):
            break
        await asyncio.sleep(0.02)
    assert [r.headers["X-Cycles-Event-Id"] for r in receiver.requests] == [
        (await admin.record(later))["event_id"]
    ]
    assert await redis.llen("dispatch:pending") == 0
    assert await redis.llen("dispatch:processing") == 0


async def test_duplicate_ids_are_sent_once(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    receiver.behaviours["/slow"] = hang(0.3)
    sub = await admin.subscription(receiver.url("/slow"))
    delivery_id = await admin.deliver(sub)
    for _ in range(5):
        await redis.lpush("dispatch:pending", delivery_id)
    await start_app()
    await start_app()  # a second instance competes for the same ids
    await admin.wait_status([delivery_id], {"SUCCESS"})
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 1


async def test_claim_owner_stays_a_hash_table_while_claims_are_held(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    # a listpack (Redis's encoding of a small hash) makes each HMGET/HSET/HDEL field a scan
    await admin.security()
    receiver.behaviours["/slow"] = hang(0.5)
    sub = await admin.subscription(receiver.url("/slow"))
    delivery_id = await admin.deliver(sub)
    await start_app()
    owner = "dispatch:processing:claim_owner"
    await wait_until(lambda: redis.hexists(owner, delivery_id))
    assert await redis.object("encoding", owner) == b"hashtable"
    assert len(await redis.hget(owner, delivery_id) or b"") > 64
    await admin.wait_status([delivery_id], {"SUCCESS"})


async def test_future_retry_goes_back_on_the_retry_zset(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    sub = await admin.subscription(receiver.url())
    event = await admin.event()
    due = now_ms() + 60_000
    delivery_id = await admin.delivery(
        sub, event, status="RETRYING", attempts=1, next_retry_at=format_instant(due)
    )
    await start_app()
    for _ in range(100):
        if await redis.zscore("dispatch:retry", delivery_id):
            break
        await asyncio.sleep(0.05)
    assert await redis.zscore("dispatch:retry", delivery_id) == due
    assert receiver.requests == []
    assert (await admin.record(delivery_id))["status"] == "RETRYING"


async def test_upstream_failures(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    good = await admin.subscription(receiver.url(), consecutive_failures=3)
    paused = await admin.subscription(receiver.url(), status="PAUSED")
    event = await admin.event()
    cases = {
        "stale": await admin.delivery(good, event, created_ms=now_ms() - 25 * 3_600_000),
        "no_event": await admin.delivery(good, {"event_id": "evt_missing0000000"}),
        "no_sub": await admin.delivery("whsub_missing000000", event),
        "paused": await admin.delivery(paused, event),
    }
    app = await start_app()
    docs = dict(zip(cases, await admin.wait_status(list(cases.values()), {"FAILED"}), strict=True))
    assert docs["stale"]["error_message"] == "Delivery expired: 25h old (max 24h)"
    assert docs["no_event"]["error_message"] == "Event not found: evt_missing0000000"
    assert docs["no_sub"]["error_message"] == "Subscription not found"
    assert docs["paused"]["error_message"] == "Subscription not active: PAUSED"
    assert all(d["attempts"] == 0 and "completed_at" in d for d in docs.values())
    assert receiver.requests == []
    assert (await admin.sub_record(good))["consecutive_failures"] == 3
    assert "last_failure_at" not in await admin.sub_record(good)
    text = app.metrics.exposition().decode()
    assert 'cycles_webhook_delivery_stale_total{tenant="acme"} 1.0' in text
    assert 'reason="event_not_found"' in text and 'reason="subscription_inactive"' in text


async def test_bad_input_fails_cleanly_and_pool_keeps_its_size(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    sub_ok = await admin.subscription(receiver.url("/ok"))
    bad_url = await admin.subscription("ht!tp://::nonsense", secret=None)
    wrong_key = await admin.subscription(receiver.url("/wk"), secret=None)
    await redis.set(f"webhook:secret:{wrong_key}", encrypt_secret("whsec_x", bytes(32)))
    tampered = await admin.subscription(receiver.url("/tamper"), secret=None)
    enc = encrypt_secret("whsec_x", KEY)
    await redis.set(
        f"webhook:secret:{tampered}", enc[:-6] + ("A" if enc[-6] != "A" else "B") + enc[-5:]
    )
    bad_sub = await admin.subscription(receiver.url("/badsub"))
    await redis.set(f"webhook:{bad_sub}", b"{not json")
    event = await admin.event()
    bad_event = await admin.event()
    await redis.set(f"event:{bad_event['event_id']}", b"\xff\xfe garbage")
    ids = {
        "bad_url": await admin.delivery(bad_url, event),
        "bad_sub": await admin.delivery(bad_sub, event),
        "bad_event": await admin.delivery(sub_ok, bad_event),
    }
    # revision 2: an undecryptable secret keeps its delivery for later, never FAILED, never sent
    held = {
        "wrong_key": await admin.delivery(wrong_key, event),
        "tampered": await admin.delivery(tampered, event),
    }
    corrupt = "del_c0ffee0000000001"
    await redis.set(f"delivery:{corrupt}", b"{{{{ corrupt")
    await redis.lpush("dispatch:pending", corrupt)
    app = await start_app(DISPATCH_CONCURRENCY=4)
    docs = dict(zip(ids, await admin.wait_status(list(ids.values()), {"FAILED"}), strict=True))
    assert docs["bad_url"]["error_message"].startswith("URL blocked")
    await wait_until(lambda: redis.zcard("dispatch:retry"), 2)
    for delivery_id in held.values():
        assert (await admin.record(delivery_id))["status"] == "PENDING"
        assert await redis.zscore("dispatch:retry", delivery_id) is not None
    assert docs["bad_sub"]["error_message"] == "Subscription record is not valid JSON"
    assert docs["bad_event"]["error_message"].startswith("Event record is not valid JSON")
    assert receiver.requests == []  # never an unsigned send
    for _ in range(100):
        if await redis.llen("dispatch:failed"):
            break
        await asyncio.sleep(0.05)
    entry = json.loads(await redis.lindex("dispatch:failed", 0))
    assert entry["delivery_id"] == corrupt and entry["reason"] == "corrupt_record"
    assert entry["payload"] == "{{{{ corrupt" and isinstance(entry["quarantined_at_ms"], int)
    # the pool is whole: a burst larger than the pool still all arrives
    good = [await admin.deliver(sub_ok) for _ in range(12)]
    await admin.wait_status(good, {"SUCCESS"})
    assert app.pipeline.counts.claimed == 0 and not app.tasks["dispatcher"].done()


async def admin_renames(redis: Redis, key: str, encode: Callable[[object], str]) -> int | None:
    """Rename a subscription 60 times while deliveries update it, as an admin PATCH does
    (WATCH/MULTI: a write lands only if nothing changed between its read and its write); the
    number of the last rename that landed."""
    landed = None
    for i in range(60):
        async with redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                current = json.loads(await pipe.get(key))
                current["name"] = f"renamed-{i}"
                pipe.multi()
                pipe.set(key, encode(current))
                await pipe.execute()
                landed = i
            except WatchError:
                continue
        await asyncio.sleep(0.002)
    return landed


async def test_concurrent_admin_write_is_never_lost(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    sub = await admin.subscription(receiver.url())
    ids = [await admin.deliver(sub) for _ in range(60)]
    await start_app()
    landed = await admin_renames(redis, f"webhook:{sub}", json.dumps)
    await admin.wait_status(ids, {"SUCCESS"})
    assert landed is not None
    final = await admin.sub_record(sub)
    assert final["name"] == f"renamed-{landed}"  # no read-modify-write of ours clobbered it
    assert final["consecutive_failures"] == 0 and "last_success_at" in final
    final["name"] = "final-admin-name"  # a plain admin write between two bursts
    await redis.set(f"webhook:{sub}", json.dumps(final))
    more = [await admin.deliver(sub) for _ in range(10)]
    await admin.wait_status(more, {"SUCCESS"})
    final = await admin.sub_record(sub)
    assert final["name"] == "final-admin-name" and final["consecutive_failures"] == 0


async def test_two_instances_successes_never_clobber_an_admin_write(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    # each instance's success fits the other's (compact JSON, as Java and we write it); an admin
    # rename between them must still conflict and be merged, never overwritten
    await admin.security()
    sub = await admin.subscription(receiver.url())
    key = f"webhook:{sub}"
    doc = json.loads(await redis.get(key))
    doc.update(last_triggered_at=None, last_success_at=None)
    await redis.set(key, dumps(doc))
    ids = [await admin.deliver(sub) for _ in range(120)]
    await start_app()
    await start_app()
    landed = await admin_renames(redis, key, dumps)
    await admin.wait_status(ids, {"SUCCESS"})
    assert landed is not None
    final = await admin.sub_record(sub)
    assert final["name"] == f"renamed-{landed}"
    assert final["consecutive_failures"] == 0
    assert final["last_success_at"] == final["last_triggered_at"] is not None
    assert len(receiver.requests) == 120


async def test_failure_logs_carry_the_ids_to_tie_them_to_a_receiver(
    start_app: StartApp,
    admin: Admin,
    receiver: Receiver,
) -> None:
    stream = io.StringIO()
    logs.configure("INFO", stream)
    await admin.security()
    receiver.behaviours["/down"] = status(503)
    sub = await admin.subscription(
        receiver.url("/down"), retry_policy={**FAST_RETRY, "max_retries": 1}
    )
    event = await admin.event()
    delivery_id = await admin.delivery(sub, event)
    await start_app()
    await admin.wait_status([delivery_id], {"FAILED"})
    await asyncio.sleep(0.2)  # the log line follows the write
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    for action in ("delivery_retrying", "delivery_failed"):
        (line,) = [
            x for x in lines if x["action"] == action and x.get("delivery_id") == delivery_id
        ]
        assert line["subscription_id"] == sub and line["tenant_id"] == "acme"
        assert line["event_id"] == event["event_id"] and line["reason"] == "http_5xx"
