"""Goal 5: a large backlog drains at a steady rate, the daemon's memory bounded."""

from __future__ import annotations

import asyncio
import itertools
import math
import time

from benchmarks.dispatch import records
from benchmarks.dispatch.report import Row, Section
from benchmarks.dispatch.scenarios import Ctx

RSS_GOAL_MB = 200
STEADY = 0.8  # the slowest tenth at least this fraction of the fastest


async def redis_cpu(ctx: Ctx) -> float:
    info = await ctx.client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def per_tenth(samples: list[tuple[int, float, float]], n: int) -> list[tuple[float, float]]:
    """Daemon and Redis CPU µs per delivery over each tenth, from the 0.5 s samples."""
    marks = []
    for k in range(11):
        boundary = n * k // 10
        marks.append(next(x for x in samples if x[0] >= boundary))
    out = []
    for a, b in itertools.pairwise(marks):
        if b[0] > a[0]:
            out.append(((b[1] - a[1]) * 1e6 / (b[0] - a[0]), (b[2] - a[2]) * 1e6 / (b[0] - a[0])))
    return out if len(out) == 10 else []


async def run(ctx: Ctx) -> Section:
    args = ctx.args
    n, conc = args.backlog, args.concurrency
    events = min(1000, n)
    s = Section(
        "goal5",
        "Goal 5: a backlog drains steadily in bounded memory",
        f"{n:,} PENDING deliveries ({events:,} events shared among them, 8 subscriptions) are "
        "written in the admin's format and pushed to dispatch:pending with pipelined writes "
        f"before a fresh daemon starts (DISPATCH_CONCURRENCY={conc}). The receiver notes when "
        "each tenth of the backlog has arrived: the drain rate per tenth (from the first "
        f"receipt), steady when the slowest tenth is at least {STEADY:.0%} of the fastest. "
        "Memory: the daemon's VmRSS sampled every 0.5 s and its VmHWM (peak) at the end, "
        "against 200 MB. On a shared machine the rate per tenth moves with the neighbours' "
        "load; the work per delivery per tenth (the daemon's and Redis's CPU, sampled with "
        "the arrivals every 0.5 s) and the drift from the first half to the second show "
        "whether the cost grows as the backlog shrinks.",
    ).begin()
    await ctx.client.flushdb()
    await ctx.admin.security()
    subs = await ctx.subscriptions(8, "/bulk")
    started = time.perf_counter()
    await records.backlog("127.0.0.1", ctx.server.port, subs, n, events)
    wrote = time.perf_counter() - started
    memory = await ctx.client.info("memory")
    s.note(
        f"Written in {wrote:.1f} s ({n / wrote:,.0f} deliveries/s); Redis used_memory with the "
        f"backlog: {int(memory['used_memory']) / 1e6:,.0f} MB."
    )
    await ctx.receiver.reset()
    daemon = ctx.daemon("backlog")
    try:
        await daemon.ready(ctx.session)
        cpu0 = daemon.cpu()
        peak_sample = 0
        samples: list[tuple[int, float, float]] = []  # arrived, daemon CPU s, Redis CPU s
        deadline = time.monotonic() + n / 200 + 300
        while True:
            got = await ctx.receiver.count()
            samples.append((got, daemon.cpu(), await redis_cpu(ctx)))
            peak_sample = max(peak_sample, daemon.memory_kib()[0])
            if got >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the backlog did not drain: {got:,} of {n:,} arrived")
            await asyncio.sleep(0.5)
        await ctx.settled(timeout=120)
        cpu = daemon.cpu() - cpu0
        rss, hwm = daemon.memory_kib()
        peak_sample = max(peak_sample, rss)
        marks = await ctx.receiver.marks(n)
    finally:
        daemon.stop()
    await ctx.receiver.reset()
    at = [marks["first"], *marks["at"]]
    rates = [(n / 10) / max(1e-9, at[k + 1] - at[k]) for k in range(10)]
    overall = n / (at[-1] - at[0])
    steady = min(rates) / max(rates)
    s.add(Row("drain rate per tenth", ", ".join(f"{r:,.0f}" for r in rates) + " /s"))
    burst = ctx.chart.get("burst", {}).get("daemon")
    s.add(
        Row(
            "drain rate, whole backlog",
            f"{overall:,.0f}/s in {at[-1] - at[0]:.0f} s",
            f"{burst:,.0f}/s (goal 1's burst)" if burst else "",
            f"{overall / burst:.2f}x the burst rate" if burst else "",
        )
    )
    s.add(
        Row(
            "steadiness: slowest / fastest tenth",
            f"{min(rates):,.0f} / {max(rates):,.0f} per s",
            "the fastest tenth",
            f"**{math.floor(steady * 100) / 100:.2f}**",
            f"≥ {STEADY}",
            steady >= STEADY,
            headline=True,
        )
    )
    peak_mb = max(hwm, peak_sample) * 1024 / 1e6
    s.add(
        Row(
            "daemon RSS, max",
            f"{peak_mb:.0f} MB (VmHWM {hwm * 1024 / 1e6:.0f} MB, "
            f"largest sample {peak_sample * 1024 / 1e6:.0f} MB)",
            f"{RSS_GOAL_MB} MB",
            f"**{peak_mb:.0f} MB**",
            f"< {RSS_GOAL_MB} MB",
            peak_mb < RSS_GOAL_MB,
            headline=True,
        )
    )
    s.add(Row("daemon CPU per delivery, whole backlog", f"{cpu * 1e6 / n:.0f} µs"))
    half = sum(rates[5:]) / sum(rates[:5])
    s.add(Row("drift: mean rate of the second half / the first", f"{half:.2f}"))
    work = per_tenth(samples, n)
    if work:
        for name, values in zip(("daemon CPU", "Redis CPU"), zip(*work, strict=True), strict=True):
            s.add(
                Row(
                    f"{name} per delivery per tenth",
                    ", ".join(f"{v:.1f}" for v in values) + " µs",
                    "",
                    f"max / min {max(values) / min(values):.2f}",
                )
            )
    await ctx.client.flushdb()
    return s
