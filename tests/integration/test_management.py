"""The management port: health groups, info, Prometheus families, 404/405, Redis outages."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from cycles_events import __version__
from cycles_events.app import App
from tests.integration.conftest import StartApp
from tests.support import (
    Admin,
    Receiver,
    RedisServer,
    hang,
    metric,
    now_ms,
    recorded,
    status,
)

FAST = {"max_retries": 1, "initial_delay_ms": 100, "backoff_multiplier": 1.0, "max_delay_ms": 1000}


async def get(app: App, path: str, method: str = "GET") -> tuple[int, Any]:
    url = f"http://127.0.0.1:{app.settings.management_port}{path}"
    async with aiohttp.ClientSession() as session, session.request(method, url) as resp:
        body = await resp.read()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, body.decode()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(
        v for lab, v in found.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    )


async def run_mixed_deliveries(admin: Admin, receiver: Receiver, redis: Redis) -> dict[str, str]:
    await admin.security()
    receiver.behaviours["/404"] = status(404)
    receiver.behaviours["/500"] = status(500)
    receiver.behaviours["/slow"] = hang(5)
    ok = await admin.subscription(receiver.url("/ok"))
    gone = await admin.subscription(receiver.url("/404"), retry_policy=FAST)
    broken = await admin.subscription(
        receiver.url("/500"),
        retry_policy=FAST,
        tenant="globex",
        disable_after_failures=1,
        consecutive_failures=1,
    )
    slow = await admin.subscription(receiver.url("/slow"), retry_policy=FAST)
    ids = {
        "ok": await admin.deliver(ok),
        "404": await admin.deliver(gone),
        "500": await admin.deliver(broken, tenant="globex"),
        "timeout": await admin.deliver(slow),
    }
    event = await admin.event()
    ids["stale"] = await admin.delivery(ok, event, created_ms=now_ms() - 30 * 3_600_000)
    return ids


async def test_every_family_after_real_deliveries(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    ids = await run_mixed_deliveries(admin, receiver, redis)
    app = await start_app(**{"dispatch.http.timeout-seconds": 1})
    await admin.wait_status(list(ids.values()), {"SUCCESS", "FAILED"}, timeout=30)
    await recorded(app)
    code, text = await get(app, "/actuator/prometheus")
    assert code == 200
    found = samples(text)
    bt = "budget.exhausted"
    assert value(found, "cycles_webhook_delivery_attempts_total", tenant="acme", event_type=bt) == 5
    assert value(found, "cycles_webhook_delivery_attempts_total", tenant="globex") == 2
    assert (
        value(
            found,
            "cycles_webhook_delivery_success_total",
            tenant="acme",
            event_type=bt,
            status_code_family="2xx",
        )
        == 1
    )
    assert value(found, "cycles_webhook_delivery_failed_total", reason="http_4xx") == 1
    assert (
        value(found, "cycles_webhook_delivery_failed_total", reason="http_5xx", tenant="globex")
        == 1
    )
    assert value(found, "cycles_webhook_delivery_failed_total", reason="transport_error") == 1
    assert value(found, "cycles_webhook_delivery_retried_total", tenant="acme") == 2
    assert value(found, "cycles_webhook_delivery_stale_total", tenant="acme") == 1
    assert (
        value(
            found,
            "cycles_webhook_subscription_auto_disabled_total",
            tenant="globex",
            reason="consecutive_failures_exceeded_threshold",
        )
        == 1
    )
    assert value(found, "cycles_webhook_delivery_latency_seconds_count", outcome="success") == 1
    assert (
        value(found, "cycles_webhook_delivery_latency_seconds_count", outcome="transport_error")
        == 2
    )
    assert "cycles_webhook_events_payload_invalid_total" in text  # family declared
    for name in (
        "cycles_webhook_dispatch_queue_depth",
        "cycles_webhook_dispatch_in_flight",
        "cycles_webhook_dispatch_oldest_pending_age_seconds",
        "cycles_webhook_dispatcher_ready",
        "process_cpu_seconds_total",
    ):
        assert name in found, name
    labels = {frozenset(lab) for lab, _ in found["cycles_webhook_delivery_failed_total"]}
    assert labels == {frozenset({"tenant", "event_type", "reason"})}


async def test_tenant_tag_can_be_turned_off(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    sub = await admin.subscription(receiver.url(), tenant="__system__")
    ids = [await admin.deliver(sub, event_type="custom.thing", category="custom")]
    app = await start_app(CYCLES_METRICS_TENANT_TAG_ENABLED="false")
    await admin.wait_status(ids, {"SUCCESS"})
    await recorded(app)
    found = samples((await get(app, "/actuator/prometheus"))[1])
    for name in (
        "cycles_webhook_delivery_attempts_total",
        "cycles_webhook_delivery_success_total",
        "cycles_webhook_delivery_latency_seconds_count",
    ):
        assert found[name] and all("tenant" not in lab for lab, _ in found[name]), name
    assert value(found, "cycles_webhook_delivery_attempts_total", event_type="custom.thing") == 1


async def test_blank_tenant_is_unknown_when_tagged(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    sub = await admin.subscription(receiver.url(), tenant=" ")
    ids = [await admin.deliver(sub, tenant=" ")]
    app = await start_app()
    await admin.wait_status(ids, {"SUCCESS"})
    await recorded(app)
    found = samples((await get(app, "/actuator/prometheus"))[1])
    assert value(found, "cycles_webhook_delivery_attempts_total", tenant="UNKNOWN") == 1


async def test_health_info_and_http_semantics(start_app: StartApp, redis: Redis) -> None:
    app = await start_app()
    code, body = await get(app, "/actuator/health")
    assert code == 200 and body["status"] == "UP"
    assert body["components"]["redis"] == {"status": "UP", "details": {"ping": "PONG"}}
    assert body["components"]["dispatcher"]["status"] == "UP"
    assert (await get(app, "/actuator/health/liveness"))[1]["status"] == "UP"
    assert (await get(app, "/actuator/health/readiness"))[1]["status"] == "UP"
    code, info = await get(app, "/actuator/info")
    assert code == 200
    build = info["build"]
    assert build["artifact"] == "cycles-server-events" and build["group"] == "io.runcycles"
    assert build["version"] == __version__ and build["name"] and build["time"]
    assert (await get(app, "/nope"))[0] == 404
    assert (await get(app, "/actuator/health", method="POST"))[0] == 405
    assert (await get(app, "/actuator/prometheus", method="DELETE"))[0] == 405
    assert (await get(app, "/actuator/health", method="HEAD"))[0] == 200


async def test_queue_gauges_are_sampled(start_app: StartApp, admin: Admin, redis: Redis) -> None:
    await admin.security()
    sub = await admin.subscription("https://hooks.example.com/x")
    event = await admin.event()
    await admin.delivery(sub, event, created_ms=now_ms() - 120_000)
    await redis.zadd("dispatch:retry", {"del_a": 1, "del_b": 2})
    await redis.lpush("dispatch:failed", "{}")
    app = await start_app(DISPATCH_CONCURRENCY=1)
    app.pipeline.stop_claiming()  # leave pending alone so the gauges have something to show
    await app.sampler.step()
    found = samples((await get(app, "/actuator/prometheus"))[1])
    assert value(found, "cycles_webhook_dispatch_queue_depth", queue="failed") == 1
    assert value(found, "cycles_webhook_dispatch_queue_depth", queue="retry") >= 0
    assert found["cycles_webhook_dispatch_oldest_pending_age_seconds"][0][1] >= 0


async def wait_status_code(app: App, path: str, code: int, timeout: float) -> float:
    started = time.monotonic()
    while True:
        try:
            got = (await get(app, path))[0]
        except aiohttp.ClientError:
            got = -1
        if got == code:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            body = (await get(app, path))[1] if got != -1 else None
            raise AssertionError(f"{path} did not answer {code} within {timeout}s ({got}: {body})")
        await asyncio.sleep(0.2)


async def test_readiness_follows_a_real_redis_outage() -> None:
    from tests.integration.conftest import app_settings

    server = RedisServer()
    server.start()
    app = App(app_settings(server))
    task = asyncio.create_task(app.run())
    try:
        await wait_status_code(app, "/actuator/health/readiness", 200, 10)
        server.stop()
        await wait_status_code(app, "/actuator/health/readiness", 503, 10)
        assert (await get(app, "/actuator/health/liveness"))[0] == 200
        assert (await get(app, "/actuator/health"))[0] == 503
        server.start()
        await wait_status_code(app, "/actuator/health/readiness", 200, 10)
        assert (await get(app, "/actuator/health/liveness"))[0] == 200
    finally:
        app.request_stop("test-end")
        await asyncio.wait_for(task, 30)
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        server.cleanup()


async def test_healthcheck_command(start_app: StartApp) -> None:
    import sys

    app = await start_app()
    port = str(app.settings.management_port)
    cmd = [sys.executable, "-m", "cycles_events.cli", "healthcheck", "--port", port]
    proc = await asyncio.create_subprocess_exec(*cmd)
    assert await proc.wait() == 0
    app.request_stop("test")
    await asyncio.sleep(0.1)
    proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.DEVNULL)
    assert await proc.wait() == 1


async def test_a_persistent_fault_turns_readiness_down_and_back_up(
    start_app: StartApp,
    admin: Admin,
    receiver: Receiver,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cycles_events import supervise

    monkeypatch.setattr(supervise, "PERSISTENT_AFTER_S", 1.0)
    await admin.security()
    sub = await admin.subscription(receiver.url())
    app = await start_app()
    assert (await get(app, "/actuator/health/readiness"))[0] == 200
    await redis.set("dispatch:processing", "an operator's mistake")  # nothing can be claimed
    for _ in range(100):
        code, body = await get(app, "/actuator/health/readiness")
        if "failing" in body["components"]["dispatcher"]["details"]:
            break
        await asyncio.sleep(0.1)
    assert code == 503 and body["components"]["dispatcher"]["details"]["failing"] == ["claim"]
    assert (await get(app, "/actuator/health/liveness"))[0] == 200  # alive: nothing died
    await redis.delete("dispatch:processing")
    delivery_id = await admin.deliver(sub)
    await admin.wait_status([delivery_id], {"SUCCESS"})
    assert (await get(app, "/actuator/health/readiness"))[0] == 200
    assert metric(app, "cycles_webhook_dispatch_errors_total") >= 1


async def test_the_ready_gauge_is_set_without_any_probe(start_app: StartApp, redis: Redis) -> None:
    app = await start_app()

    async def ready() -> float:
        return metric(app, "cycles_webhook_dispatcher_ready")

    from tests.support import wait_until

    await wait_until(ready, 1.0, timeout=10)  # set by the sampler: nothing asked for readiness


async def test_an_idle_daemon_is_ready_before_its_first_blocking_wait_ends(
    start_app: StartApp, redis: Redis
) -> None:
    """Readiness follows the first answered claim, not the end of a 30 s wait on empty pending."""
    app = await start_app(**{"dispatch.pending.timeout-seconds": 30})
    await wait_status_code(app, "/actuator/health/readiness", 200, 10)
    assert app.pipeline.claimer.blocking  # still in that first wait
