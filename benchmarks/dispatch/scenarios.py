"""One daemon process: bursts, paced pushes, a slow receiver, retries (each against its ceiling)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from benchmarks.dispatch import records
from benchmarks.dispatch.harness import (
    Daemon,
    ReceiverProc,
    RedisMeter,
    RedisWork,
    cpu_seconds,
)
from benchmarks.dispatch.raw import RawLoop
from cycles_events.keys import PENDING, PROCESSING
from tests.support import Admin, RedisServer

Pairs = list[tuple[str, str]]  # (delivery id, event id)


async def push(client: Redis, ids: list[str], meter: RedisMeter | None = None) -> None:
    """LPUSH ids to dispatch:pending, a thousand a command, pipelined."""
    pipe = client.pipeline(transaction=False)
    for at in range(0, len(ids), 1000):
        pipe.lpush(PENDING, *ids[at : at + 1000])
    if meter is not None:
        meter.own("lpush", len(pipe))
    await pipe.execute()


async def settled(client: Redis, meter: RedisMeter | None = None, timeout: float = 60) -> None:
    """Wait until nothing is claimed (every outcome recorded), then a moment more."""
    deadline = time.monotonic() + timeout
    while await client.llen(PROCESSING) and time.monotonic() < deadline:
        if meter is not None:
            meter.own("llen")
        await asyncio.sleep(0.01)
    if meter is not None:
        meter.own("llen")
    await asyncio.sleep(0.1)  # the subscription updates of the last group commit


@dataclass
class Ctx:
    """Everything a phase needs: the processes, the Redis client, the options."""

    args: argparse.Namespace
    server: RedisServer
    client: Redis
    receiver: ReceiverProc
    raw: RawLoop
    session: aiohttp.ClientSession
    workdir: Path
    chart: dict[str, Any] = field(default_factory=dict)

    @property
    def admin(self) -> Admin:
        return Admin(self.client)

    async def subscriptions(self, n: int, path: str, **fields: Any) -> list[str]:
        """n subscriptions to a receiver path, secrets encrypted as the admin stores them."""
        url = self.receiver.url(path)
        return [await self.admin.subscription(url, encrypt=True, **fields) for _ in range(n)]

    async def deliveries(self, sub_ids: list[str], n: int) -> Pairs:
        return await records.deliveries("127.0.0.1", self.server.port, sub_ids, n)

    async def push(self, ids: list[str], meter: RedisMeter | None = None) -> None:
        """The module's `push` on this run's Redis."""
        await push(self.client, ids, meter)

    async def settled(self, meter: RedisMeter | None = None, timeout: float = 60) -> None:
        """The module's `settled` on this run's Redis."""
        await settled(self.client, meter, timeout)

    def daemon(self, name: str, **settings: str) -> Daemon:
        env = {"DISPATCH_CONCURRENCY": str(self.args.concurrency), "LOG_LEVEL": "WARNING"}
        return Daemon(self.server.url, self.workdir, name, **{**env, **settings})


@dataclass
class Burst:
    rate: float
    cpu_us: float
    redis: RedisWork
    n: int


async def burst(ctx: Ctx, daemon: Daemon, pairs: Pairs) -> Burst:
    """Push a whole burst at once: push to last receipt; the daemon's CPU and Redis's work."""
    meter = RedisMeter(ctx.client)
    await meter.start()
    cpu0 = daemon.cpu()
    pushed = time.time()
    await ctx.push([d for d, _ in pairs], meter)
    events = [e for _, e in pairs]
    got = await ctx.receiver.wait_receipts(events, timeout=600)
    last = max(got[e][0] for e in events)
    await ctx.settled(meter)
    cpu = daemon.cpu() - cpu0
    work = await meter.stop()
    await ctx.receiver.reset()
    return Burst(len(pairs) / (last - pushed), cpu * 1e6 / len(pairs), work, len(pairs))


@dataclass
class Latency:
    rate: float
    achieved: float
    p50: float
    p99: float
    n: int
    cpu_us: float = 0.0  # the sender's CPU per delivery or request
    producer: float = 0.0  # the pushing driver's CPU, in cores (the daemon's side only)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of values, nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def paced_daemon(ctx: Ctx, daemon: Daemon, pairs: Pairs, rate: float) -> Latency:
    """One push due every 1/rate s (those due are pushed together, every ~1 ms): push to receipt."""
    pushed: dict[str, float] = {}
    cpu0, own0 = daemon.cpu(), cpu_seconds(os.getpid())
    started = time.perf_counter()
    made = 0
    while made < len(pairs):
        upto = min(len(pairs), int((time.perf_counter() - started) * rate) + 1)
        if upto > made:
            batch = pairs[made:upto]
            at = time.time()
            await ctx.client.lpush(PENDING, *[d for d, _ in batch])
            for _, e in batch:
                pushed[e] = at
            made = upto
        await asyncio.sleep(0.001)
    producer = (cpu_seconds(os.getpid()) - own0) / (time.perf_counter() - started)
    got = await ctx.receiver.wait_receipts(list(pushed), timeout=300)
    await ctx.settled()
    cpu = (daemon.cpu() - cpu0) * 1e6 / len(pairs)
    await ctx.receiver.reset()
    latency = [(got[e][0] - t) * 1000 for e, t in pushed.items()]
    span = max(got[e][0] for e in pushed) - min(pushed.values())
    n = len(pairs)
    return Latency(rate, n / span, pct(latency, 50), pct(latency, 99), n, cpu, producer)


async def paced_raw(ctx: Ctx, n: int, rate: float) -> Latency:
    """The raw loop at the same rate: a request due every 1/rate s, due time to receipt."""
    out, cpu = await ctx.raw.call(
        "paced", n=n, rate=rate, concurrency=ctx.args.concurrency, path="/raw"
    )
    due: dict[str, float] = out["due"]
    got = await ctx.receiver.wait_receipts(list(due), timeout=300)
    await ctx.receiver.reset()
    latency = [(got[e][0] - t) * 1000 for e, t in due.items()]
    span = max(got[e][0] for e in due) - min(due.values())
    return Latency(rate, n / span, pct(latency, 50), pct(latency, 99), n, cpu * 1e6 / n)


async def raw_burst(ctx: Ctx, n: int, path: str = "/raw", minimal: bool = False) -> Burst:
    """The raw loop's burst: requests per second from its start to the last receipt (as for
    the daemon: from the push to the last receipt), and its CPU per request."""
    out, cpu = await ctx.raw.call(
        "burst", n=n, concurrency=ctx.args.concurrency, path=path, minimal=minimal
    )
    await ctx.receiver.wait_count(n, timeout=60)
    last = max(max(times) for times in (await ctx.receiver.stats()).values())
    await ctx.receiver.reset()
    return Burst(n / (last - out["started"]), cpu * 1e6 / n, RedisWork(0.0, {}, 0.0), n)


async def slow_daemon(ctx: Ctx, pairs: Pairs) -> float:
    """A burst to a receiver that answers each request after 50 ms: deliveries per second."""
    pushed = time.time()
    await ctx.push([d for d, _ in pairs])
    events = [e for _, e in pairs]
    got = await ctx.receiver.wait_receipts(events, timeout=600)
    rate = len(pairs) / (max(got[e][0] for e in events) - pushed)
    await ctx.settled()
    await ctx.receiver.reset()
    return rate


async def retries(ctx: Ctx, pairs: Pairs) -> list[float]:
    """Each first attempt gets a 503; the retry is due 500 ms after it: ms late of each."""
    await ctx.push([d for d, _ in pairs])
    events = [e for _, e in pairs]
    got = await ctx.receiver.wait_receipts(events, timeout=120, attempts=2)
    await ctx.settled()
    await ctx.receiver.reset()
    return [(got[e][1] - got[e][0] - 0.5) * 1000 for e in events]
