"""SSRF: hostile URLs never reach a listener, and the address judged is the address connected to."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp.abc import AbstractResolver
from redis.asyncio import Redis

from cycles_events.sender import Sender
from cycles_events.urlguard import SecurityPolicy
from tests.dns_support import DnsResolver, DnsServer, RawServer, running_app
from tests.integration.conftest import StartApp, app_settings
from tests.support import OPEN_SECURITY, Admin, RedisServer, metric

GUARDED = SecurityPolicy.build(OPEN_SECURITY, allow_private_networks=False)
LIFTED = SecurityPolicy.build(OPEN_SECURITY, allow_private_networks=True)
REBIND = {"allow_http": True, "blocked_cidr_ranges": ["127.0.0.2/32"], "allowed_url_patterns": []}


def hostile_urls(port: int) -> list[str]:
    """Spellings of this machine's loopback interface, each one aimed at `port`."""
    p = port
    return [
        f"http://127.0.0.1:{p}/hook",
        f"http://127.1:{p}/hook",
        f"http://127.0.1:{p}/hook",
        f"http://2130706433:{p}/hook",
        f"http://017700000001:{p}/hook",
        f"http://0x7f000001:{p}/hook",
        f"http://0x7f.1:{p}/hook",
        f"http://0177.0.0.1:{p}/hook",
        f"http://127.0.0.1.:{p}/hook",
        f"http://0:{p}/hook",
        f"http://0.0.0.0:{p}/hook",
        f"http://[::]:{p}/hook",
        f"http://[::1]:{p}/hook",
        f"http://[::ffff:127.0.0.1]:{p}/hook",
        f"http://[::ffff:7f00:1]:{p}/hook",
        f"http://[0:0:0:0:0:ffff:127.0.0.1]:{p}/hook",
        f"http://[::127.0.0.1]:{p}/hook",
        f"http://[64:ff9b::7f00:1]:{p}/hook",
        f"http://[2002:7f00:1::]:{p}/hook",
        f"http://[fe80::1%25lo]:{p}/hook",
        f"http://localhost:{p}/hook",
        f"http://localhost.:{p}/hook",
        f"http://LOCALHOST:{p}/hook",
        f"http://foo.localhost:{p}/hook",
        f"http://localhost.localdomain:{p}/hook",
        f"http://ip6-localhost:{p}/hook",
        f"http://\u24dbocalhost:{p}/hook",
        f"http://user:pw@127.0.0.1:{p}/hook",
        f"http://example.com@127.0.0.1:{p}/hook",
        f"http://example.com\\@127.0.0.1:{p}/hook",
        f"http://127\u30020\u30020\u30021:{p}/hook",
        f"http://\u2460\u2461\u2466.0.0.1:{p}/hook",
        f"http://127.0.0.1\t:{p}/hook",
        f"  http://127.0.0.1:{p}/hook  ",
        f"http://127.0.0.1:{p}#@example.com/",
        f"http://127.0.0.1:{p}?@example.com/",
        f"https://127.0.0.1:{p}/hook",
    ]


@contextlib.asynccontextmanager
async def loopback_listeners() -> AsyncIterator[tuple[RawServer, RawServer | None]]:
    """A listener on 127.0.0.1 and, when IPv6 works, one on ::1 at the same port."""
    for _ in range(20):
        v4 = await RawServer().start()
        try:
            v6: RawServer | None = await RawServer(host="::1", port=v4.port).start()
        except OSError:
            v6 = None
            if not await _ipv6_unavailable():
                await v4.stop()
                continue
        try:
            yield v4, v6
        finally:
            await v4.stop()
            if v6 is not None:
                await v6.stop()
        return
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")


async def _ipv6_unavailable() -> bool:
    try:
        probe = await RawServer(host="::1").start()
    except OSError:
        return True
    await probe.stop()
    return False


def connections(*servers: RawServer | None) -> int:
    return sum(s.connections for s in servers if s is not None)


async def started_sender(
    policy: Callable[[], SecurityPolicy], resolver: AbstractResolver | None = None, **kw: Any
) -> Sender:
    sender = Sender(
        policy=policy,
        connect_timeout=kw.pop("connect_timeout", 2.0),
        total_timeout=kw.pop("total_timeout", 5.0),
        resolver=resolver,
        **kw,
    )
    await sender.start()
    return sender


async def test_hostile_urls_never_reach_a_listener_through_the_sender() -> None:
    dns = DnsServer()
    await dns.start()
    async with loopback_listeners() as (v4, v6):
        dns.set("loop.test", ["127.0.0.1"])
        dns.set("mixed.test", ["93.184.216.34", "127.0.0.1"])
        dns.set("mapped.test", ["::ffff:127.0.0.1"])
        dns.set("nat64.test", ["64:ff9b::7f00:1"])
        dns.set("six.test", ["::1"])
        urls = hostile_urls(v4.port) + [
            f"http://{name}:{v4.port}/hook"
            for name in (
                "loop.test",
                "loop.test.",
                "LOOP.test",
                "mixed.test",
                "mapped.test",
                "nat64.test",
                "six.test",
            )
        ]
        assert len(urls) >= 40
        sender = await started_sender(lambda: GUARDED, DnsResolver(dns.port))
        try:
            for url in urls:
                result = await sender.post(url, b"{}", {"Content-Type": "application/json"})
                assert result.blocked is not None, url
                assert result.blocked.startswith("URL blocked") and "pw" not in result.blocked
                assert result.status is None and result.error is None
            assert connections(v4, v6) == 0
            # the names were resolved and judged, not refused by their spelling
            assert dns.count("loop.test") == 3 and dns.count("mixed.test") == 1
        finally:
            await sender.close()
        # the control: with the baseline lifted the very same listener is reachable
        sender = await started_sender(lambda: LIFTED, DnsResolver(dns.port))
        try:
            for url in [v4.url(), f"http://loop.test:{v4.port}/hook"]:
                result = await sender.post(url, b"{}", {})
                assert (result.status, result.blocked) == (200, None)
        finally:
            await sender.close()
        assert v4.connections >= 1
    dns.stop()


async def test_hostile_urls_end_failed_ssrf_blocked_through_the_daemon(
    start_app: StartApp, admin: Admin, redis: Redis
) -> None:
    await admin.security()
    async with loopback_listeners() as (v4, v6):
        urls = hostile_urls(v4.port)
        deliveries = []
        subs = []
        for url in urls:
            sub = await admin.subscription(url)
            subs.append(sub)
            deliveries.append(await admin.deliver(sub))
        app = await start_app(WEBHOOK_URL_GUARD_ALLOW_PRIVATE_NETWORKS=False)
        docs = await admin.wait_status(deliveries, {"FAILED", "SUCCESS"})
        for url, doc in zip(urls, docs, strict=True):
            assert doc["status"] == "FAILED", url
            assert doc["error_message"].startswith("URL blocked"), (url, doc["error_message"])
            assert "pw" not in doc["error_message"]
            assert doc["attempts"] == 0 and "response_status" not in doc
            assert "next_retry_at" not in doc and "completed_at" in doc
        for sub in subs:
            sub_doc = await admin.sub_record(sub)
            assert sub_doc["consecutive_failures"] == 0 and sub_doc["status"] == "ACTIVE"
            assert "last_failure_at" not in sub_doc
        assert connections(v4, v6) == 0
        assert await redis.zcard("dispatch:retry") == 0
        assert metric(app, "cycles_webhook_delivery_failed_total", reason="ssrf_blocked") == len(
            urls
        )
        assert metric(app, "cycles_webhook_delivery_attempts_total") == 0
        exposition = app.metrics.exposition().decode()
        assert 'reason="ssrf_blocked"' in exposition


@contextlib.asynccontextmanager
async def rebinding_listeners() -> AsyncIterator[tuple[RawServer, RawServer]]:
    """Listener A on 127.0.0.1 (closes after each answer) and B on 127.0.0.2, same port."""
    for _ in range(20):
        a = await RawServer(close_each=True).start()
        try:
            b = await RawServer(host="127.0.0.2", port=a.port).start()
        except OSError:
            await a.stop()
            continue
        try:
            yield a, b
        finally:
            await a.stop()
            await b.stop()
        return
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


async def test_dns_rebinding_connects_only_to_the_judged_address() -> None:
    policy = SecurityPolicy.build(REBIND, allow_private_networks=True)
    dns = DnsServer()
    await dns.start()
    async with rebinding_listeners() as (a, b):
        dns.set("rebind.test", ["127.0.0.1"], ["127.0.0.2"], ["127.0.0.1"], ["127.0.0.2"])
        sender = await started_sender(lambda: policy, DnsResolver(dns.port))
        try:
            url = f"http://rebind.test:{a.port}/hook"
            results = [await sender.post(url, b"{}", {}) for _ in range(4)]
            assert [r.status for r in results] == [200, None, 200, None]
            assert [r.blocked is not None for r in results] == [False, True, False, True]
            assert "127.0.0.2" in (results[1].blocked or "")
            # one lookup per send: the answer judged is the answer connected to
            assert dns.count("rebind.test") == 4
            assert (a.connections, b.connections) == (2, 0)
            assert all(b"Host: rebind.test:" in head for head in a.requests)
            # an answer holding both addresses is refused as a whole
            dns.set("rebind.test", ["127.0.0.1", "127.0.0.2"])
            result = await sender.post(url, b"{}", {})
            assert result.blocked is not None and "127.0.0.2" in result.blocked
            assert (a.connections, b.connections) == (2, 0)
        finally:
            await sender.close()
    dns.stop()


async def test_dns_rebinding_through_the_daemon(
    redis_server: RedisServer, admin: Admin, redis: Redis
) -> None:
    await admin.security(REBIND)
    dns = DnsServer()
    await dns.start()
    async with rebinding_listeners() as (a, b):
        dns.set("rebind.test", *[["127.0.0.1"], ["127.0.0.2"]] * 3)
        sub = await admin.subscription(f"http://rebind.test:{a.port}/hook")
        async with running_app(app_settings(redis_server), DnsResolver(dns.port)) as app:
            deliveries = []
            for _ in range(6):  # one at a time, so that each send takes the next DNS answer
                deliveries.append(await admin.deliver(sub))
                await admin.wait_status(deliveries[-1:], {"SUCCESS", "FAILED"})
            docs = [await admin.record(d) for d in deliveries]
            assert [d["status"] for d in docs] == ["SUCCESS", "FAILED"] * 3
            for doc in docs[1::2]:
                assert "127.0.0.2" in doc["error_message"] and doc["attempts"] == 0
            assert dns.count("rebind.test") == 6
            assert (a.connections, b.connections) == (3, 0)
            sub_doc = await admin.sub_record(sub)
            assert sub_doc["consecutive_failures"] == 0 and sub_doc["status"] == "ACTIVE"
            assert metric(app, "cycles_webhook_delivery_failed_total", reason="ssrf_blocked") == 3
            assert await redis.zcard("dispatch:retry") == 0
    dns.stop()
