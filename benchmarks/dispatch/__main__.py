"""`make bench`: every figure of issue 12's goals, each beside a ceiling measured in the same run.

The machines are shared and noisy, so nothing is printed without the ceiling it is measured
against. `make bench-fleet` (`--fleet`) runs the fleet sweep of goal 2 alone. `--only aware`
measures issue 14's items 3 and 4 alone (adaptive concurrency, the retry lane).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from benchmarks.dispatch import aware, backlog, fleet, report, single
from benchmarks.dispatch.harness import ROOT, ReceiverProc, machine
from benchmarks.dispatch.raw import RawLoop
from benchmarks.dispatch.scenarios import Ctx
from tests.support import Admin, RedisServer

FULL = {
    "n": 20000,
    "warm_up": 500,
    "paced_seconds": 4.0,
    "slow_seconds": 6.0,
    "retry_n": 200,
    "backlog": 1_000_000,
    "fleet_seconds": 10.0,
    "fleet_idle_seconds": 2.0,
    "aware_n": 2000,
    "lane_backlog": 10000,
}
QUICK = {
    "n": 3000,
    "warm_up": 200,
    "paced_seconds": 1.0,
    "slow_seconds": 1.5,
    "retry_n": 50,
    "backlog": 30000,
    "fleet_seconds": 3.0,
    "fleet_idle_seconds": 1.0,
    "aware_n": 300,
    "lane_backlog": 2000,
}
SINGLE = {"goal1", "goal2", "goal3", "goal4", "retry"}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dispatch", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    p.add_argument("--only", help="comma-separated: " + ",".join(report.ORDER))
    p.add_argument("--fleet", action="store_true", help="the fleet sweep only (--only fleet)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmark.md")
    p.add_argument("--no-write", action="store_true", help="print only; write no file")
    p.add_argument("--concurrency", type=int, default=64, help="the raw loop's and the daemon's")
    p.add_argument("--n", type=int, help="deliveries per burst (20,000)")
    p.add_argument("--warm-up", type=int, help="deliveries and raw POSTs before measuring")
    p.add_argument("--paced-seconds", type=float, help="seconds of pushes per paced rate")
    p.add_argument("--slow-seconds", type=float, help="goal 4's burst, in seconds at its bound")
    p.add_argument("--retry-n", type=int, help="deliveries in the retry phase")
    p.add_argument("--backlog", type=int, help="goal 5's backlog (1,000,000)")
    p.add_argument("--fleet-levels", default="64,256,1024,4096", help="deliveries in flight")
    p.add_argument(
        "--fleet-rate", type=float, default=2048, help="the goal's sweep: fleet deliveries/s"
    )
    p.add_argument(
        "--fleet-hold-ms", type=int, default=1000, help="the comparison sweep's hold (0: none)"
    )
    p.add_argument("--fleet-seconds", type=float, help="the measured window per level")
    p.add_argument("--fleet-idle-seconds", type=float, help="the idle baseline per level")
    p.add_argument("--aware-n", type=int, help="aware: item 3's burst (2,000)")
    p.add_argument("--lane-backlog", type=int, help="aware: item 4's due retries (10,000)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.fleet:
        args.only = "fleet"
    chosen = set(args.only.split(",")) if args.only else set(report.ORDER)
    unknown = chosen - set(report.ORDER)
    if unknown:
        p.error(f"unknown goals: {', '.join(sorted(unknown))} (of {', '.join(report.ORDER)})")
    if chosen & {"goal2", "goal3"}:
        chosen.add("goal1")  # measured by the same bursts
    args.selected = chosen
    return args


async def run(args: argparse.Namespace) -> tuple[list[report.Section], dict[str, str], Ctx]:
    server = RedisServer()
    server.start()
    receiver = ReceiverProc()
    raw = RawLoop(receiver.port)
    client = Redis.from_url(server.url)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    workdir = Path(tempfile.mkdtemp(prefix="cycles-bench-"))
    sections: list[report.Section] = []
    try:
        await receiver.ready()
        await raw.ready()
        await Admin(client).security()
        host = await machine(client)
        print(
            f"cycles-events benchmark: {host['cpu']}, {host['cores']} cores, Python "
            f"{host['python']}, Redis {host['redis']}; commit {host['commit']} ({host['tree']}); "
            f"{host['date']}{'; --quick' if args.quick else ''}"
        )
        print(f"  daemon logs: {workdir}")
        ctx = Ctx(args, server, client, receiver, raw, session, workdir)
        if args.selected & SINGLE:
            sections += await single.run(ctx, args.selected)
        if "goal5" in args.selected:
            sections.append(await backlog.run(ctx))
        if "fleet" in args.selected:
            sections.append(await fleet.run(ctx))
        if "aware" in args.selected:
            sections.append(await aware.run(ctx))
    finally:
        await session.close()
        await client.aclose()
        await raw.close()
        await receiver.close()
        server.cleanup()
    shutil.rmtree(workdir, ignore_errors=True)
    return sections, host, ctx


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    # a SIGTERM ends the run as ^C does: the processes it started are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    started = time.monotonic()
    sections, host, ctx = asyncio.run(run(args))
    report.summary(sections)
    took = time.monotonic() - started
    print(f"\n({took:.0f} s)")
    if args.no_write:
        return
    options = f"--concurrency {args.concurrency} --n {args.n} --backlog {args.backlog}"
    if "aware" in args.selected:
        options += f" --aware-n {args.aware_n} --lane-backlog {args.lane_backlog}"
    if args.quick:
        options += " --quick"
    stamp = (
        f"Measured {host['date']} at commit {host['commit']} ({host['tree']}); "
        f"{options}; the run took {took:.0f} s."
    )
    chart = "burst" in ctx.chart and "paced" in ctx.chart
    if chart:
        from benchmarks.dispatch import chart as png  # matplotlib: the bench extra

        title = f"cycles-events, one process, concurrency {args.concurrency}: {host['date']}"
        png.draw(args.out.parent / "benchmark.png", ctx.chart, title)
    report.write(args.out, sections, host, stamp, chart)
    print(f"wrote {args.out}" + (f" and {args.out.parent / 'benchmark.png'}" if chart else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
