"""The daemon as a subprocess: crashes, signals, Redis outages, bad settings."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
from aiohttp import web
from redis.asyncio import Redis

from tests.e2e.conftest import Daemon, daemon_exe, wait_for
from tests.support import Admin, Receiver, RedisServer, hang

pytestmark = pytest.mark.e2e


async def test_sigkill_with_deliveries_in_flight_loses_nothing(
    daemon_factory: Callable[..., Daemon], admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    receiver.behaviours["/slow"] = hang(1.0)
    await admin.security()
    subs = [await admin.subscription(receiver.url("/slow")) for _ in range(4)]
    ids = [await admin.deliver(subs[i % 4]) for i in range(60)]
    daemon = daemon_factory(DISPATCH_PROCESSING_RECOVERY_IDLE_MS=1500)
    daemon.start()
    await receiver.wait_count(8, timeout=20)
    daemon.signal(signal.SIGKILL)
    daemon.wait(10)
    assert await redis.llen("dispatch:processing") > 0  # claims were left by the dead process
    daemon.start()
    docs = await admin.wait_status(ids, {"SUCCESS"}, timeout=60)
    assert len(docs) == 60
    delivered = {r.headers["X-Cycles-Event-Id"] for r in receiver.requests}
    assert delivered == {d["event_id"] for d in docs}
    assert await redis.llen("dispatch:processing") == 0
    assert await redis.llen("dispatch:pending") == 0
    assert daemon.actions("claims_recovered")


async def test_sigterm_drains_in_flight_and_exits_zero(
    daemon_factory: Callable[..., Daemon], admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    receiver.behaviours["/slow"] = hang(1.5)
    await admin.security()
    sub = await admin.subscription(receiver.url("/slow"))
    ids = [await admin.deliver(sub) for _ in range(20)]
    daemon = daemon_factory(DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION=4)
    daemon.start()
    await daemon.wait_ready()
    await receiver.wait_count(4, timeout=20)
    daemon.signal(signal.SIGTERM)
    await wait_for(lambda: _down(daemon), 5, "readiness did not turn DOWN on SIGTERM")
    code = await asyncio.to_thread(daemon.wait, 30)
    assert code == 0
    docs = [await admin.record(i) for i in ids]
    sent = {r.headers["X-Cycles-Event-Id"] for r in receiver.requests}
    for doc in docs:
        # whatever was sent was recorded; whatever was not is back on pending, unclaimed
        assert (doc["status"] == "SUCCESS") == (doc["event_id"] in sent)
    assert await redis.llen("dispatch:processing") == 0
    pending = {p.decode() for p in await redis.lrange("dispatch:pending", 0, -1)}
    assert pending == {d["delivery_id"] for d in docs if d["status"] == "PENDING"}
    assert daemon.actions("stopped")[0]["exit_code"] == 0


async def test_sigterm_in_the_middle_of_a_burst_leaves_nothing_claimed(
    daemon_factory: Callable[..., Daemon], admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    subs = [await admin.subscription(receiver.url()) for _ in range(8)]
    ids = [await admin.deliver(subs[i % 8]) for i in range(1500)]
    daemon = daemon_factory()
    daemon.start()
    await receiver.wait_count(200, timeout=30)
    daemon.signal(signal.SIGTERM)  # with claims loading, waiting, sending and recording
    assert await asyncio.to_thread(daemon.wait, 30) == 0
    docs = [await admin.record(i) for i in ids]
    sent = {r.headers["X-Cycles-Event-Id"] for r in receiver.requests}
    assert len(sent) < len(ids)
    for doc in docs:
        assert (doc["status"] == "SUCCESS") == (doc["event_id"] in sent)
    assert await redis.llen("dispatch:processing") == 0
    pending = {p.decode() for p in await redis.lrange("dispatch:pending", 0, -1)}
    assert pending == {d["delivery_id"] for d in docs if d["status"] == "PENDING"}


def _down(daemon: Daemon) -> bool:
    try:
        return daemon.health()[0] == 503
    except OSError:
        return True


async def test_grace_expiry_leaves_claims_for_recovery_and_second_signal_is_immediate(
    daemon_factory: Callable[..., Daemon], admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    receiver.behaviours["/hang"] = hang(30)
    await admin.security()
    sub = await admin.subscription(receiver.url("/hang"))
    ids = [await admin.deliver(sub) for _ in range(3)]
    daemon = daemon_factory(SHUTDOWN_GRACE_SECONDS=1)
    daemon.start()
    await receiver.wait_count(3, timeout=20)
    daemon.signal(signal.SIGTERM)
    assert await asyncio.to_thread(daemon.wait, 20) == 0
    assert {i.decode() for i in await redis.lrange("dispatch:processing", 0, -1)} == set(ids)
    assert daemon.actions("drain_grace_expired")

    other = daemon_factory(
        SHUTDOWN_GRACE_SECONDS=60, DISPATCH_PROCESSING_RECOVERY_IDLE_MS=3_600_000
    )
    other.start()
    await other.wait_ready()
    await admin.deliver(sub)
    await receiver.wait_count(4, timeout=20)
    other.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    other.signal(signal.SIGTERM)
    assert await asyncio.to_thread(other.wait, 5) != 0
    assert other.actions("shutdown_forced")


async def test_redis_outage_under_load(
    daemon_factory: Callable[..., Daemon],
    persistent_redis: RedisServer,
    receiver: Receiver,
) -> None:
    client = Redis.from_url(persistent_redis.url)
    admin = Admin(client)
    await admin.security()

    async def slowish(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.05)
        return web.Response(status=200)

    receiver.behaviours["/hook"] = slowish
    subs = [await admin.subscription(receiver.url()) for _ in range(3)]
    ids = [await admin.deliver(subs[i % 3]) for i in range(300)]
    daemon = daemon_factory(
        persistent_redis, DISPATCH_CONCURRENCY=8, DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION=3
    )
    daemon.start()
    await receiver.wait_count(30, timeout=20)
    await client.aclose()
    persistent_redis.stop()
    await asyncio.sleep(3)
    assert daemon.proc is not None and daemon.proc.poll() is None  # still running
    assert daemon.health("liveness")[0] == 200
    persistent_redis.start()
    client = Redis.from_url(persistent_redis.url)
    admin = Admin(client)
    docs = await admin.wait_status(ids, {"SUCCESS"}, timeout=90)
    assert {r.headers["X-Cycles-Event-Id"] for r in receiver.requests} == {
        d["event_id"] for d in docs
    }
    changes = [
        (line["action"], line.get("error"))
        for line in daemon.logs()
        if line["action"] in ("redis_unavailable", "redis_reconnected")
    ]
    assert changes == [("redis_unavailable", "connection refused"), ("redis_reconnected", None)], [
        (line["ts"], line["action"], line.get("error"), line.get("detail"))
        for line in daemon.logs()
        if "redis" in line["action"] or "error" in line["action"]
    ]
    await client.aclose()


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"MANAGEMENT_PORT": "99999"}, "invalid setting MANAGEMENT_PORT"),
        (
            {"WEBHOOK_SECRET_ENCRYPTION_KEY": "dG9vLXNob3J0LWNhbmFyeQ=="},
            "WEBHOOK_SECRET_ENCRYPTION_KEY",
        ),
        ({"dispatch.http.timeout-seconds": "-5"}, "dispatch.http.timeout-seconds"),
    ],
)
def test_invalid_setting_stops_startup_with_one_line(env: dict[str, str], fragment: str) -> None:
    proc = subprocess.run(
        daemon_exe(), env={**os.environ, **env}, capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 2
    err = proc.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and fragment in err
    assert "dG9vLXNob3J0LWNhbmFyeQ" not in err + proc.stdout.decode()


def test_help_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cycles_events.cli", "--help"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert b"run" in out.stdout
