"""Contract revision 2, rule by rule, against records written as the admin writes them."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis

from cycles_events import boundary, metaevents
from cycles_events.dispatch import intake
from tests.integration.conftest import StartApp
from tests.support import Admin, Receiver, metric, now_ms, wait_until

ONE_TRY = {
    "max_retries": 0,
    "initial_delay_ms": 100,
    "backoff_multiplier": 1.0,
    "max_delay_ms": 1000,
}
BLOCKED = {
    "api_key": {"event_type": "api_key.created", "category": "api_key"},
    "policy": {"event_type": "policy.updated", "category": "policy"},
    "webhook": {"event_type": "webhook.paused", "category": "webhook"},
    "system": {"event_type": "system.webhook_test", "category": "system"},
    "mixed": {"event_type": "budget.exhausted", "category": "system"},
    "untyped": {"event_type": None, "category": None},
}
ALLOWED = {
    "budget": {"event_type": "budget.exhausted", "category": "budget"},
    "reservation": {"event_type": "reservation.denied", "category": "reservation"},
    "tenant": {"event_type": "tenant.suspended", "category": "tenant"},
    "type only": {"event_type": "tenant.created", "category": None},
}


async def test_the_ownership_boundary(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    tenant_sub = await admin.subscription(receiver.url("/tenant"), tenant="acme")
    blank_sub = await admin.subscription(receiver.url("/blank"), tenant="")  # concrete too
    system_sub = await admin.subscription(receiver.url("/system"), tenant="__system__")

    async def deliver(sub: str, fields: dict[str, str | None]) -> str:
        event = await admin.event(**fields)
        for name in ("event_type", "category"):  # absent, not null, as producers omit nulls
            if event.get(name) is None:
                event.pop(name)
        await redis.set(f"event:{event['event_id']}", json.dumps(event))
        return await admin.delivery(sub, event, event_type=fields["event_type"] or "")

    blocked = [await deliver(tenant_sub, f) for f in BLOCKED.values()]
    blocked.append(await deliver(blank_sub, BLOCKED["api_key"]))
    allowed = [await deliver(tenant_sub, f) for f in ALLOWED.values()]
    to_system = [await deliver(system_sub, f) for f in BLOCKED.values()]
    app = await start_app()
    docs = await admin.wait_status(blocked, {"FAILED"})
    for doc in docs:
        assert doc["error_message"] == boundary.MESSAGE and doc["attempts"] == 0
        assert "completed_at" in doc and "next_retry_at" not in doc
    await admin.wait_status(allowed + to_system, {"SUCCESS"})
    assert not receiver.for_path("/tenant")[len(allowed) :]
    assert {r.headers["X-Cycles-Event-Type"] for r in receiver.for_path("/tenant")} == {
        f["event_type"] for f in ALLOWED.values()
    }
    assert receiver.for_path("/blank") == []
    assert (await admin.sub_record(tenant_sub))["consecutive_failures"] == 0
    assert await redis.zcard("dispatch:retry") == 0
    skipped = "cycles_webhook_delivery_boundary_skipped_total"
    assert metric(app, skipped) == len(blocked)
    assert (
        # the blank-tenant subscription's tag falls back to the event's tenant
        metric(app, skipped, tenant="acme", event_type="api_key.created", category="api_key") == 2
    )
    assert metric(app, skipped, event_type="UNKNOWN", category="UNKNOWN") == 1  # untyped
    assert metric(app, "cycles_webhook_delivery_failed_total") == 0  # not a failure reason


async def test_a_missing_secret_is_never_sent_and_ends_by_the_stale_rule(
    start_app: StartApp,
    admin: Admin,
    receiver: Receiver,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(intake, "secret_hold_ms", lambda age_ms: 200)
    await admin.security()
    sub = await admin.subscription(receiver.url(), secret=None)
    event = await admin.event()
    delivery_id = await admin.delivery(sub, event, created_ms=now_ms() - 2500)
    app = await start_app(MAX_DELIVERY_AGE_MS=4000)
    name = "cycles_webhook_delivery_failed_total"
    await wait_until(lambda: _at_least(app, name, 3, reason="missing_signing_secret"), True)
    doc = await admin.record(delivery_id)
    assert doc["status"] == "PENDING" and doc["attempts"] == 0  # not an attempt
    await redis.set(f"webhook:secret:{sub}", "")  # a blank secret is no secret either
    (doc,) = await admin.wait_status([delivery_id], {"FAILED"}, timeout=10)
    assert doc["error_message"].startswith("Delivery expired")
    assert receiver.requests == []  # never an unsigned send
    assert (await admin.sub_record(sub))["consecutive_failures"] == 0


async def _at_least(app: object, name: str, n: float, **labels: str) -> bool:
    return metric(app, name, **labels) >= n  # type: ignore[arg-type]


async def test_no_http_answer_leaves_no_response_status(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    flaky = {"n": 0}

    async def then_reset(request):  # type: ignore[no-untyped-def]
        from aiohttp import web

        flaky["n"] += 1
        if flaky["n"] == 1:
            return web.Response(status=503)
        request.transport.close()  # the last attempt gets no HTTP answer
        return web.Response(status=200)

    receiver.behaviours["/x"] = then_reset
    policy = {**ONE_TRY, "max_retries": 1}
    sub = await admin.subscription(receiver.url("/x"), retry_policy=policy)
    delivery_id = await admin.deliver(sub)
    await start_app()
    (doc,) = await admin.wait_status([delivery_id], {"FAILED"})
    assert doc["attempts"] == 2 and "response_status" not in doc  # not the first attempt's 503
    assert doc["error_message"] != "HTTP 503"


async def test_corrupt_records_are_dead_lettered(
    start_app: StartApp, admin: Admin, redis: Redis
) -> None:
    await redis.set("delivery:del_0000000000000bad", "{not json")
    await redis.lpush("dispatch:pending", "del_0000000000000bad")
    app = await start_app()
    await wait_until(lambda: redis.llen("dispatch:failed"), 1)
    name = "cycles_webhook_delivery_dead_lettered_total"
    await wait_until(lambda: _at_least(app, name, 1, reason="corrupt_record"), True)


@pytest.mark.parametrize(
    "ranges",
    [["hooks.example.com"], ["10.0.0.0/8/extra"], ["fe80::%eth0/64"], ["10.0.0.0/33"]],
)
async def test_a_blocked_range_that_is_not_a_literal_cidr_is_indeterminate(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis, ranges: list[str]
) -> None:
    await admin.security({"allow_http": True, "blocked_cidr_ranges": ranges})
    app = await start_app()
    assert app.policy.error is not None
    sub = await admin.subscription(receiver.url())
    held = await admin.deliver(sub)
    name = "cycles_webhook_security_config_indeterminate_total"
    await wait_until(lambda: _at_least(app, name, 1), True)
    assert (await admin.record(held))["status"] == "PENDING" and receiver.requests == []


async def test_a_java_staged_task_is_published_under_its_lock(
    start_app: StartApp, admin: Admin, redis: Redis
) -> None:
    delivery = {"delivery_id": "del_0123456789abcdef", "subscription_id": "whsub_0123456789abcdef"}
    task_id = metaevents.failed_task_id(delivery["subscription_id"], delivery["delivery_id"])
    event_id = metaevents.event_id_for(task_id)
    assert event_id == "evt_8661e7f43baae5e2"  # the contract's vector
    staged = {
        "task_id": task_id,
        "created_at": "2026-11-22T08:15:30Z",
        "event": {
            "event_id": event_id,
            "event_type": "system.webhook_delivery_failed",
            "category": "system",
            "timestamp": "2026-11-22T08:15:30Z",
            "tenant_id": "__system__",
            "source": "cycles-server-events",
            "correlation_id": f"webhook_delivery_failed:{delivery['subscription_id']}:x",
        },
    }
    await redis.set(f"dispatcher:event-outbox:task:{task_id}", json.dumps(staged))
    await redis.zadd("dispatcher:event-outbox:pending", {task_id: 1795335330000})
    await redis.set(f"dispatcher:event-outbox:lock:{task_id}", "java-publisher", px=1500)
    app = await start_app()
    assert await redis.exists(f"dispatcher:event-outbox:task:{task_id}")  # Java holds it
    await wait_until(lambda: redis.exists(f"event:{event_id}"), 1, timeout=10)
    assert json.loads(await redis.get(f"event:{event_id}")) == staged["event"]
    assert await redis.zscore("events:__system__", event_id) == 1795335330000
    assert not await redis.exists(f"dispatcher:event-outbox:task:{task_id}")
    assert await redis.zcard("dispatcher:event-outbox:pending") == 0
    assert metric(app, "cycles_webhook_dispatcher_event_published_total") == 1


async def test_an_outbox_task_that_cannot_be_saved_is_deferred_then_dead_lettered(
    start_app: StartApp, admin: Admin, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cycles_events import outbox

    monkeypatch.setattr(outbox, "MAX_ATTEMPTS", 3)
    monkeypatch.setattr(outbox, "FIRST_DEFER_MS", 50)
    task_id = "delivery-failed:whsub_1:del_1"
    event = {"event_id": "evt_1", "event_type": "system.webhook_delivery_failed"}
    event |= {"tenant_id": "__system__", "timestamp": "2026-11-22T08:15:30Z"}
    await redis.set(
        f"dispatcher:event-outbox:task:{task_id}", json.dumps({"task_id": task_id, "event": event})
    )
    await redis.zadd("dispatcher:event-outbox:pending", {task_id: 0})
    await redis.set("events:__system__", "an operator's mistake")  # every save fails
    app = await start_app()
    await wait_until(lambda: redis.llen("dispatcher:event-outbox:failed"), 1, timeout=15)
    entry = json.loads(await redis.lindex("dispatcher:event-outbox:failed", 0))
    assert entry["task_id"] == task_id and json.loads(entry["payload"])["event"] == event
    assert await redis.zcard("dispatcher:event-outbox:pending") == 0
    deferred = "cycles_webhook_dispatcher_event_deferred_total"
    dead = "cycles_webhook_dispatcher_event_dead_lettered_total"
    assert metric(app, deferred, reason="save_failed") == 2
    assert metric(app, dead, event_type="system.webhook_delivery_failed", reason="save_failed") == 1
