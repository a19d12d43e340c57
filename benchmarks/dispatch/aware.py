"""Issue 14, items 3 and 4: adaptive concurrency against a receiver that breaks, the retry lane."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

from benchmarks.dispatch import records
from benchmarks.dispatch import scenarios as sc
from benchmarks.dispatch.harness import Daemon
from benchmarks.dispatch.receiver import OVERLOAD_SLOWER
from benchmarks.dispatch.report import Row, Section
from benchmarks.dispatch.single import per_s
from cycles_events import keys
from cycles_events.models import dumps, format_instant
from tests.support import DELIVERY_TTL_S, now_ms

BREAKS_AT, WORK_MS = 8, 20  # the receiver: at most 8 at work at once, 20 ms each
BOUND = 16  # DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION, fixed and as the adaptive maximum
POLICY = {"max_retries": 10, "initial_delay_ms": 200, "backoff_multiplier": 1.0}
RATE, SHARE = 300.0, 0.5  # item 4: fresh deliveries/s, DISPATCH_FIRST_ATTEMPT_SHARE (lane on)
FRESH_SUBS, RETRY_SUBS, HOLD_MS = 8, 16, 50  # 16 x the default bound 8: the pool limits retries
EVERY = {"SHUTDOWN_GRACE_SECONDS": "2"}
OVERLOAD_ENV = {"DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION": str(BOUND), **EVERY}
LANE_ENV = {"DISPATCH_RETRY_POLL_INTERVAL_MS": "100", **EVERY}
LANE_GOAL, RATE_GOAL = 2.0, 0.9
LATENCY = "cycles_webhook_delivery_latency_seconds"
LIMITS = "cycles_webhook_dispatch_concurrency_limit"


async def run(ctx: sc.Ctx) -> Section:
    args = ctx.args
    n, retries, conc = args.aware_n, args.lane_backlog, args.concurrency
    fresh_n = max(300, int(RATE * args.paced_seconds))
    s = Section(
        "aware",
        "Receiver-aware delivery: adaptive concurrency and the retry lane (issue 14)",
        f"Item 3: {n:,} deliveries pushed at once to one subscription (its bound applies) on "
        f"/overload/{BREAKS_AT}/{WORK_MS}: 200 after {WORK_MS} ms while fewer than {BREAKS_AT} "
        f"requests are at work there, else 503 after {OVERLOAD_SLOWER * WORK_MS} ms (capacity "
        f"{BREAKS_AT} ÷ {WORK_MS} ms = {per_s(BREAKS_AT / WORK_MS * 1000)}); retried "
        f"{POLICY['initial_delay_ms']} ms later, up to {POLICY['max_retries']} times. By a "
        f"fresh daemon (DISPATCH_CONCURRENCY={conc}) with a fixed "
        f"DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION={BOUND}, then by one with "
        "DISPATCH_ADAPTIVE_CONCURRENCY_ENABLED=true under it. Failed attempts = the receiver's "
        "503s per delivery delivered; delivered rate: from the push to the last 200; the "
        "adaptive limit as the daemon publishes it every 5 s (gauges, "
        "cycles-events:concurrency-limits). Item 4: fresh deliveries (keyed by event, "
        f"{FRESH_SUBS} subscriptions, a fast path) pushed one every 1/{RATE:g} s for "
        f"{fresh_n / RATE:g} s as in goal 3; added latency = push to receipt. Each daemon paces "
        f"them without a backlog, then with {retries:,} due retries of {RETRY_SUBS} other "
        f"subscriptions on /hold/{HOLD_MS} (unkeyed), written as RETRYING after one attempt and "
        "ZADDed to dispatch:retry, due, just before the first push. Lane on "
        f"(DISPATCH_FIRST_ATTEMPT_SHARE={SHARE}): three daemons, each side's lower p99 counts; "
        "off (0, the default): one. DISPATCH_RETRY_POLL_INTERVAL_MS=100 for all, so that "
        "retries added from outside are seen at once. Goal: lane on, p99 with the backlog ≤ "
        f"{LANE_GOAL:g}x without.",
    ).begin()
    await adaptive(ctx, s, n)
    await lane(ctx, s, fresh_n, retries)
    return s


async def empty(ctx: sc.Ctx) -> None:
    """An empty Redis (the run's own redis-server) and a receiver that forgot everything."""
    await ctx.client.flushdb()
    await ctx.admin.security()
    await ctx.receiver.reset()


async def overload(ctx: sc.Ctx, path: str) -> dict[str, int]:
    async with ctx.receiver.session.get(ctx.receiver.url("/_overload")) as resp:
        got: dict[str, dict[str, int]] = await resp.json(content_type=None)
    return got.get(path, {"ok": 0, "refused": 0, "peak": 0})


async def published(ctx: sc.Ctx, daemon: Daemon, sub: str, limits: list[str]) -> None:
    """Add the limit the daemon last published, when it changed: the gauge of adaptive
    subscriptions below the maximum, then the entry in cycles-events:concurrency-limits."""
    names = [LIMITS + "ed_subscriptions", LIMITS + "_subscriptions"]
    limited, tracked = (await daemon.counters(ctx.session, *names)).values()
    seen = f"{BOUND}/{BOUND}" if tracked else ""  # nothing published yet
    if limited:
        raw = await ctx.client.hget(keys.CONCURRENCY_LIMITS, sub)
        seen = raw.decode() if isinstance(raw, bytes) else "?"
    if seen and (not limits or limits[-1] != seen):
        limits.append(seen)


async def success_ms(ctx: sc.Ctx, daemon: Daemon) -> float:
    """The daemon's mean round trip of a 200, from its latency histogram."""
    async with ctx.session.get(f"http://127.0.0.1:{daemon.mgmt}/actuator/prometheus") as resp:
        text = (await resp.text()).splitlines()
    ok = {k.split("{")[0]: float(v) for k, v in (ln.split(" ") for ln in text if 'success"' in ln)}
    return ok[LATENCY + "_sum"] * 1000 / max(1, ok[LATENCY + "_count"])


@dataclass
class Overload:
    delivered: int
    refused: int
    failed: int  # for good
    seconds: float  # push to the last 200
    peak: int  # requests open on the path at once, at most
    sent_s: float  # the daemon's round trips, all attempts, summed
    ok_ms: float  # the daemon's mean round trip of a 200
    limits: list[str]  # the published limit, each change

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds

    @property
    def per(self) -> float:  # failed attempts per delivery delivered
        return self.refused / max(1, self.delivered)


async def overload_run(ctx: sc.Ctx, n: int, adaptive_on: bool) -> Overload:
    """One burst to /overload with a fresh daemon, until each delivery got a 200 or FAILED."""
    await empty(ctx)
    path = f"/overload/{BREAKS_AT}/{WORK_MS}"
    subs = await ctx.subscriptions(1, path, retry_policy={**POLICY, "max_delay_ms": 1000})
    pairs = await ctx.deliveries(subs, n)
    adapt = {"DISPATCH_ADAPTIVE_CONCURRENCY_ENABLED": "true"} if adaptive_on else {}
    daemon = ctx.daemon("adaptive" if adaptive_on else "fixed", **OVERLOAD_ENV, **adapt)
    failed_for_good, limits = "cycles_webhook_delivery_failed_total", list[str]()
    try:
        await daemon.ready(ctx.session)
        pushed = time.time()
        await ctx.push([d for d, _ in pairs])
        deadline = time.monotonic() + 300
        failed, ticks = 0.0, 0
        while (got := await overload(ctx, path))["ok"] + failed < n:
            if ticks % 10 == 0:  # once a second: the failed for good, the published limit
                failed = (await daemon.counters(ctx.session, failed_for_good))[failed_for_good]
                if adaptive_on:
                    await published(ctx, daemon, subs[0], limits)
            if time.monotonic() > deadline:
                raise RuntimeError(f"item 3: {got['ok']} of {n} delivered, {failed:.0f} failed")
            ticks += 1
            await asyncio.sleep(0.1)
        stats = await ctx.receiver.stats()
        last = max(stats[e][0] for _, e in pairs if stats.get(e))
        await ctx.settled()
        counts = await daemon.counters(ctx.session, failed_for_good, LATENCY + "_sum")
        ok_ms = await success_ms(ctx, daemon)
        if adaptive_on:  # the limit it settled on: the next sample after the burst (≤ 5 s)
            samples, wait_until = len(limits), time.monotonic() + 6
            while len(limits) == samples and time.monotonic() < wait_until:
                await asyncio.sleep(0.5)
                await published(ctx, daemon, subs[0], limits)
        got = await overload(ctx, path)
    finally:
        daemon.stop()
    await ctx.receiver.reset()
    failed, sent_s = (counts[k] for k in (failed_for_good, LATENCY + "_sum"))
    return Overload(
        got["ok"], got["refused"], int(failed), last - pushed, got["peak"], sent_s, ok_ms, limits
    )


async def adaptive(ctx: sc.Ctx, s: Section, n: int) -> None:
    capacity = BREAKS_AT / WORK_MS * 1000
    fixed, adapt = [await overload_run(ctx, n, adaptive_on=on) for on in (False, True)]
    for name, r in ((f"fixed bound {BOUND}", fixed), (f"adaptive, max {BOUND}", adapt)):
        limit = f"; limit published: {' → '.join(r.limits)}" if r.limits else ""
        s.add(
            Row(
                f"item 3: {name}",
                f"{r.per:.2f} failed attempts per delivery ({r.refused:,} 503s for "
                f"{r.delivered:,} delivered, {r.failed} failed for good); delivered "
                f"{per_s(r.rate)} in {r.seconds:.1f} s{limit}",
                f"the receiver's capacity {per_s(capacity)}",
                f"{r.rate / capacity:.2f}x its capacity",
            )
        )
        s.note(
            f"Item 3, {name}: the daemon kept {r.sent_s / r.seconds:.1f} requests open on "
            f"average (the sum of its round trips ÷ the span; {r.peak} at most, as the receiver "
            f"saw), the receiver was at work on {r.delivered * WORK_MS / 1000 / r.seconds:.1f} "
            f"of its {BREAKS_AT} on average; a 200 took {r.ok_ms:.1f} ms as the daemon measured."
        )
    fewer, ratio = adapt.refused / max(1, fixed.refused), adapt.rate / fixed.rate
    s.add(
        Row(
            "item 3: adaptive vs fixed",
            f"{adapt.per:.2f} vs {fixed.per:.2f} failed attempts per delivery; "
            f"{per_s(adapt.rate)} vs {per_s(fixed.rate)} delivered",
            f"the fixed bound {BOUND}, same burst",
            f"**{fewer:.2f}x the failed attempts, {ratio:.2f}x the delivered rate**",
            f"fewer failed attempts, rate ≥ {RATE_GOAL}x fixed's",
            fewer < 1 and ratio >= RATE_GOAL and not adapt.failed,
            headline=True,
        )
    )


def retry_commands(subs: list[str], due_ms: int, ids: list[str]) -> Iterator[records.Command]:
    """A RETRYING delivery per id (one 503 so far) due at due_ms, at most 1,000 events shared."""
    events = [records.new_id("evt") for _ in range(min(1000, len(ids)))]
    for event_id in events:
        yield from records.event_commands(event_id)
    created, due = format_instant(due_ms - 1000), format_instant(due_ms)
    for i, delivery_id in enumerate(ids):
        sub_id = subs[i % len(subs)]
        doc: dict[str, object] = {"delivery_id": delivery_id, "subscription_id": sub_id}
        doc |= {"event_id": events[i % len(events)], "event_type": "budget.exhausted"}
        doc |= {"status": "RETRYING", "attempted_at": created, "attempts": 1}
        doc |= {"response_status": 503, "response_time_ms": 5, "error_message": "HTTP 503"}
        doc["next_retry_at"] = due
        yield ("SET", keys.delivery(delivery_id), dumps(doc), "EX", str(DELIVERY_TTL_S))
        yield ("ZADD", keys.deliveries(sub_id), str(due_ms - 1000), delivery_id)


Paced = tuple[sc.Latency, int, float]  # retries answered during the pushes, the daemon's cores


async def paced(
    ctx: sc.Ctx, daemon: Daemon, pairs: sc.Pairs, due: list[str], due_ms: int = 0
) -> Paced:
    """Fresh deliveries paced as scenarios.paced_daemon paces them, the `due` retries ZADDed
    to dispatch:retry (due at due_ms, in the past) just before the first push."""
    answered0, cpu0 = (await ctx.receiver.gauge())["completed"], daemon.cpu()
    if due:
        await ctx.client.zadd(keys.RETRY, dict.fromkeys(due, due_ms))
    pushed: dict[str, float] = {}
    started, made = time.perf_counter(), 0
    while made < len(pairs):
        upto = min(len(pairs), int((time.perf_counter() - started) * RATE) + 1)
        if upto > made:
            at = time.time()
            await ctx.client.lpush(keys.PENDING, *[d for d, _ in pairs[made:upto]])
            pushed.update((e, at) for _, e in pairs[made:upto])
            made = upto
        await asyncio.sleep(0.001)
    answered = (await ctx.receiver.gauge())["completed"] - answered0
    cores = (daemon.cpu() - cpu0) / (time.perf_counter() - started)
    got = await ctx.receiver.wait_receipts(list(pushed), timeout=300)
    if not due:  # with the backlog, its retries go on: the daemon is stopped instead
        await ctx.settled()
    await ctx.receiver.reset()
    latency = [(got[e][0] - t) * 1000 for e, t in pushed.items()]
    span = max(got[e][0] for e in pushed) - min(pushed.values())
    n = len(pairs)
    return sc.Latency(RATE, n / span, sc.pct(latency, 50), sc.pct(latency, 99), n), answered, cores


async def lane_run(ctx: sc.Ctx, share: float, fresh_n: int, retries: int) -> tuple[Paced, Paced]:
    """One fresh daemon: the paced fresh deliveries without, then with, the due retries."""
    await empty(ctx)
    fresh = await ctx.subscriptions(FRESH_SUBS, "/hook")
    slow = await ctx.subscriptions(RETRY_SUBS, f"/hold/{HOLD_MS}")
    sizes = (ctx.args.warm_up, fresh_n, fresh_n)
    warm, quiet, busy = [await ctx.deliveries(fresh, k) for k in sizes]
    due = [records.new_id("del") for _ in range(retries)]
    due_ms = now_ms()  # next_retry_at; in the past by the time they are ZADDed
    await records.pipe("127.0.0.1", ctx.server.port, retry_commands(slow, due_ms, due))
    daemon = ctx.daemon(f"lane-{share:g}", DISPATCH_FIRST_ATTEMPT_SHARE=str(share), **LANE_ENV)
    try:
        await daemon.ready(ctx.session)
        await sc.paced_daemon(ctx, daemon, warm, 5000)  # warm-up: connections opened
        without = await paced(ctx, daemon, quiet, [])
        backlog = await paced(ctx, daemon, busy, due, due_ms)
    finally:
        daemon.stop()
    await empty(ctx)
    return without, backlog


async def lane(ctx: sc.Ctx, s: Section, fresh_n: int, retries: int) -> None:
    for share, runs in ((SHARE, 3), (0.0, 1)):
        got = [await lane_run(ctx, share, fresh_n, retries) for _ in range(runs)]
        quiet, busy = (min((g[k] for g in got), key=lambda x: x[0].p99) for k in (0, 1))
        (a, _, idle), (b, answered, cores) = quiet, busy
        name = f"lane on (share {share:g})" if share else "lane off (share 0, the default)"
        s.add(Row(f"item 4, {name}: no backlog", f"p50 {a.p50:.1f} ms, p99 {a.p99:.1f} ms"))
        ratio = b.p99 / a.p99
        s.add(
            Row(
                f"item 4, {name}: {retries:,} due retries",
                f"p50 {b.p50:.1f} ms, p99 {b.p99:.1f} ms (fresh delivered {per_s(b.achieved)})",
                f"no backlog: p99 {a.p99:.1f} ms",
                (f"**p99 {ratio:.2f}x**" if share else f"p99 {ratio:,.0f}x")
                + f" (p50 {b.p50 - a.p50:+,.1f} ms, p99 {b.p99 - a.p99:+,.1f} ms)",
                f"≤ {LANE_GOAL:g}x" if share else "",
                ratio <= LANE_GOAL if share else None,
                headline=bool(share),
            )
        )
        each = ", ".join(f"{w[0].p99:.1f} / {x[0].p99:.1f}" for w, x in got)
        s.note(
            f"Item 4, {name}: {fresh_n:,} fresh deliveries a run, p99 without / with the backlog "
            f"{each} ms; while they were pushed {answered:,} of the {retries:,} retries were "
            f"answered ({answered * RATE / b.n:,.0f}/s) and the daemon used "
            f"{cores:.0%} of a core ({idle:.0%} without the backlog)."
        )
