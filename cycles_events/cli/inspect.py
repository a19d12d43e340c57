"""The read-only commands: `stats`, `deliveries show` and `deliveries list`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from cycles_events.cli.common import EXIT_OK, emit, with_redis
from cycles_events.config import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the dispatch queue depths."""
    from cycles_events import keys, ops
    from cycles_events.opsutil import format_age

    async def run(redis: Redis, settings: Settings) -> int:
        idle_ms = settings.processing_recovery_idle_ms
        st = await ops.stats(redis, ops.now_ms(), idle_ms)
        lines = [
            f"pending      {st.pending:>8}   oldest {format_age(st.oldest_pending_age_s)}",
            f"retry        {st.retry:>8}   due now {st.retry_due}, "
            f"due in the next minute {st.retry_due_next_minute}",
            f"processing   {st.processing:>8}   claims by owner "
            f"(idle = claimed over {idle_ms // 1000}s ago: due for recovery):",
        ]
        for kind, label in CLAIM_LABELS.items():
            g = st.claims[kind]
            if g.count or kind in ("ours", "java"):
                lines.append(
                    f"  {label:<26} {g.count:>6}   oldest {format_age(g.oldest_age_s)}, "
                    f"idle {g.idle}"
                )
        lines.append(f"quarantine   {st.quarantine:>8}   ({keys.FAILED})")
        if st.outbox is not None:
            o = st.outbox
            lines.append(
                f"outbox       {o.pending:>8}   due now {o.due}, oldest "
                f"{format_age(o.oldest_age_s)}, dead letters {o.dead_letters} "
                f"({keys.OUTBOX_PENDING})"
            )
        emit(args, st.as_json(), "\n".join(lines))
        return EXIT_OK

    return with_redis(run)


CLAIM_LABELS = {
    "ours": "cycles-events",
    "java": "Java service",
    "orphan": "__orphan__ (Java's mark)",
    "unowned": "no owner yet",
    "other": "other owner",
}


def _show_text(report: dict[str, Any]) -> str:
    d = report["delivery"]
    lines = [f"delivery {d.get('delivery_id')}"]
    for name in (
        "status",
        "event_type",
        "attempts",
        "attempted_at",
        "completed_at",
        "response_status",
        "response_time_ms",
        "error_message",
        "next_retry_at",
        "trace_id",
        "replay_of",
    ):
        if name in d:
            lines.append(f"  {name:<22} {d[name]}")
    if report.get("failure_reason"):
        lines.append(f"  {'failure_reason':<22} {report['failure_reason']}")
    queue = report.get("queue")
    where = "none" if queue is None else queue["queue"]
    if queue is not None and "due_at" in queue:
        where += f" (due {queue['due_at']})"
    lines.append(f"  {'queue':<22} {where}")
    if report.get("expires_in_s") is not None:
        lines.append(f"  {'expires_in_s':<22} {report['expires_in_s']}")
    ev = report.get("event")
    lines.append(f"event {d.get('event_id')}" + ("" if ev is not None else " (not found)"))
    for name, value in (ev or {}).items():
        if name != "event_id":
            lines.append(f"  {name:<22} {value}")
    sub = report.get("subscription")
    lines.append(
        f"subscription {d.get('subscription_id')}" + ("" if sub is not None else " (not found)")
    )
    for name, value in (sub or {}).items():
        if name != "subscription_id":
            shown = json.dumps(value) if isinstance(value, dict | list) else value
            lines.append(f"  {name:<22} {shown}")
    return "\n".join(lines)


def cmd_deliveries_show(args: argparse.Namespace) -> int:
    """Show one delivery with its event and subscription."""
    from cycles_events import ops

    async def run(redis: Redis, settings: Settings) -> int:
        report = await ops.show_delivery(redis, args.delivery_id)
        emit(args, report, _show_text(report))
        return EXIT_OK

    return with_redis(run)


ERROR_WIDTH = 60


def _listing_rows(deliveries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    from cycles_events.opsutil import delivery_reason, ellipsize

    return [
        (
            d.get("delivery_id"),
            d.get("attempted_at"),
            d.get("status"),
            d.get("attempts"),
            d.get("event_type"),
            d.get("response_status"),
            delivery_reason(d),
            ellipsize(str(d.get("error_message") or ""), ERROR_WIDTH) or None,
        )
        for d in deliveries
    ]


def cmd_deliveries_list(args: argparse.Namespace) -> int:
    """List a subscription's deliveries, newest first."""
    from cycles_events import ops
    from cycles_events.opsutil import delivery_reason, table, terminal_width

    async def run(redis: Redis, settings: Settings) -> int:
        listing = await ops.list_deliveries(
            redis,
            args.subscription,
            statuses=sorted(args.status),
            since_ms=args.since,
            until_ms=args.until,
            reasons=sorted(set(args.reason)),
            event_types=args.event_type,
            limit=args.limit,
        )
        shown, total = len(listing.deliveries), listing.total
        if listing.deliveries:
            header = ("DELIVERY", "CREATED", "STATUS", "ATTEMPTS", "EVENT_TYPE", "HTTP", "REASON")
            text = table(
                _listing_rows(listing.deliveries),
                (*header, "ERROR"),
                width=terminal_width(sys.stdout),
                flex=("ERROR", "EVENT_TYPE"),
            )
            text += f"\nshowing {shown} of {total} matching deliveries, newest first"
            if shown < total:
                text += f" (--limit {total} shows them all)"
        else:
            text = "no deliveries match"
        if listing.expired:
            text += f"\n({listing.expired} indexed deliveries have expired records)"
        data = {
            "subscription_id": args.subscription,
            "count": shown,
            "total": total,
            "expired_records": listing.expired,
            "deliveries": [{**d, "failure_reason": delivery_reason(d)} for d in listing.deliveries],
        }
        emit(args, data, text)
        return EXIT_OK

    return with_redis(run)
