"""config:webhook-security through the daemon: read from Redis, applied both ways, never fatal."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from cycles_events.app import App
from cycles_events.dispatch import intake
from tests.integration.conftest import StartApp
from tests.support import OPEN_SECURITY, Admin, Receiver, metric


async def set_config(app: App, redis: Redis, config: dict[str, Any] | str) -> None:
    """Write the config as the admin does and let the refresher read it now."""
    raw = config if isinstance(config, str) else json.dumps(config)
    await redis.set("config:webhook-security", raw)
    await app.security.step()


async def test_allow_http_and_patterns_both_ways(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    app = await start_app()
    await set_config(app, redis, {**OPEN_SECURITY, "allow_http": False})
    sub = await admin.subscription(receiver.url("/allowed/x"))
    no_http = await admin.deliver(sub)
    (doc,) = await admin.wait_status([no_http], {"FAILED", "SUCCESS"})
    assert doc["status"] == "FAILED" and "http is not allowed" in doc["error_message"]
    assert receiver.requests == []

    await set_config(app, redis, {**OPEN_SECURITY, "allow_http": True})
    (doc,) = await admin.wait_status([await admin.deliver(sub)], {"FAILED", "SUCCESS"})
    assert doc["status"] == "SUCCESS"

    pattern = f"http://127.0.0.1:{receiver.port}/allowed/*"
    await set_config(app, redis, {**OPEN_SECURITY, "allowed_url_patterns": [pattern]})
    other = await admin.subscription(receiver.url("/other"))
    matched, unmatched = await admin.deliver(sub), await admin.deliver(other)
    ok, blocked = await admin.wait_status([matched, unmatched], {"FAILED", "SUCCESS"})
    assert ok["status"] == "SUCCESS"
    assert blocked["status"] == "FAILED"
    assert blocked["error_message"] == "URL blocked: not matched by allowed_url_patterns"
    assert [r.path for r in receiver.requests] == ["/allowed/x", "/allowed/x"]
    for sub_id in (sub, other):
        assert (await admin.sub_record(sub_id))["consecutive_failures"] == 0
    assert metric(app, "cycles_webhook_delivery_failed_total", reason="ssrf_blocked") == 2


async def test_the_config_is_read_on_a_timer_not_per_delivery(
    start_app: StartApp, admin: Admin, receiver: Receiver
) -> None:
    await admin.security()
    app = await start_app()
    assert app.security.interval_s <= 5.0
    reads = 0
    read = app.store.security_config

    async def counting() -> bytes | None:
        nonlocal reads
        reads += 1
        return await read()

    app.store.security_config = counting  # type: ignore[method-assign]
    sub = await admin.subscription(receiver.url())
    deliveries = [await admin.deliver(sub) for _ in range(30)]
    await admin.wait_status(deliveries, {"SUCCESS"})
    assert reads < 10


@pytest.mark.parametrize(
    "bad",
    ['{"allow_http":"yes"}', '{"blocked_cidr_ranges":["10.0.0.0/33"]}', "{not json", "[]"],
)
async def test_an_indeterminate_config_holds_deliveries_instead_of_failing_them(
    start_app: StartApp,
    admin: Admin,
    receiver: Receiver,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    bad: str,
) -> None:
    monkeypatch.setattr(intake, "CONFIG_HOLD_MS", 200)
    await admin.security()
    app = await start_app()
    sub = await admin.subscription(receiver.url())
    await admin.wait_status([await admin.deliver(sub)], {"SUCCESS"})

    await set_config(app, redis, bad)
    assert app.policy.error is not None
    parked = await admin.deliver(sub)
    name = "cycles_webhook_security_config_indeterminate_total"
    for _ in range(500):
        if metric(app, name) >= 3:  # held, tried again and held again, more than once
            break
        await asyncio.sleep(0.02)
    assert metric(app, name) >= 3
    doc = await admin.record(parked)
    assert doc["status"] == "PENDING" and doc["attempts"] == 0 and "error_message" not in doc
    assert len(receiver.requests) == 1
    assert metric(app, "cycles_webhook_delivery_failed_total") == 0
    assert (await admin.sub_record(sub))["consecutive_failures"] == 0

    await set_config(app, redis, OPEN_SECURITY)
    (doc,) = await admin.wait_status([parked], {"SUCCESS", "FAILED"})
    assert doc["status"] == "SUCCESS" and doc["attempts"] == 1
    assert len(receiver.requests) == 2
