"""The `quarantine` commands: list, requeue and drop entries of dispatch:failed."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from cycles_events.cli.common import EXIT_OK, emit, with_redis
from cycles_events.config import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    """List the newest quarantine entries."""
    from cycles_events import keys, ops
    from cycles_events.opsutil import ellipsize, format_ms, table, terminal_width

    async def run(redis: Redis, settings: Settings) -> int:
        total, entries = await ops.quarantine_list(redis, args.limit)
        rows = []
        for e in entries:
            at = e.get("quarantined_at_ms")
            rows.append(
                (
                    e.get("delivery_id"),
                    e.get("reason"),
                    format_ms(at) if isinstance(at, int) else None,
                    ellipsize(str(e.get("payload") or ""), 50) or None,
                )
            )
        text = f"{keys.FAILED}: {total} entries"
        if rows:
            text += f" (newest {len(rows)})\n" + table(
                rows,
                ("DELIVERY", "REASON", "QUARANTINED_AT", "PAYLOAD"),
                width=terminal_width(sys.stdout),
                flex=("PAYLOAD",),
            )
        emit(args, {"total": total, "entries": entries}, text)
        return EXIT_OK

    return with_redis(run)


def _quarantine_take(args: argparse.Namespace, requeue: bool) -> int:
    from cycles_events import keys, ops

    async def run(redis: Redis, settings: Settings) -> int:
        removed = await ops.quarantine_take(redis, args.delivery_id, requeue=requeue)
        verb = f"requeued onto {keys.PENDING}" if requeue else "dropped"
        text = f"{args.delivery_id} {verb} ({removed} quarantine entries removed)"
        data = {
            "delivery_id": args.delivery_id,
            "action": "requeue" if requeue else "drop",
            "entries_removed": removed,
        }
        emit(args, data, text)
        return EXIT_OK

    return with_redis(run)


def cmd_quarantine_requeue(args: argparse.Namespace) -> int:
    """Put a quarantined delivery id back on dispatch:pending."""
    return _quarantine_take(args, requeue=True)


def cmd_quarantine_drop(args: argparse.Namespace) -> int:
    """Remove a delivery's quarantine entries."""
    return _quarantine_take(args, requeue=False)
