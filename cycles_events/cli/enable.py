"""`subscriptions enable`: set a subscription ACTIVE again and, with --replay, drain its backlog."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from cycles_events.cli.common import EXIT_OK, emit, fail, with_redis
from cycles_events.cli.replay import (
    dry_run_report,
    hints,
    pace_of,
    plan_line,
    result_report,
    result_status,
    skipped_text,
    write_replays,
)
from cycles_events.config import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from cycles_events.ops import Backlog, Enabled, Selection


SKIPPED = "they are skipped (cycles-events replay --again replays them anyway)"


def _enable_text(res: Enabled) -> str:
    if not res.changed:
        return f"{res.subscription_id} is already ACTIVE with no consecutive failures"
    text = (
        f"{res.subscription_id}: {res.previous_status} -> ACTIVE, consecutive_failures "
        f"{res.previous_failures} -> 0"
    )
    if res.event_id:
        text += f"; saved webhook.resumed event {res.event_id}"
    return text


def _preview_text(res: Enabled) -> str:
    if not res.changed:
        return f"dry run: {res.subscription_id} is already ACTIVE with no consecutive failures"
    text = (
        f"dry run: would enable {res.subscription_id}: {res.previous_status} -> ACTIVE, "
        f"consecutive_failures {res.previous_failures} -> 0"
    )
    if res.previous_status != "ACTIVE":
        text += ", and save a webhook.resumed event"
    return text


def _enable_data(res: Enabled) -> dict[str, Any]:
    return {
        "subscription_id": res.subscription_id,
        "previous_status": res.previous_status,
        "previous_consecutive_failures": res.previous_failures,
        "changed": res.changed,
        "event_id": res.event_id,
    }


def _backlog_text(wanted: Backlog, sel: Selection) -> str:
    """N deliveries that ended FAILED (reasons) since T (where T comes from), oldest first."""
    from cycles_events.models import format_instant

    return (
        f"{len(sel.sources)} deliveries that ended FAILED ({', '.join(sorted(wanted.reasons))}) "
        f"since {format_instant(wanted.ended_since_ms)} ({wanted.since_source}), oldest "
        f"first{skipped_text(sel)}"
    )


def _backlog_data(wanted: Backlog) -> dict[str, Any]:
    from cycles_events.models import format_instant

    return {
        "since": format_instant(wanted.ended_since_ms),
        "since_ms": wanted.ended_since_ms,
        "since_source": wanted.since_source,
        "reasons": sorted(wanted.reasons),
    }


def cmd_subscriptions_enable(args: argparse.Namespace) -> int:
    """Re-enable a subscription as an admin PATCH to ACTIVE does; --replay drains its backlog."""
    from redis.exceptions import RedisError

    from cycles_events import ops
    from cycles_events.connection import UNAVAILABLE
    from cycles_events.models import format_instant

    async def run(redis: Redis, settings: Settings) -> int:
        sub_id = args.subscription_id
        now = ops.now_ms()
        if args.dry_run:
            res = await ops.preview_enable(redis, sub_id)
        else:
            res = await ops.enable_subscription(
                redis, sub_id, event_ttl_s=settings.event_ttl_days * 86400
            )
        data = _enable_data(res)
        if not args.replay:
            if not args.dry_run:
                emit(args, data, _enable_text(res))
            else:
                data.update(changed=False, would_change=res.changed, dry_run=True)
                emit(args, data, _preview_text(res) + "\ndry run: nothing changed")
            return EXIT_OK
        wanted = ops.backlog(
            res.before or {},
            now_ms=now,
            max_age_ms=settings.max_delivery_age_ms,
            extra_reasons=args.reason,
            since_ms=args.since,
        )
        pace = pace_of(args)
        if args.dry_run:
            sel = await ops.select_backlog(redis, sub_id, wanted, dry_run=True)
            sel.inactive.clear()  # it would be enabled first: the replay would not be refused
            replay_data, lines = dry_run_report(sel, pace)
            data.update(changed=False, would_change=res.changed, dry_run=True)
            data["replay"] = {**replay_data, **_backlog_data(wanted)}
            lines.append(_preview_text(res))
            lines.append(f"dry run: would replay {_backlog_text(wanted, sel)}")
            if pace is not None:
                lines.append(plan_line(pace, len(sel.sources)))
            lines.append("dry run: nothing changed")
            emit(args, data, "\n".join(lines + hints(sel, again=SKIPPED)))
            return EXIT_OK
        data["dry_run"] = False
        # once enabled, a plain rerun would look 24h back: the same bound keeps the same backlog
        rerun = f"the same command with --since {format_instant(wanted.ended_since_ms)}"
        failures: tuple[type[BaseException], ...] = (ops.OpsError, RedisError, *UNAVAILABLE)
        try:
            sel = await ops.select_backlog(redis, sub_id, wanted)
        except failures as exc:
            # it is enabled: say so before saying why nothing was replayed
            emit(args, {**data, "replay": None}, _enable_text(res))
            why = str(exc) if isinstance(exc, ops.OpsError) else f"{type(exc).__name__}: {exc}"
            return fail(
                f"{sub_id} is ACTIVE, but its backlog was not replayed ({why}); run {rerun} again"
            )
        head = [_enable_text(res), f"replaying {_backlog_text(wanted, sel)}"]
        if pace is not None:
            head[-1] += f", at {pace.describe()}"
        result = await write_replays(redis, settings, sel, pace, show_pace=pace is not None)
        replay_data, lines = result_report(sel, result, pace, again=SKIPPED)
        data["replay"] = {**replay_data, **_backlog_data(wanted)}
        emit(args, data, "\n".join(head + lines))
        return result_status(result, len(sel.sources), rerun)

    return with_redis(run)
