"""The parsers of the command groups: deliveries, quarantine and subscriptions."""

from __future__ import annotations

import argparse
from typing import Any

from cycles_events.cli.arguments import (
    _delivery_id,
    _duration_arg,
    _positive_int,
    _rate_arg,
    _status_arg,
    _subscription_id,
    _subscription_status_arg,
    _time_arg,
)
from cycles_events.cli.enable import cmd_subscriptions_enable
from cycles_events.cli.inspect import cmd_deliveries_list, cmd_deliveries_show
from cycles_events.cli.quarantine import (
    cmd_quarantine_drop,
    cmd_quarantine_list,
    cmd_quarantine_requeue,
)
from cycles_events.cli.subscriptions import cmd_subscriptions_list, cmd_subscriptions_show

TIME_HELP = "a duration ago (2h, 30m, 1h30m, 7d), an ISO-8601 instant, epoch ms or 'now'"

ENABLE_DESCRIPTION = """\
Do what the admin API's PATCH to ACTIVE does: status ACTIVE, consecutive_failures 0,
updated_at now (an atomic compare-and-set keeping every other field), and save a
webhook.resumed event when the status changed.

--replay then drains the backlog: the deliveries that ended FAILED while the subscription
was not active (error_message "Subscription not active: ...", reason subscription_inactive;
--reason adds others, e.g. http_5xx after an outage), oldest first, as `replay` writes
them (new PENDING deliveries; sources already replayed are skipped, so running the same
command again resumes an interrupted drain). With --rate and --ramp the rate starts at
max(1/s, RATE/10) and rises linearly to RATE. The progress bar (on a terminal) shows the
current rate and an ETA that follows the ramp; Ctrl-C stops between two batches and exits
130, saying how far it got.

Which failures: those that ended (completed_at) at or after --since. By default, when the
subscription stopped being ACTIVE, as its record says before enabling: the earlier of
updated_at and last_failure_at, and no earlier than MAX_DELIVERY_AGE_MS (24h) ago, which
is also the default when the record has neither or is ACTIVE already.

--dry-run changes nothing at all: it neither enables nor replays, and prints what it would
do, the count and the planned duration.
"""

ENABLE_EPILOG = """\
examples:
  cycles-events subscriptions enable whsub_0a1b2c3d4e5f6071
  cycles-events subscriptions enable whsub_0a1b2c3d4e5f6071 --replay --rate 50/s --ramp 5m \\
      --dry-run
  cycles-events subscriptions enable whsub_0a1b2c3d4e5f6071 --replay --rate 50/s --ramp 5m \\
      --reason http_5xx --since 3h

exit status: 0 done, 1 failed (unknown id, Redis down), 2 bad arguments,
130 the replay was interrupted (the output says how far it got)"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps a one-paragraph description to the terminal; keeps examples as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text or text.startswith("example"):
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def subcommand(
    sub: Any, name: str, help_text: str, description: str, epilog: str, func: Any, *, json_opt: bool
) -> argparse.ArgumentParser:
    """A subcommand whose help keeps its line breaks, with --json when `json_opt`."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    if json_opt:
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=func, json=False)
    return p


def add_deliveries(sub: Any) -> None:
    """`deliveries show` and `deliveries list`."""
    from cycles_events.opsutil import REASONS

    deliveries = sub.add_parser(
        "deliveries",
        help="inspect deliveries",
        description="Inspect delivery records.",
        epilog="example: cycles-events deliveries list --subscription whsub_0a1b2c3d4e5f6071",
    )
    dsub = deliveries.add_subparsers(dest="action", metavar="ACTION")
    dsub.required = True
    show = subcommand(
        dsub,
        "show",
        "show one delivery, its event and its subscription",
        "Show a delivery record, its failure reason and queue position, a summary of its "
        "event and of its subscription (header values and the secret are masked).",
        "example: cycles-events deliveries show del_8c4e2f9a0b1d3e57",
        cmd_deliveries_show,
        json_opt=True,
    )
    show.add_argument("delivery_id", type=_delivery_id, help="delivery id (del_<hex>)")
    lst = subcommand(
        dsub,
        "list",
        "list a subscription's deliveries",
        "List a subscription's deliveries, newest first (from the deliveries:{id} index, "
        "scored by creation time), filtered as replay --subscription filters them. The last "
        "line says how many of the matching deliveries are shown (N of TOTAL: the whole window "
        "is read to count them, about 1 s per 50000 deliveries, so bound it with --since on "
        "a very busy subscription); --json adds each row's failure_reason.",
        "example: cycles-events deliveries list --subscription whsub_0a1b2c3d4e5f6071 "
        "--status FAILED --reason http_5xx --since 2h --limit 20",
        cmd_deliveries_list,
        json_opt=True,
    )
    lst.add_argument("--subscription", required=True, type=_subscription_id, help="whsub_<hex>")
    lst.add_argument(
        "--status", type=_status_arg, default=set(), help="PENDING, RETRYING, SUCCESS, FAILED"
    )
    lst.add_argument(
        "--since", type=_time_arg, default=None, help=f"created at or after: {TIME_HELP}"
    )
    lst.add_argument(
        "--until", type=_time_arg, default=None, help=f"created at or before: {TIME_HELP}"
    )
    lst.add_argument(
        "--event-type",
        action="append",
        default=[],
        help="event type or glob (budget.*); repeatable",
    )
    lst.add_argument(
        "--reason",
        action="append",
        default=[],
        choices=REASONS,
        metavar="REASON",
        help="failure reason, as replay --reason (see replay --help); repeatable",
    )
    lst.add_argument("--limit", type=_positive_int, default=50, help="at most N (default 50)")


def add_quarantine(sub: Any) -> None:
    """`quarantine list`, `requeue` and `drop`."""
    quarantine = sub.add_parser(
        "quarantine",
        help="inspect and resolve quarantined deliveries (dispatch:failed)",
        description="Deliveries whose record could not be parsed are quarantined on "
        "dispatch:failed as {delivery_id, reason, quarantined_at_ms, payload}.",
        epilog="example: cycles-events quarantine list",
    )
    qsub = quarantine.add_subparsers(dest="action", metavar="ACTION")
    qsub.required = True
    ql = subcommand(
        qsub,
        "list",
        "list the newest entries",
        "List the newest quarantine entries (newest first).",
        "example: cycles-events quarantine list --limit 50 --json",
        cmd_quarantine_list,
        json_opt=True,
    )
    ql.add_argument("--limit", type=_positive_int, default=20, help="at most N (default 20)")
    qr = subcommand(
        qsub,
        "requeue",
        "push a quarantined id back onto dispatch:pending",
        "Atomically remove the delivery's quarantine entries and LPUSH its id onto "
        "dispatch:pending. Fix the delivery record first, or it is quarantined again.",
        "example: cycles-events quarantine requeue del_8c4e2f9a0b1d3e57",
        cmd_quarantine_requeue,
        json_opt=True,
    )
    qr.add_argument("delivery_id", type=_delivery_id)
    qd = subcommand(
        qsub,
        "drop",
        "remove a delivery's quarantine entries",
        "Atomically remove every quarantine entry of the delivery id.",
        "example: cycles-events quarantine drop del_8c4e2f9a0b1d3e57",
        cmd_quarantine_drop,
        json_opt=True,
    )
    qd.add_argument("delivery_id", type=_delivery_id)


def add_subscriptions(sub: Any) -> None:
    """`subscriptions list`, `show` and `enable`."""
    from cycles_events.opsutil import REASONS

    subs = sub.add_parser(
        "subscriptions",
        help="manage subscriptions",
        description="Manage webhook subscriptions.",
        epilog="example: cycles-events subscriptions show whsub_0a1b2c3d4e5f6071",
    )
    ssub = subs.add_subparsers(dest="action", metavar="ACTION")
    ssub.required = True
    sl = subcommand(
        ssub,
        "list",
        "list subscriptions: status, failures, last success and failure",
        "List the subscriptions of the admin's index (webhooks:_all and webhooks:__system__, "
        "or webhooks:{tenant} with --tenant), by tenant then id: status, consecutive "
        "failures / disable_after_failures, last success and failure, URL (without "
        "user-info or query).",
        "examples:\n  cycles-events subscriptions list --status DISABLED,PAUSED\n"
        "  cycles-events subscriptions list --tenant acme --json",
        cmd_subscriptions_list,
        json_opt=True,
    )
    sl.add_argument("--tenant", default=None, help="only this tenant's subscriptions")
    sl.add_argument(
        "--status",
        type=_subscription_status_arg,
        default=set(),
        help="ACTIVE, PAUSED, DISABLED, comma-separated",
    )
    sl.add_argument("--limit", type=_positive_int, default=100, help="at most N (default 100)")
    ss = subcommand(
        ssub,
        "show",
        "show a subscription and what its deliveries are doing",
        "Show a subscription (header values and the secret masked, the URL without user-info "
        "or query), its consecutive failures and last success and failure, and its "
        "deliveries created since --since (default MAX_DELIVERY_AGE_MS, 24h: older ones "
        "have all finished): counts by status, failures by reason, the last failure, and "
        "where the waiting ones are queued (pending, retry, processing = in flight) when the "
        "queues are short enough to read whole. A PAUSED or DISABLED subscription's "
        "deliveries end FAILED (subscription_inactive): replay them once it is ACTIVE again.",
        "example: cycles-events subscriptions show whsub_0a1b2c3d4e5f6071 --since 1h",
        cmd_subscriptions_show,
        json_opt=True,
    )
    ss.add_argument("subscription_id", type=_subscription_id)
    ss.add_argument(
        "--since", type=_time_arg, default=None, help=f"deliveries created since: {TIME_HELP}"
    )
    en = subcommand(
        ssub,
        "enable",
        "set a subscription ACTIVE again (--replay: and drain its backlog)",
        ENABLE_DESCRIPTION,
        ENABLE_EPILOG,
        cmd_subscriptions_enable,
        json_opt=True,
    )
    en.add_argument("subscription_id", type=_subscription_id)
    en.add_argument(
        "--replay",
        action="store_true",
        help="then replay the deliveries that ended FAILED while it was not active "
        "(subscription_inactive), oldest first",
    )
    en.add_argument(
        "--rate", type=_rate_arg, default=None, help="with --replay: at most this many per second"
    )
    en.add_argument(
        "--ramp",
        type=_duration_arg,
        default=None,
        metavar="DURATION",
        help="with --replay and --rate: start at max(1/s, RATE/10) and rise linearly to RATE "
        "over DURATION (90s, 5m)",
    )
    en.add_argument(
        "--reason",
        action="append",
        default=[],
        choices=REASONS,
        metavar="REASON",
        help="with --replay: also replay failures of this reason (http_5xx, transport_error, "
        "...; see replay --help); repeatable",
    )
    en.add_argument(
        "--since",
        type=_time_arg,
        default=None,
        help="with --replay: deliveries that ended FAILED at or after this time (default: "
        f"when it stopped being ACTIVE, see above): {TIME_HELP}",
    )
    en.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be enabled and replayed (count, planned duration); change nothing",
    )


def check_enable(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`subscriptions enable`: the replay options only with --replay, --ramp with --rate."""
    used = [
        name
        for name, on in (
            ("--rate", args.rate is not None),
            ("--ramp", args.ramp is not None),
            ("--reason", bool(args.reason)),
            ("--since", args.since is not None),
        )
        if on
    ]
    if used and not args.replay:
        parser.error(f"subscriptions enable: {', '.join(used)} only apply with --replay")
    if args.ramp is not None and args.rate is None:
        parser.error("subscriptions enable: --ramp needs --rate (the rate it rises to)")
