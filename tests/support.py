"""Test support: a real redis-server, admin-format record writers and a real receiver."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from redis.asyncio import Redis

from cycles_events.app import App
from cycles_events.crypto import encrypt_secret
from cycles_events.models import dumps, format_instant, parse_instant_ms

DELIVERY_TTL_S = 14 * 86400
EVENT_TTL_S = 90 * 86400
OPEN_SECURITY = {
    "allow_http": True,
    "blocked_cidr_ranges": ["192.0.2.0/24"],
    "allowed_url_patterns": [],
}
KEY_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
KEY = bytes(range(32))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on a free port in a temporary directory."""

    def __init__(
        self,
        *,
        persistent: bool = False,
        password: str | None = None,
        extra_args: list[str] | None = None,
        wrapper: list[str] | None = None,
    ) -> None:
        self.persistent = persistent
        self.password = password
        self.extra_args = extra_args or []
        self.wrapper = wrapper or []  # a command the server runs under (the benchmark's valgrind)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="cycles-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.proc = subprocess.Popen(
            [
                *self.wrapper,
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--save",
                "",
                "--protected-mode",
                "no",
                *(
                    ["--appendonly", "yes", "--appendfsync", "always"]
                    if self.persistent
                    else ["--appendonly", "no"]
                ),
                *(["--requirepass", self.password] if self.password else []),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + (60 if self.wrapper else 10)
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    auth = f"AUTH {self.password}\r\n".encode() if self.password else b""
                    s.sendall(auth + b"PING\r\n")
                    if b"PONG" in s.recv(64):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- admin-format writers (contract section 1 and examples/redis-writes.txt) ------------------

PRODUCER_DELIVERY = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('LPUSH', KEYS[3], ARGV[4])
return 1
"""


def stop_process(proc: subprocess.Popen[Any], timeout: float, sig: int = signal.SIGTERM) -> None:
    """Stop a child with `sig`, killed if it has not exited within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def now_ms() -> int:
    return int(time.time() * 1000)


def hex16() -> str:
    return os.urandom(8).hex()


def admin_event(event_id: str, tenant: str, created_ms: int) -> dict[str, Any]:
    """An event document as the admin server writes it."""
    return {
        "event_id": event_id,
        "event_type": "budget.exhausted",
        "category": "budget",
        "timestamp": format_instant(created_ms),
        "tenant_id": tenant,
        "scope": f"tenant:{tenant}",
        "actor": {"type": "api_key", "key_id": "key_1"},
        "source": "cycles-server",
        "data": {  # revision 2's budget data: a ledger id (else the shape counts as invalid)
            "ledger_id": "led_1",
            "scope": f"tenant:{tenant}",
            "unit": "USD_MICROCENTS",
            "allocated": 500000000,
            "spent": 500000000,
            "remaining": 0,
        },
        "correlation_id": "req_1",
        "request_id": "req_1",
        "trace_id": os.urandom(16).hex(),
    }


@dataclass
class Admin:
    """Writes records exactly as the Cycles admin server does."""

    redis: Redis

    async def security(self, config: dict[str, Any] | None = None) -> None:
        await self.redis.set("config:webhook-security", dumps(config or OPEN_SECURITY))

    async def subscription(
        self,
        url: str,
        *,
        tenant: str = "acme",
        secret: str | None = "whsec_test_secret",
        encrypt: bool = False,
        **fields: Any,
    ) -> str:
        sub_id = fields.pop("subscription_id", None) or f"whsub_{hex16()}"
        doc: dict[str, Any] = {
            "subscription_id": sub_id,
            "tenant_id": tenant,
            "name": "test",
            "url": url,
            "event_types": ["budget.exhausted"],
            "status": "ACTIVE",
            "retry_policy": {
                "max_retries": 5,
                "initial_delay_ms": 1000,
                "backoff_multiplier": 2.0,
                "max_delay_ms": 60000,
            },
            "disable_after_failures": 10,
            "consecutive_failures": 0,
            "created_at": "2026-11-01T09:00:00Z",
        }
        doc.update(fields)
        await self.redis.set(f"webhook:{sub_id}", dumps(doc))
        if secret is not None:
            stored = encrypt_secret(secret, KEY) if encrypt else secret
            await self.redis.set(f"webhook:secret:{sub_id}", stored)
        await self.redis.sadd(f"webhooks:{tenant}", sub_id)
        await self.redis.sadd("webhooks:_all", sub_id)
        return sub_id

    async def event(self, *, tenant: str = "acme", **fields: Any) -> dict[str, Any]:
        event_id = fields.pop("event_id", None) or f"evt_{hex16()}"
        doc = admin_event(event_id, tenant, now_ms())
        doc.update(fields)
        score = parse_instant_ms(doc.get("timestamp")) or now_ms()
        await self.redis.set(f"event:{event_id}", dumps(doc), ex=EVENT_TTL_S)
        await self.redis.zadd(f"events:{tenant}", {event_id: score})
        await self.redis.zadd("events:_all", {event_id: score})
        if doc.get("correlation_id"):
            await self.redis.sadd(f"events:correlation:{doc['correlation_id']}", event_id)
            await self.redis.expire(f"events:correlation:{doc['correlation_id']}", EVENT_TTL_S)
        return doc

    async def delivery(self, sub_id: str, event: dict[str, Any], **fields: Any) -> str:
        delivery_id = fields.pop("delivery_id", None) or f"del_{hex16()}"
        created = fields.pop("created_ms", None) or now_ms()
        doc: dict[str, Any] = {
            "delivery_id": delivery_id,
            "subscription_id": sub_id,
            "event_id": event["event_id"],
            "event_type": event.get("event_type", "budget.exhausted"),
            "status": "PENDING",
            "attempted_at": format_instant(created),
            "attempts": 0,
        }
        doc.update(fields)
        await self.redis.eval(  # type: ignore[misc]
            PRODUCER_DELIVERY,
            3,
            f"delivery:{delivery_id}",
            f"deliveries:{sub_id}",
            "dispatch:pending",
            dumps(doc),
            DELIVERY_TTL_S,
            created,
            delivery_id,
        )
        return delivery_id

    async def deliver(self, sub_id: str, **event_fields: Any) -> str:
        """An event and its delivery to one subscription."""
        event = await self.event(**event_fields)
        return await self.delivery(sub_id, event)

    async def record(self, delivery_id: str) -> dict[str, Any]:
        raw = await self.redis.get(f"delivery:{delivery_id}")
        assert raw is not None, f"delivery {delivery_id} is missing"
        doc: dict[str, Any] = json.loads(raw)
        return doc

    async def sub_record(self, sub_id: str) -> dict[str, Any]:
        raw = await self.redis.get(f"webhook:{sub_id}")
        assert raw is not None
        doc: dict[str, Any] = json.loads(raw)
        return doc

    async def wait_status(
        self, delivery_ids: list[str], statuses: set[str], timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """Wait until every delivery has one of `statuses`."""
        deadline = time.monotonic() + timeout
        while True:
            docs = [await self.record(d) for d in delivery_ids]
            if all(doc["status"] in statuses for doc in docs):
                return docs
            if time.monotonic() > deadline:
                stuck = {d["delivery_id"]: d["status"] for d in docs if d["status"] not in statuses}
                raise AssertionError(f"deliveries not in {statuses}: {list(stuck.items())[:5]}")
            await asyncio.sleep(0.05)


# --- a real receiver ---------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: CIMultiDict[str]
    body: bytes
    at: float


Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Receiver:
    """An aiohttp server on 127.0.0.1 that records what it gets."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    runner: web.AppRunner | None = None
    connections: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Received(request.path, CIMultiDict(request.headers), body, time.monotonic())
        )
        behaviour = self.behaviours.get(request.path)
        if behaviour is not None:
            return await behaviour(request)
        return web.Response(status=200, text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def for_path(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def wait_count(self, n: int, path: str | None = None, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.for_path(path) if path else self.requests) < n:
            if time.monotonic() > deadline:
                got = len(self.for_path(path) if path else self.requests)
                raise AssertionError(f"receiver got {got} requests, expected {n}")
            await asyncio.sleep(0.02)


def status(code: int, headers: dict[str, str] | None = None) -> Behaviour:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers=headers)

    return respond


def fail_first(code: int = 503) -> Behaviour:
    """The first request of each event gets `code`, the next ones a 200."""
    seen: set[str] = set()

    async def respond(request: web.Request) -> web.StreamResponse:
        event_id = request.headers["X-Cycles-Event-Id"]
        if event_id in seen:
            return web.Response(status=200)
        seen.add(event_id)
        return web.Response(status=code)

    return respond


def hang(seconds: float) -> Behaviour:
    async def respond(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=200)

    return respond


def metric(app: App, name: str, **labels: str) -> float:
    """The sum of a metric's samples that carry `labels`."""
    total = 0.0
    for family in app.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def recorded(app: App, timeout: float = 10.0) -> None:
    """Wait until every outcome is written and counted (metrics follow the write's reply)."""

    async def idle() -> bool:
        return app.pipeline.counts.recording == 0

    await wait_until(idle, True, timeout=timeout)


async def wait_until(
    probe: Callable[[], Awaitable[Any]], expected: Any = True, timeout: float = 20.0
) -> Any:
    """Poll `probe` until it returns `expected`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value == expected:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout}s, expected {expected!r}")
        await asyncio.sleep(0.05)
