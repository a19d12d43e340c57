"""The argument parser: every subcommand, its options and help texts, and their cross-checks."""

from __future__ import annotations

import argparse

from cycles_events import __version__
from cycles_events.cli.arguments import (
    _delivery_id,
    _duration_arg,
    _positive_int,
    _rate_arg,
    _secret_file,
    _signature,
    _status_arg,
    _subscription_id,
    _time_arg,
)
from cycles_events.cli.daemon import cmd_healthcheck, cmd_run
from cycles_events.cli.groups import (
    TIME_HELP,
    add_deliveries,
    add_quarantine,
    add_subscriptions,
    check_enable,
    subcommand,
)
from cycles_events.cli.inspect import cmd_stats
from cycles_events.cli.replay import cmd_replay
from cycles_events.cli.secrets import (
    cmd_encrypt_secret,
    cmd_keygen,
    cmd_receiver_secret,
    cmd_verify,
)

REPLAY_DESCRIPTION = """\
Replay deliveries: each replay is a NEW PENDING delivery of the same event to the same
subscription (new del_<hex> id, attempts 0), written exactly as the admin server's replay
writes it, and pushed onto dispatch:pending. Receivers deduplicate on X-Cycles-Event-Id.

Give delivery ids, or --subscription with filters (by default only FAILED deliveries).
The subscription must be ACTIVE (a --dry-run previews anyway and says so). Nothing is
written when a check fails.

Order: --subscription replays oldest first (by creation time, the score in
deliveries:{id}); explicit ids are replayed in the order given, or oldest first with --ramp.
The replays are pushed onto dispatch:pending in that order, which the dispatcher takes
first in, first out.

Ramp: --ramp 5m with --rate 50/s starts at max(1/s, rate/10) and rises linearly to the
rate over 5 minutes, so a receiver back from an outage is not hit by the whole backlog at
once. The progress bar (on a terminal) shows the current rate and an ETA that follows the
ramp; --dry-run also prints the planned duration.

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
  cycles-events replay --subscription whsub_0a1b2c3d4e5f6071 --reason http_5xx --rate 50/s --ramp 5m

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

    health = subcommand(
        sub,
        "healthcheck",
        "exit 0 when the local daemon is ready",
        "Ask the local management port (MANAGEMENT_ADDRESS unless it is a wildcard, else "
        "127.0.0.1) for readiness; exit 0 when UP, 1 when DOWN or unreachable. A DOWN "
        "answer names the components that are DOWN; --json prints the daemon's answer "
        "(status and components).",
        "example: cycles-events healthcheck --port 9980 --json",
        cmd_healthcheck,
        json_opt=True,
    )
    health.add_argument("--port", type=int, default=None, help="management port (MANAGEMENT_PORT)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")

    subcommand(
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

    add_deliveries(sub)

    rp = subcommand(
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
    rp.add_argument(
        "--ramp",
        type=_duration_arg,
        default=None,
        metavar="DURATION",
        help="with --rate: start at max(1/s, RATE/10) and rise linearly to RATE over DURATION "
        "(90s, 5m), oldest first",
    )
    rp.add_argument(
        "--dry-run",
        action="store_true",
        help="count and list, change nothing (with --ramp, also the planned duration)",
    )
    rp.add_argument("--again", action="store_true", help="also replay sources already replayed")
    add_quarantine(sub)
    add_subscriptions(sub)

    subcommand(
        sub,
        "keygen",
        "print a new WEBHOOK_SECRET_ENCRYPTION_KEY",
        "Print a new random AES-256 key, Base64 (32 bytes), for WEBHOOK_SECRET_ENCRYPTION_KEY.",
        "example: cycles-events keygen > encryption.key",
        cmd_keygen,
        json_opt=True,
    )
    subcommand(
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
    subcommand(
        sub,
        "receiver-secret",
        "the secret a Standard Webhooks receiver configures",
        "Read a subscription's signing secret on stdin (as stored: plaintext, or enc: with the "
        "configured key) and print the whsec_ + standard Base64 form that the Standard Webhooks "
        "libraries (standardwebhooks, svix) expect, for the webhook-signature header sent when "
        "WEBHOOK_STANDARD_HEADERS_ENABLED or the subscription's metadata.standard_webhooks is "
        "on. The admin's whsec_ secrets are base64url, which those libraries do not read as such.",
        "example: redis-cli GET webhook:secret:whsub_0a1b2c3d4e5f6071 | cycles-events "
        "receiver-secret",
        cmd_receiver_secret,
        json_opt=True,
    )
    vf = subcommand(
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
    if args.command == "subscriptions" and args.action == "enable":
        check_enable(parser, args)
    if args.command != "replay":
        return
    if args.ramp is not None and args.rate is None:
        parser.error("replay: --ramp needs --rate (the rate it rises to)")
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
