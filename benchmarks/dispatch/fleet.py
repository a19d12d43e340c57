"""Goal 2 across a fleet: Redis work per delivery at 64 to 4,096 deliveries in flight.

Four daemon processes share one redis-server; the receiver holds every request for a while
before answering, so the fleet keeps `level` deliveries in flight. The goal's sweep holds the
fleet's delivery rate constant (the hold is level / rate: 31 ms to 2 s at 2,048/s), so that
only the number in flight changes from level to level, not the size of the daemons' batches;
a second sweep with a fixed hold (1 s: the rate grows with the level) is printed beside it.
Each level starts from an empty Redis with fresh daemons: DISPATCH_CONCURRENCY = level / 4
each, 64 subscriptions, DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION = max(8, level / 16) (so the
per-subscription bound never holds a daemon below its concurrency), and enough deliveries
pushed up front that pending never runs dry during the window.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

from benchmarks.dispatch.harness import RedisMeter
from benchmarks.dispatch.report import Row, Section
from benchmarks.dispatch.scenarios import Ctx
from cycles_events.keys import PENDING

DAEMONS = 4
SUBSCRIPTIONS = 64
FLAT = 0.2


@dataclass
class Level:
    level: int
    hold_s: float
    us: float
    commands: float


async def run(ctx: Ctx) -> Section:
    args = ctx.args
    levels = [int(x) for x in args.fleet_levels.split(",")]
    rate = args.fleet_rate
    s = Section(
        "fleet",
        "Goal 2 across a fleet: Redis work per delivery against deliveries in flight",
        f"{DAEMONS} daemon processes on one redis-server; the receiver answers each request "
        "after a hold, so the fleet keeps a level of deliveries in flight. The goal's sweep "
        f"keeps the fleet's rate at {rate:,.0f} deliveries/s (hold = level / rate), so only "
        "the number in flight changes, not the daemons' batch sizes; a second sweep with a "
        f"fixed {args.fleet_hold_ms / 1000:g} s hold (the rate grows with the level) follows "
        "for comparison. Each level starts from an empty Redis with fresh daemons "
        f"(DISPATCH_CONCURRENCY = level / {DAEMONS} each, {SUBSCRIPTIONS} subscriptions, "
        "DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION = max(8, level / 16), each delivery its own "
        "event, a backlog large enough for the window). Once the receiver holds about the "
        "level and two holds more have passed: CONFIG RESETSTAT, then "
        f"{args.fleet_seconds:g} s of Redis CPU (INFO cpu) and commands (INFO commandstats), "
        "divided by the deliveries answered in the window. Idle = the same fleet's Redis work "
        "per second before anything is pushed, for scale. Flat: max / min over the levels "
        f"≤ {1 + FLAT}.",
    ).begin()
    steady = [await one_level(ctx, s, n, n / rate, "") for n in levels]
    us = [m.us for m in steady]
    cmds = [m.commands for m in steady]
    for name, values, fmt in (("Redis CPU", us, "{:.1f}"), ("commands", cmds, "{:.2f}")):
        ratio = max(values) / min(values)
        s.add(
            Row(
                f"{name} per delivery, {levels[0]:,} to {levels[-1]:,} in flight at {rate:,.0f}/s",
                " → ".join(fmt.format(v) for v in values),
                "the lowest level: " + fmt.format(min(values)),
                f"max / min **{ratio:.2f}**",
                f"≤ {1 + FLAT} (flat within {FLAT:.0%})",
                ratio <= 1 + FLAT,
                headline=True,
            )
        )
    worst = max(us)
    s.add(
        Row(
            "Redis CPU per delivery, worst level",
            f"{worst:.1f} µs ({max(cmds):.2f} commands)",
            "one Redis core: 1,000,000 µs/s",
            f"one Redis ≈ {1e6 / worst:,.0f} deliveries/s",
            "≤ 20 µs, ≤ 6 commands",
            worst <= 20 and max(cmds) <= 6,
            headline=True,
        )
    )
    if args.fleet_hold_ms > 0:
        hold = args.fleet_hold_ms / 1000
        fixed = [await one_level(ctx, s, n, hold, f"{hold:g} s hold: ") for n in levels]
        s.add(
            Row(
                f"{hold:g} s hold, {levels[0]:,} to {levels[-1]:,} in flight (rate grows)",
                " → ".join(f"{m.us:.1f} µs / {m.commands:.2f}" for m in fixed),
                "",
                f"max / min {max(m.us for m in fixed) / min(m.us for m in fixed):.2f} (µs), "
                f"{max(m.commands for m in fixed) / min(m.commands for m in fixed):.2f} "
                "(commands)",
            )
        )
    return s


async def one_level(ctx: Ctx, s: Section, level: int, hold: float, label: str) -> Level:
    """Measure one level with the receiver holding each request `hold` seconds."""
    args = ctx.args
    await ctx.client.flushdb()
    await ctx.admin.security()
    await ctx.receiver.reset()
    subs = await ctx.subscriptions(SUBSCRIPTIONS, f"/hold/{hold * 1000:g}")
    ramp = 3 * hold + 5
    n = int(level / hold * (ramp + 2 * hold + args.fleet_seconds) * 1.2) + 2 * level
    pairs = await ctx.deliveries(subs, n)
    per_daemon = max(1, level // DAEMONS)
    daemons = [
        ctx.daemon(
            f"fleet-{level}-{hold:g}-{i}",
            DISPATCH_CONCURRENCY=str(per_daemon),
            DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION=str(max(8, level // 16)),
            SHUTDOWN_GRACE_SECONDS="2",
        )
        for i in range(DAEMONS)
    ]
    try:
        for d in daemons:
            await d.ready(ctx.session)
        meter = RedisMeter(ctx.client)
        await meter.start()
        await asyncio.sleep(args.fleet_idle_seconds)
        idle = await meter.stop()
        await ctx.push([d for d, _ in pairs])
        deadline = time.monotonic() + ramp
        while (await ctx.receiver.gauge())["in_flight"] < 0.9 * level:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(max(1.0, 2 * hold))
        await meter.start()
        cpu0 = sum(d.cpu() for d in daemons)
        done0 = (await ctx.receiver.gauge())["completed"]
        held: list[int] = []
        end = time.monotonic() + args.fleet_seconds
        while time.monotonic() < end:
            held.append((await ctx.receiver.gauge())["in_flight"])
            await asyncio.sleep(0.2)
        done = (await ctx.receiver.gauge())["completed"] - done0
        cpu = sum(d.cpu() for d in daemons) - cpu0
        work = await meter.stop()
        left = await ctx.client.llen(PENDING)
    finally:
        for d in daemons:
            d.proc.terminate()
        for d in daemons:
            await asyncio.to_thread(d.stop)
    mean_held = statistics.fmean(held) if held else 0.0
    us, cmds = work.us_per(done), work.commands_per(done)
    s.add(
        Row(
            f"{label}{level:,} in flight (hold {hold * 1000:g} ms)",
            f"**{us:.1f} µs**, **{cmds:.2f} commands** per delivery",
            f"held {mean_held:,.0f} on average; {done / work.seconds:,.0f} deliveries/s "
            f"(level ÷ hold = {level / hold:,.0f}/s)",
            f"daemons' CPU {cpu * 1e6 / max(1, done):.0f} µs per delivery",
        )
    )
    s.note(
        f"{label}{level:,} in flight: {done:,} deliveries in {work.seconds:.1f} s; commands "
        f"per delivery by name: {work.breakdown(done)}; Redis CPU per delivery: "
        f"{work.time_breakdown(done)}; idle fleet: "
        f"{idle.cpu_s * 1e6 / idle.seconds:,.0f} µs of Redis CPU and "
        f"{idle.commands / idle.seconds:,.1f} commands per second; {left:,} still pending"
        + ("" if left else " (pending ran dry: the window is short of supply)")
        + ("" if mean_held >= 0.85 * level else "; **the level was not reached**")
        + "."
    )
    await ctx.client.flushdb()
    await ctx.receiver.reset()
    return Level(level, hold, us, cmds)
