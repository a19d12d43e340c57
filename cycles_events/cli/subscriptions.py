"""The `subscriptions` commands: list and show (enable is in enable.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from cycles_events.cli.common import EXIT_OK, emit, with_redis
from cycles_events.config import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

INACTIVE_HINT = (
    "{status}: its deliveries end FAILED (Subscription not active: {status}, reason "
    "subscription_inactive); once it is ACTIVE again (cycles-events subscriptions enable "
    "{id}), replay them: cycles-events replay --subscription {id} --reason "
    "subscription_inactive"
)


def _ago(value: Any, now_ms: int) -> str | None:
    """How long ago an instant was (3m04s ago), or None when it is not one."""
    from cycles_events.models import parse_instant_ms
    from cycles_events.opsutil import format_age

    at = parse_instant_ms(value)
    return None if at is None else f"{format_age((now_ms - at) / 1000)} ago"


def _when(value: Any, now_ms: int) -> str:
    """An instant with its age: 2026-11-22T08:15:30Z (3m04s ago), or '-'."""
    ago = _ago(value, now_ms)
    if ago is None:
        return "-" if value is None else str(value)
    return f"{value} ({ago})"


def cmd_subscriptions_list(args: argparse.Namespace) -> int:
    """List the subscriptions with their status and failure counters."""
    from cycles_events import ops
    from cycles_events.opsutil import table, terminal_width

    async def run(redis: Redis, settings: Settings) -> int:
        found = await ops.list_subscriptions(
            redis, tenant=args.tenant, statuses=sorted(args.status), limit=args.limit
        )
        now = ops.now_ms()
        rows = [
            (
                r["subscription_id"],
                r["tenant_id"],
                r["status"],
                f"{r['consecutive_failures'] or 0}/{r['disable_after_failures'] or '-'}",
                _ago(r["last_success_at"], now),
                _ago(r["last_failure_at"], now),
                r["url"],
            )
            for r in found.rows
        ]
        header = ("SUBSCRIPTION", "TENANT", "STATUS", "FAILURES", "SUCCEEDED", "FAILED")
        if rows:
            text = table(
                rows,
                (*header, "URL"),
                width=terminal_width(sys.stdout),
                flex=("URL", "TENANT"),
            )
            text += f"\nshowing {len(rows)} of {found.total} subscriptions"
            if len(rows) < found.total:
                text += f" (--limit {found.total} shows them all)"
            text += "\nFAILURES = consecutive failures / disable_after_failures"
        else:
            text = "no subscriptions match"
        if found.missing:
            text += f"\n({found.missing} indexed subscription ids have no webhook:{{id}} record)"
        data = {
            "count": len(found.rows),
            "total": found.total,
            "missing_records": found.missing,
            "subscriptions": found.rows,
        }
        emit(args, data, text)
        return EXIT_OK

    return with_redis(run)


def _show_text(report: dict[str, Any], now_ms: int) -> str:
    from cycles_events.ops import QUEUE_SCAN_MAX
    from cycles_events.opsutil import ellipsize

    sub_id = report["subscription_id"]
    sub = report["subscription"]
    lines = [f"subscription {sub_id}" + ("" if sub is not None else " (record not found)")]
    for name, value in (sub or {}).items():
        if name == "subscription_id":
            continue
        if name in ("last_success_at", "last_failure_at", "created_at", "updated_at"):
            value = _when(value, now_ms)
        elif isinstance(value, dict | list):
            value = json.dumps(value)
        lines.append(f"  {name:<22} {value}")
    d = report["deliveries"]
    window = report["window"]
    lines.append(
        f"deliveries created since {window['since']}: {d['in_window']} "
        f"(of {d['indexed_total']} in deliveries:{sub_id})"
    )
    lines.append(f"  {'by status':<22} " + ", ".join(f"{k} {v}" for k, v in d["by_status"].items()))
    reasons = [
        f"{reason} {sum(c.values())} ({', '.join(f'{s} {n}' for s, n in c.items())})"
        for reason, c in d["failures_by_reason"].items()
    ]
    lines.append(f"  {'failures by reason':<22} {', '.join(reasons) or 'none'}")
    queued = d["queued"]
    if queued is None:
        where = f"not looked up (a queue or the backlog holds over {QUEUE_SCAN_MAX} ids)"
    else:
        where = (
            f"dispatch:pending {queued['pending']}, dispatch:retry {queued['retry']}, "
            f"dispatch:processing {queued['processing']} (in flight), "
            f"in no queue {queued['not_queued']}"
        )
    lines.append(f"  {'waiting deliveries':<22} {where}")
    if report.get("concurrency_limit"):
        lines.append(
            f"  {'in-flight limit':<22} {report['concurrency_limit']} (adaptive, held down)"
        )
    last = d["last_failure"]
    if last is not None:
        error = ellipsize(str(last.get("error_message") or last["reason"]), 80)
        lines.append(
            f"  {'last failure':<22} {last['delivery_id']} ({last['status']}, created "
            f"{_when(last['created_at'], now_ms)}): {error}"
        )
    if d["expired_records"]:
        lines.append(f"  {'expired records':<22} {d['expired_records']}")
    status = (sub or {}).get("status")
    if status in ("PAUSED", "DISABLED"):
        lines.append("warning: " + INACTIVE_HINT.format(status=status, id=sub_id))
    return "\n".join(lines)


def cmd_subscriptions_show(args: argparse.Namespace) -> int:
    """Show one subscription, its counters and what its deliveries are doing."""
    from cycles_events import ops

    async def run(redis: Redis, settings: Settings) -> int:
        now = ops.now_ms()
        since = args.since if args.since is not None else now - settings.max_delivery_age_ms
        report = await ops.show_subscription(
            redis, args.subscription_id, since_ms=since, until_ms=now
        )
        emit(args, report, _show_text(report, now))
        return EXIT_OK

    return with_redis(run)
