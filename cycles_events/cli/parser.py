"""The argument parser: every subcommand, its options and help texts, and their cross-checks."""

from __future__ import annotations

import argparse
from typing import Any

from cycles_events import __version__
from cycles_events.cli.arguments import (
    _delivery_id,
    _positive_int,
    _rate_arg,
    _secret_file,
    _signature,
    _status_arg,
    _subscription_id,
    _time_arg,
)
from cycles_events.cli.daemon import cmd_healthcheck, cmd_run
from cycles_events.cli.inspect import cmd_deliveries_list, cmd_deliveries_show, cmd_stats
from cycles_events.cli.quarantine import (
    cmd_quarantine_drop,
    cmd_quarantine_list,
    cmd_quarantine_requeue,
)
from cycles_events.cli.replay import cmd_replay
from cycles_events.cli.secrets import cmd_encrypt_secret, cmd_keygen, cmd_verify
from cycles_events.cli.subscriptions import cmd_subscriptions_enable


def _sub(
    sub: Any, name: str, help_text: str, description: str, epilog: str, func: Any, *, json_opt: bool
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if json_opt:
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=func, json=False)
    return p


TIME_HELP = "a duration ago (2h, 30m, 1h30m, 7d), an ISO-8601 instant, epoch ms or 'now'"

REPLAY_DESCRIPTION = """\
Replay deliveries: each replay is a NEW PENDING delivery of the same event to the same
subscription (new del_<hex> id, attempts 0), written exactly as the admin server's replay
writes it, and pushed onto dispatch:pending. Receivers deduplicate on X-Cycles-Event-Id.

Give delivery ids, or --subscription with filters (by default only FAILED deliveries).
The subscription must be ACTIVE. Nothing is written when a check fails.

Resuming: every new delivery records its source in a `replay_of` field. A later run skips
any source that already has a replay, so an interrupted run (Ctrl-C) is resumed by running
the same command again; pass --again to replay such sources once more.

--reason is derived from the delivery's error_message:
  HTTP 4xx -> http_4xx          HTTP 5xx -> http_5xx
  URL blocked... -> ssrf_blocked  Delivery expired... -> stale
  Event not found... -> event_not_found   ...is not valid JSON -> invalid_record
  Subscription not found -> subscription_not_found
  Subscription not active... -> subscription_inactive
  Signing secret unusable... -> secret_error
  no error_message -> none      anything else (timeout, refused, TLS, 3xx) -> transport_error
"""

REPLAY_EPILOG = """\
examples:
  cycles-events replay del_8c4e2f9a0b1d3e57
  cycles-events replay --subscription whsub_0a1b2c3d4e5f6071 --since 2h --reason http_5xx --dry-run
  cycles-events replay --subscription whsub_0a1b2c3d4e5f6071 --status FAILED --rate 50/s

exit status: 0 done, 1 failed (unknown id, inactive subscription, Redis down),
2 bad arguments, 130 interrupted (the output says how far it got)"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from cycles_events.opsutil import REASONS

    parser = argparse.ArgumentParser(
        prog="cycles-events",
        description="Webhook events dispatcher for the Cycles budget stack.",
        epilog="example: REDIS_HOST=redis cycles-events run",
    )
    parser.add_argument("--version", action="version", version=f"cycles-events {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="run the dispatcher daemon",
        description="Run the dispatcher until SIGTERM or SIGINT (settings from the environment).",
        epilog="example: REDIS_HOST=localhost MANAGEMENT_PORT=9980 cycles-events run",
    )
    run.set_defaults(func=cmd_run)

    health = sub.add_parser(
        "healthcheck",
        help="exit 0 when the local daemon is ready",
        description="Ask the local management port for readiness; exit 0 when UP, 1 otherwise.",
        epilog="example: cycles-events healthcheck --port 9980",
    )
    health.add_argument("--port", type=int, default=None, help="management port (MANAGEMENT_PORT)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
    health.set_defaults(func=cmd_healthcheck)

    _sub(
        sub,
        "stats",
        "show dispatch queue depths",
        "Queue depths: pending (and the age of the oldest), retry (due now, due within a "
        "minute), processing and quarantine (dispatch:failed). Redis settings come from the "
        "same environment as the daemon (REDIS_URL or REDIS_HOST/PORT/PASSWORD).",
        "example: REDIS_HOST=redis cycles-events stats --json",
        cmd_stats,
        json_opt=True,
    )

    deliveries = sub.add_parser(
        "deliveries",
        help="inspect deliveries",
        description="Inspect delivery records.",
        epilog="example: cycles-events deliveries list --subscription whsub_0a1b2c3d4e5f6071",
    )
    dsub = deliveries.add_subparsers(dest="action", metavar="ACTION")
    dsub.required = True
    show = _sub(
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
    lst = _sub(
        dsub,
        "list",
        "list a subscription's deliveries",
        "List a subscription's deliveries, newest first (from the deliveries:{id} index, "
        "scored by creation time).",
        "example: cycles-events deliveries list --subscription whsub_0a1b2c3d4e5f6071 "
        "--status FAILED --since 2h --limit 20",
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
    lst.add_argument("--limit", type=_positive_int, default=50, help="at most N (default 50)")

    rp = _sub(
        sub,
        "replay",
        "replay deliveries as new deliveries of the same events",
        REPLAY_DESCRIPTION,
        REPLAY_EPILOG,
        cmd_replay,
        json_opt=True,
    )
    rp.add_argument("delivery_ids", nargs="*", type=_delivery_id, metavar="DELIVERY_ID")
    rp.add_argument(
        "--subscription", type=_subscription_id, help="replay this subscription's deliveries"
    )
    rp.add_argument(
        "--status",
        type=_status_arg,
        default=None,
        help="statuses to replay, comma-separated, or ANY (default FAILED)",
    )
    rp.add_argument(
        "--since", type=_time_arg, default=None, help=f"created at or after: {TIME_HELP}"
    )
    rp.add_argument(
        "--until", type=_time_arg, default=None, help=f"created at or before: {TIME_HELP}"
    )
    rp.add_argument(
        "--event-type",
        action="append",
        default=[],
        help="event type or glob (budget.*); repeatable",
    )
    rp.add_argument(
        "--reason",
        action="append",
        default=[],
        choices=REASONS,
        metavar="REASON",
        help=f"failure reason ({', '.join(REASONS)}); repeatable",
    )
    rp.add_argument("--limit", type=_positive_int, default=None, help="replay at most N")
    rp.add_argument(
        "--rate", type=_rate_arg, default=None, help="at most this many per second (50/s)"
    )
    rp.add_argument("--dry-run", action="store_true", help="count and list, change nothing")
    rp.add_argument("--again", action="store_true", help="also replay sources already replayed")

    quarantine = sub.add_parser(
        "quarantine",
        help="inspect and resolve quarantined deliveries (dispatch:failed)",
        description="Deliveries whose record could not be parsed are quarantined on "
        "dispatch:failed as {delivery_id, reason, quarantined_at_ms, payload}.",
        epilog="example: cycles-events quarantine list",
    )
    qsub = quarantine.add_subparsers(dest="action", metavar="ACTION")
    qsub.required = True
    ql = _sub(
        qsub,
        "list",
        "list the newest entries",
        "List the newest quarantine entries (newest first).",
        "example: cycles-events quarantine list --limit 50 --json",
        cmd_quarantine_list,
        json_opt=True,
    )
    ql.add_argument("--limit", type=_positive_int, default=20, help="at most N (default 20)")
    qr = _sub(
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
    qd = _sub(
        qsub,
        "drop",
        "remove a delivery's quarantine entries",
        "Atomically remove every quarantine entry of the delivery id.",
        "example: cycles-events quarantine drop del_8c4e2f9a0b1d3e57",
        cmd_quarantine_drop,
        json_opt=True,
    )
    qd.add_argument("delivery_id", type=_delivery_id)

    subs = sub.add_parser(
        "subscriptions",
        help="manage subscriptions",
        description="Manage webhook subscriptions.",
        epilog="example: cycles-events subscriptions enable whsub_0a1b2c3d4e5f6071",
    )
    ssub = subs.add_subparsers(dest="action", metavar="ACTION")
    ssub.required = True
    en = _sub(
        ssub,
        "enable",
        "set a subscription ACTIVE again",
        "Do what the admin API's PATCH to ACTIVE does: status ACTIVE, consecutive_failures 0, "
        "updated_at now (an atomic compare-and-set keeping every other field), and save a "
        "webhook.resumed event when the status changed.",
        "example: cycles-events subscriptions enable whsub_0a1b2c3d4e5f6071",
        cmd_subscriptions_enable,
        json_opt=True,
    )
    en.add_argument("subscription_id", type=_subscription_id)

    _sub(
        sub,
        "keygen",
        "print a new WEBHOOK_SECRET_ENCRYPTION_KEY",
        "Print a new random AES-256 key, Base64 (32 bytes), for WEBHOOK_SECRET_ENCRYPTION_KEY.",
        "example: cycles-events keygen > encryption.key",
        cmd_keygen,
        json_opt=True,
    )
    _sub(
        sub,
        "encrypt-secret",
        "encrypt a signing secret for webhook:secret:{id}",
        "Read a signing secret on stdin (one trailing newline is ignored) and print its "
        "enc: form for the configured WEBHOOK_SECRET_ENCRYPTION_KEY.",
        'example: printf %s "$SECRET" | WEBHOOK_SECRET_ENCRYPTION_KEY=... '
        "cycles-events encrypt-secret",
        cmd_encrypt_secret,
        json_opt=True,
    )
    vf = _sub(
        sub,
        "verify",
        "check an X-Cycles-Signature against a body on stdin",
        "Check a signature against the exact body bytes read on stdin; exit 0 when valid, "
        "1 when not. The secret file holds the secret (plaintext, or enc: with the "
        "configured key); one trailing newline is ignored.",
        "example: cycles-events verify --secret-file secret.txt "
        '--signature "sha256=b567...371a" < body.json',
        cmd_verify,
        json_opt=True,
    )
    vf.add_argument("--secret-file", required=True, type=_secret_file, help="file with the secret")
    vf.add_argument("--signature", required=True, type=_signature, help="sha256=<64 hex>")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-argument rules argparse cannot express."""
    if args.command != "replay":
        return
    filters = [
        ("--status", args.status is not None),
        ("--since", args.since is not None),
        ("--until", args.until is not None),
        ("--event-type", bool(args.event_type)),
        ("--reason", bool(args.reason)),
    ]
    if args.delivery_ids and args.subscription:
        parser.error("replay: give delivery ids or --subscription, not both")
    if not args.delivery_ids and not args.subscription:
        parser.error("replay: give delivery ids or --subscription")
    used = [name for name, on in filters if on]
    if args.delivery_ids and used:
        parser.error(f"replay: {', '.join(used)} only apply with --subscription")
    if args.status is None:
        args.status = {"FAILED"}
    if args.since is not None and args.until is not None and args.since > args.until:
        parser.error("replay: --since is after --until")
