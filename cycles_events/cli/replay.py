"""The `replay` command: select deliveries, show a dry run or write the replays."""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
from typing import TYPE_CHECKING, Any

from cycles_events.cli.common import EXIT_INTERRUPTED, EXIT_OK, PROG, emit, fail, with_redis
from cycles_events.config import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from cycles_events.ops import ReplayResult, Selection
    from cycles_events.opsutil import Pace


SHOWN_PAIRS = 5


def skipped_text(sel: Selection) -> str:
    if not sel.skipped:
        return ""
    parts = ", ".join(f"{k} {v}" for k, v in sorted(sel.skipped.items()))
    return f" (skipped: {parts})"


AGAIN = "--again replays them anyway"


def hints(sel: Selection, *, again: str = AGAIN) -> list[str]:
    """What the operator may do about the sources left out: already replayed, inactive."""
    lines = []
    if sel.already:
        n = len(sel.already)
        lines.append(
            f"{n} source{'s were' if n != 1 else ' was'} already replayed; {again}. "
            "Earlier replays (their replay_of field names the source):"
        )
        pairs = sorted(sel.already.items())
        lines.extend(f"  {src} replayed as {new}" for src, new in pairs[:SHOWN_PAIRS])
        if n > SHOWN_PAIRS:
            lines.append(f"  \u2026 and {n - SHOWN_PAIRS} more (--json lists every pair)")
    for sub_id, status in sorted(sel.inactive.items()):
        lines.append(
            f"note: subscription {sub_id} is {status}: the replay itself is refused until it "
            f"is ACTIVE again (cycles-events subscriptions enable {sub_id})"
        )
    return lines


def pace_of(args: argparse.Namespace) -> Pace | None:
    """The schedule of --rate and --ramp: None unpaced."""
    from cycles_events.opsutil import Pace

    if args.rate is None:
        return None
    return Pace.ramped(args.rate, args.ramp) if args.ramp else Pace(args.rate)


def pace_fields(pace: Pace | None, total: int) -> dict[str, Any]:
    """The --json fields of a schedule."""
    if pace is None:
        return dict.fromkeys(("rate_per_s", "ramp_s", "ramp_start_per_s", "planned_duration_s"))
    return {
        "rate_per_s": pace.rate,
        "ramp_s": pace.ramp_s or None,
        "ramp_start_per_s": pace.rate_at(0) if pace.ramp_s else None,
        "planned_duration_s": round(pace.time_for(total), 2),
    }


def plan_line(pace: Pace, total: int) -> str:
    """How long the writes will take: plan: 1500 replays at 50/s, ramping ...: about 40s."""
    from cycles_events.opsutil import format_age

    about = format_age(math.ceil(pace.time_for(total)))
    return f"plan: {total} replays at {pace.describe()}: about {about}"


def dry_run_report(sel: Selection, pace: Pace | None) -> tuple[dict[str, Any], list[str]]:
    """The --json data and the listed sources of a dry run."""
    data = {
        "dry_run": True,
        "scanned": sel.scanned,
        "matched": sel.matched,
        "would_replay": [s.delivery_id for s in sel.sources],
        "skipped": dict(sel.skipped),
        "already_replayed": sel.already,
        "inactive_subscriptions": sel.inactive,
        **pace_fields(pace, len(sel.sources)),
    }
    return data, [f"{s.delivery_id}  {s.event_type}" for s in sel.sources]


async def write_replays(
    redis: Redis, settings: Settings, sel: Selection, pace: Pace | None, *, show_pace: bool
) -> ReplayResult:
    """Write the replays of `sel`, with a progress bar; Ctrl-C or SIGTERM stops between batches."""
    from cycles_events import ops
    from cycles_events.opsutil import Progress

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    progress = Progress(len(sel.sources), sys.stderr, "replay", pace=pace if show_pace else None)
    try:
        return await ops.replay(
            redis,
            sel.sources,
            ttl_s=settings.delivery_ttl_days * 86400,
            pace=pace,
            stop=stop,
            on_progress=progress.update,
        )
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        progress.close()


def result_report(
    sel: Selection, result: ReplayResult, pace: Pace | None, *, again: str = AGAIN
) -> tuple[dict[str, Any], list[str]]:
    """The --json data and the text lines of a replay run."""
    total = len(sel.sources)
    data = {
        "dry_run": False,
        "scanned": sel.scanned,
        "matched": sel.matched,
        "selected": total,
        "replayed": [{"source": s, "delivery_id": n} for s, n in result.replayed],
        "in_doubt": [{"source": s, "delivery_id": n} for s, n in result.in_doubt],
        "skipped": dict(sel.skipped),
        "already_replayed": sel.already,
        "interrupted": result.interrupted,
        "error": result.error,
        **pace_fields(pace, total),
    }
    lines = [f"{s} -> {n}" for s, n in result.replayed]
    lines.append(f"replayed {len(result.replayed)} of {total} deliveries{skipped_text(sel)}")
    return data, lines + hints(sel, again=again)


def result_status(result: ReplayResult, total: int, rerun: str) -> int:
    """The exit status of a replay run, saying on stderr why it stopped early."""
    done = len(result.replayed)
    if result.error is not None:
        doubt = " ".join(n for _, n in result.in_doubt)
        return fail(
            f"Redis failed after {done} of {total} replays ({result.error}); "
            f"possibly written: {doubt or 'none'}"
        )
    if result.interrupted:
        print(
            f"{PROG}: interrupted after {done} of {total} replays; run {rerun} again to replay "
            "the rest (deliveries already replayed are skipped)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay deliveries as new PENDING deliveries of the same events."""
    from cycles_events import ops

    async def run(redis: Redis, settings: Settings) -> int:
        ramped = bool(args.ramp)
        if args.delivery_ids:
            sel = await ops.select_by_ids(
                redis,
                args.delivery_ids,
                again=args.again,
                dry_run=args.dry_run,
                oldest_first=ramped,
            )
        else:
            flt = ops.ReplayFilter(
                statuses=frozenset(args.status),
                since_ms=args.since,
                until_ms=args.until,
                event_types=tuple(args.event_type),
                reasons=frozenset(args.reason),
            )
            sel = await ops.select_by_subscription(
                redis, args.subscription, flt, again=args.again, dry_run=args.dry_run
            )
        ops.limit_selection(sel, args.limit)
        total = len(sel.sources)
        pace = pace_of(args)
        if args.dry_run:
            data, lines = dry_run_report(sel, pace)
            lines.append(
                f"dry run: would replay {total} deliveries{skipped_text(sel)}; nothing changed"
            )
            if ramped and pace is not None:
                lines.append(plan_line(pace, total))
            emit(args, data, "\n".join(lines + hints(sel)))
            return EXIT_OK
        result = await write_replays(redis, settings, sel, pace, show_pace=ramped)
        data, lines = result_report(sel, result, pace)
        emit(args, data, "\n".join(lines))
        return result_status(result, total, "the same command")

    return with_redis(run)
