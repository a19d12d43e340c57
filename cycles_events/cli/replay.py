"""The `replay` command: select deliveries, show a dry run or write the replays."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING

from cycles_events.cli.common import EXIT_INTERRUPTED, EXIT_OK, PROG, emit, fail, with_redis
from cycles_events.config import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from cycles_events.ops import Selection


SHOWN_PAIRS = 5


def _skipped_text(sel: Selection) -> str:
    if not sel.skipped:
        return ""
    parts = ", ".join(f"{k} {v}" for k, v in sorted(sel.skipped.items()))
    return f" (skipped: {parts})"


def _hints(sel: Selection) -> list[str]:
    """What the operator may do about the sources left out: already replayed, inactive."""
    lines = []
    if sel.already:
        n = len(sel.already)
        lines.append(
            f"{n} source{'s were' if n != 1 else ' was'} already replayed; --again replays "
            "them anyway. Earlier replays (their replay_of field names the source):"
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


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay deliveries as new PENDING deliveries of the same events."""
    from cycles_events import ops
    from cycles_events.opsutil import Progress

    async def run(redis: Redis, settings: Settings) -> int:
        if args.delivery_ids:
            sel = await ops.select_by_ids(
                redis, args.delivery_ids, again=args.again, dry_run=args.dry_run
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
        if args.dry_run:
            data = {
                "dry_run": True,
                "scanned": sel.scanned,
                "matched": sel.matched,
                "would_replay": [s.delivery_id for s in sel.sources],
                "skipped": dict(sel.skipped),
                "already_replayed": sel.already,
                "inactive_subscriptions": sel.inactive,
            }
            lines = [f"{s.delivery_id}  {s.event_type}" for s in sel.sources]
            lines.append(
                f"dry run: would replay {total} deliveries{_skipped_text(sel)}; nothing changed"
            )
            emit(args, data, "\n".join(lines + _hints(sel)))
            return EXIT_OK
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        progress = Progress(total, sys.stderr, "replay")
        try:
            result = await ops.replay(
                redis,
                sel.sources,
                ttl_s=settings.delivery_ttl_days * 86400,
                rate=args.rate,
                stop=stop,
                on_progress=progress.update,
            )
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
            progress.close()
        done = len(result.replayed)
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
        }
        lines = [f"{s} -> {n}" for s, n in result.replayed]
        lines.append(f"replayed {done} of {total} deliveries{_skipped_text(sel)}")
        emit(args, data, "\n".join(lines + _hints(sel)))
        if result.error is not None:
            doubt = " ".join(n for _, n in result.in_doubt)
            return fail(
                f"Redis failed after {done} of {total} replays ({result.error}); "
                f"possibly written: {doubt or 'none'}"
            )
        if result.interrupted:
            print(
                f"{PROG}: interrupted after {done} of {total} replays; run the same command "
                "again to replay the rest (deliveries already replayed are skipped)",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        return EXIT_OK

    return with_redis(run)
