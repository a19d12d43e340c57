"""Secrets stay secret: canaries sent down every failure path never show up in any output."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from redis.asyncio import Redis

from cycles_events import logs
from cycles_events.crypto import encrypt_secret
from tests.dns_support import DnsResolver, DnsServer, running_app
from tests.integration.conftest import app_settings
from tests.support import (
    OPEN_SECURITY,
    Admin,
    Receiver,
    RedisServer,
    free_port,
    hang,
    status,
    wait_until,
)

TOKEN = os.urandom(6).hex()
SECRET = f"whsec_CANARYSECRET{TOKEN}"
HEADER_VALUE = f"CANARYHEADER{TOKEN}"
URL_PASSWORD = f"CANARYPASSWORD{TOKEN}"
REDIS_PASSWORD = f"CANARYREDIS{TOKEN}"
KEY = os.urandom(32)
KEY_B64 = base64.b64encode(KEY).decode()
OTHER_KEY = os.urandom(32)
FAST_FAIL = {
    "max_retries": 0,
    "initial_delay_ms": 100,
    "backoff_multiplier": 1.0,
    "max_delay_ms": 1000,
}


@pytest.fixture
def password_redis() -> Iterator[RedisServer]:
    server = RedisServer(password=REDIS_PASSWORD)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
async def pw_admin(password_redis: RedisServer) -> AsyncIterator[Admin]:
    client = Redis(host="127.0.0.1", port=password_redis.port, password=REDIS_PASSWORD)
    yield Admin(client)
    await client.aclose()


async def dump_redis(redis: Redis, skip: set[bytes]) -> bytes:
    """Every key and value in Redis, except `skip`, as one blob of bytes."""
    out = io.BytesIO()
    async for key in redis.scan_iter(count=500):
        if key in skip:
            continue
        kind = (await redis.type(key)).decode()
        out.write(key + b" " + kind.encode() + b"\n")
        if kind == "string":
            out.write(await redis.get(key) or b"")
        elif kind == "list":
            out.write(b"\n".join(await redis.lrange(key, 0, -1)))
        elif kind == "set":
            out.write(b"\n".join(await redis.smembers(key)))
        elif kind == "zset":
            out.write(b"\n".join(m for m, _ in await redis.zrange(key, 0, -1, withscores=True)))
        elif kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                out.write(field + b"=" + value + b"\n")
        out.write(b"\n")
    return out.getvalue()


@pytest.fixture
def json_logs(caplog: pytest.LogCaptureFixture) -> Iterator[io.StringIO]:
    """The service's JSON log lines, and its records in caplog, for this test only."""
    stream = io.StringIO()
    logger = logging.getLogger(logs.LOGGER_NAME)
    handlers, level = list(logger.handlers), logger.level
    logs.configure("DEBUG", stream=stream)
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG, logger=logs.LOGGER_NAME)
    yield stream
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    server = DnsServer()
    await server.start()
    yield server
    server.stop()


async def test_no_secret_reaches_logs_records_metrics_or_the_quarantine(
    dns: DnsServer,
    pw_admin: Admin,
    password_redis: RedisServer,
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    json_logs: io.StringIO,
) -> None:
    admin = pw_admin
    receiver.behaviours["/bad"] = status(400)
    receiver.behaviours["/boom"] = status(503)
    receiver.behaviours["/slow"] = hang(3)
    creds = f"canary:{URL_PASSWORD}@"
    base = f"http://{creds}127.0.0.1:{receiver.port}"
    headers = {"X-Api-Key": HEADER_VALUE, "Authorization": f"Bearer {HEADER_VALUE}"}
    bad_cipher = "enc:" + base64.b64encode(os.urandom(12) + SECRET.encode() + bytes(16)).decode()
    wrong_key = encrypt_secret(SECRET, OTHER_KEY)

    await admin.security({**OPEN_SECURITY, "blocked_cidr_ranges": ["127.0.0.2/32"]})
    dns.set("rebound.test", ["127.0.0.2"])
    subs: dict[str, str] = {}

    async def sub(name: str, url: str, stored: str | None = None, **fields: object) -> str:
        fields.setdefault("retry_policy", FAST_FAIL)
        sub_id = await admin.subscription(url, secret=None, headers=headers, **fields)
        await admin.redis.set(f"webhook:secret:{sub_id}", stored or encrypt_secret(SECRET, KEY))
        subs[name] = sub_id
        return sub_id

    await sub("ok", f"{base}/ok")
    await sub("plain", f"{base}/ok", stored=SECRET)
    await sub("bad", f"{base}/bad")
    await sub(
        "boom",
        f"{base}/boom",
        disable_after_failures=1,
        consecutive_failures=1,  # the next terminal failure exceeds the threshold
        retry_policy={**FAST_FAIL, "max_retries": 1},
    )
    await sub("slow", f"{base}/slow")
    await sub("refused", f"http://{creds}127.0.0.1:{free_port()}/hook")
    await sub("ssrf", f"http://{creds}127.0.0.2/hook?token={HEADER_VALUE}")
    await sub("resolved", f"http://{creds}rebound.test:{receiver.port}/hook?token={HEADER_VALUE}")
    await sub("cipher", f"{base}/ok", stored=bad_cipher)
    await sub("wrongkey", f"{base}/ok", stored=wrong_key)
    await sub("paused", f"{base}/ok", status="PAUSED")
    await sub("corrupt", f"{base}/ok")
    await admin.redis.set(f"webhook:{subs['corrupt']}", b'{"url": "' + HEADER_VALUE.encode())

    deliveries = {name: await admin.deliver(sub_id) for name, sub_id in subs.items()}
    old = await admin.event()
    deliveries["stale"] = await admin.delivery(
        subs["ok"], old, created_ms=int(time.time() * 1000) - 2 * 86_400_000
    )
    bad_event = await admin.event()
    await admin.redis.set(f"event:{bad_event['event_id']}", b"\xff{not json")
    deliveries["bad_event"] = await admin.delivery(subs["ok"], bad_event)
    await admin.redis.set("delivery:del_0000000000c0ffee", b'{"subscription_id": ' + b"\x00")
    await admin.redis.lpush("dispatch:pending", "del_0000000000c0ffee")

    stream = json_logs
    settings = app_settings(
        password_redis,
        REDIS_URL="",
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=password_redis.port,
        REDIS_PASSWORD=REDIS_PASSWORD,
        WEBHOOK_SECRET_ENCRYPTION_KEY=KEY_B64,
        **{"dispatch.http.timeout-seconds": 1},
    )
    # revision 2: a secret that cannot be decrypted keeps its delivery for later, unsent
    held = {name: deliveries.pop(name) for name in ("cipher", "wrongkey")}
    async with running_app(settings, DnsResolver(dns.port)) as app:
        docs = dict(
            zip(
                deliveries,
                await admin.wait_status(list(deliveries.values()), {"SUCCESS", "FAILED"}),
                strict=True,
            )
        )

        async def on_retry_zset() -> bool:
            return all([await admin.redis.zscore("dispatch:retry", d) for d in held.values()])

        await wait_until(on_retry_zset)
        for delivery_id in held.values():
            assert (await admin.record(delivery_id))["status"] == "PENDING"
        # every path really was taken
        assert docs["ok"]["status"] == docs["plain"]["status"] == "SUCCESS"
        assert docs["bad"]["error_message"] == "HTTP 400"
        assert docs["boom"]["error_message"] == "HTTP 503" and docs["boom"]["attempts"] == 2
        assert (await admin.sub_record(subs["boom"]))["status"] == "DISABLED"
        assert docs["slow"]["error_message"].startswith("Timeout")
        assert docs["refused"]["error_message"].startswith("Connection failed")
        assert docs["ssrf"]["error_message"].startswith("URL blocked")
        assert docs["resolved"]["error_message"].startswith("URL blocked: rebound.test resolves")
        assert docs["paused"]["error_message"] == "Subscription not active: PAUSED"
        assert docs["corrupt"]["status"] == "FAILED"
        assert docs["stale"]["error_message"].startswith("Delivery expired")
        assert docs["bad_event"]["status"] == "FAILED"
        assert await admin.redis.llen("dispatch:failed") == 1
        signatures = {r.headers["X-Cycles-Signature"] for r in receiver.requests}
        assert len(signatures) >= 4
        assert all(r.headers.get("X-Api-Key") == HEADER_VALUE for r in receiver.requests)

        # the management port and the metrics
        port = app.settings.management_port
        scraped = []
        async with aiohttp.ClientSession() as session:
            for path in ("/actuator/prometheus", "/actuator/health", "/actuator/info"):
                async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                    scraped.append(await resp.text())
        scraped.append(app.metrics.exposition().decode())

        await wait_until(lambda: admin.redis.exists("events:__system__"), 1)  # the outbox saved it
        skip = {f"webhook:secret:{s}".encode() for s in subs.values()}
        skip |= {f"webhook:{s}".encode() for s in subs.values()}
        stored = await dump_redis(admin.redis, skip)
        assert b"dispatch:failed" in stored and b"system.webhook_delivery_failed" in stored

        # an outage of the password-protected Redis is logged without the password
        password_redis.proc.terminate()
        password_redis.proc.wait(timeout=10)
        for _ in range(250):
            if "redis_unavailable" in stream.getvalue():
                break
            await asyncio.sleep(0.02)
        assert "redis_unavailable" in stream.getvalue()

    captured = capsys.readouterr()
    logged = stream.getvalue()
    assert all(d in logged for d in deliveries.values())  # the logs were captured
    records = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    outputs = {
        "json logs": logged,
        "log records": records,
        "stdout/stderr": captured.out + captured.err,
        "redis": stored.decode("utf-8", "replace"),
        "metrics and actuator": "\n".join(scraped),
    }
    canaries = {
        "signing secret": SECRET,
        "secret canary": "CANARYSECRET",
        "custom header": HEADER_VALUE,
        "url password": URL_PASSWORD,
        "redis password": REDIS_PASSWORD,
        "encryption key": KEY_B64,
        "encryption key hex": KEY.hex(),
        "bad ciphertext": bad_cipher[4:],
        "wrong-key ciphertext": wrong_key[4:],
        **{f"signature {i}": s.removeprefix("sha256=") for i, s in enumerate(signatures)},
    }
    leaks = [
        f"{what} in {where}"
        for where, text in outputs.items()
        for what, canary in canaries.items()
        if canary in text
    ]
    assert leaks == []
