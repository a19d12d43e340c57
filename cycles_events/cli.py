"""The `cycles-events` command line: the daemon, its health check and the operator commands."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import json
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cycles_events import __version__, logs
from cycles_events.config import ConfigError, Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from cycles_events.ops import Selection

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PROG = "cycles-events"
GC_THRESHOLD = 20_000  # allocations between young-generation collections (Python: 700)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"cycles-events: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def cmd_run(args: argparse.Namespace) -> int:
    """Run the dispatcher daemon until SIGTERM/SIGINT."""
    from cycles_events.app import App

    settings = _settings()
    logs.configure(settings.log_level)

    async def main() -> int:
        app = App(settings)
        tune_gc()
        return await app.run()

    return asyncio.run(main())


def tune_gc() -> None:
    """Collect less often, and never scan what start-up built (the daemon's process only).

    A delivery allocates dozens of short-lived containers, nearly all freed by reference
    counting, yet at the default threshold (700) the young generation was collected every
    couple of dozen deliveries and the whole heap every few thousand: together about a tenth
    of the dispatcher's CPU.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when the local daemon's readiness is UP."""
    port = args.port
    if port is None:
        port = _settings().management_port
    url = f"http://127.0.0.1:{port}/actuator/health/readiness"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            body = json.loads(resp.read() or b"{}")
            up = resp.status == 200 and body.get("status") == "UP"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"cycles-events: readiness check failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not up:
        print("cycles-events: readiness is DOWN", file=sys.stderr)
    return EXIT_OK if up else EXIT_FAILED


# --- operator commands -------------------------------------------------------------------------


def _fail(message: str) -> int:
    """One clear line on stderr; exit status 1."""
    print(f"{PROG}: {message}", file=sys.stderr)
    return EXIT_FAILED


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print `data` as JSON with --json, else the human-readable `text`."""
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif text:
        print(text)


def _redis_target(settings: Settings) -> str:
    """host:port of the configured Redis, never its password."""
    url = settings.redis_url.get_secret_value()
    if url:
        try:
            parts = urlsplit(url)
            return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        except ValueError:
            return "(invalid REDIS_URL)"
    return f"{settings.redis_host}:{settings.redis_port}"


RedisCommand = Callable[["Redis", Settings], Awaitable[int]]


def _with_redis(command: RedisCommand) -> int:
    """Run an async operator command with a Redis client; failures become one line, exit 1."""
    from redis.exceptions import RedisError

    from cycles_events.app import redis_client
    from cycles_events.ops import OpsError
    from cycles_events.store import UNAVAILABLE

    settings = _settings()

    async def runner() -> int:
        client = redis_client(settings)
        try:
            return await command(client, settings)
        finally:
            await client.aclose()

    try:
        return asyncio.run(runner())
    except OpsError as exc:
        return _fail(str(exc))
    except UNAVAILABLE as exc:
        return _fail(f"cannot reach Redis at {_redis_target(settings)} ({type(exc).__name__})")
    except RedisError as exc:
        return _fail(f"Redis error at {_redis_target(settings)}: {exc}")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the dispatch queue depths."""
    from cycles_events import keys, ops
    from cycles_events.opsutil import format_age

    async def run(redis: Redis, settings: Settings) -> int:
        st = await ops.stats(redis, ops.now_ms())
        lines = [
            f"pending      {st.pending:>8}   oldest {format_age(st.oldest_pending_age_s)}",
            f"retry        {st.retry:>8}   due now {st.retry_due}, "
            f"due in the next minute {st.retry_due_next_minute}",
            f"processing   {st.processing:>8}",
            f"quarantine   {st.quarantine:>8}   ({keys.FAILED})",
        ]
        _emit(args, st.as_json(), "\n".join(lines))
        return EXIT_OK

    return _with_redis(run)


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
        _emit(args, report, _show_text(report))
        return EXIT_OK

    return _with_redis(run)


def cmd_deliveries_list(args: argparse.Namespace) -> int:
    """List a subscription's deliveries, newest first."""
    from cycles_events import ops
    from cycles_events.opsutil import failure_reason, table

    async def run(redis: Redis, settings: Settings) -> int:
        listing = await ops.list_deliveries(
            redis,
            args.subscription,
            statuses=sorted(args.status),
            since_ms=args.since,
            until_ms=args.until,
            limit=args.limit,
        )
        rows = [
            (
                d.get("delivery_id"),
                d.get("attempted_at"),
                d.get("status"),
                d.get("attempts"),
                d.get("event_type"),
                d.get("response_status"),
                failure_reason(d.get("error_message"))
                if d.get("status") in ("FAILED", "RETRYING")
                else None,
                str(d.get("error_message") or "")[:60] or None,
            )
            for d in listing.deliveries
        ]
        header = ("DELIVERY", "CREATED", "STATUS", "ATTEMPTS", "EVENT_TYPE", "HTTP", "REASON")
        text = table(rows, (*header, "ERROR")) if rows else "no deliveries match"
        if listing.expired:
            text += f"\n({listing.expired} indexed deliveries have expired records)"
        data = {
            "subscription_id": args.subscription,
            "count": len(listing.deliveries),
            "expired_records": listing.expired,
            "deliveries": listing.deliveries,
        }
        _emit(args, data, text)
        return EXIT_OK

    return _with_redis(run)


def _skipped_text(sel: Selection) -> str:
    if not sel.skipped:
        return ""
    parts = ", ".join(f"{k} {v}" for k, v in sorted(sel.skipped.items()))
    return f" (skipped: {parts})"


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay deliveries as new PENDING deliveries of the same events."""
    from cycles_events import ops
    from cycles_events.opsutil import Progress

    async def run(redis: Redis, settings: Settings) -> int:
        if args.delivery_ids:
            sel = await ops.select_by_ids(redis, args.delivery_ids, again=args.again)
        else:
            flt = ops.ReplayFilter(
                statuses=frozenset(args.status),
                since_ms=args.since,
                until_ms=args.until,
                event_types=tuple(args.event_type),
                reasons=frozenset(args.reason),
            )
            sel = await ops.select_by_subscription(redis, args.subscription, flt, again=args.again)
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
            }
            lines = [f"{s.delivery_id}  {s.event_type}" for s in sel.sources]
            lines.append(
                f"dry run: would replay {total} deliveries{_skipped_text(sel)}; nothing changed"
            )
            _emit(args, data, "\n".join(lines))
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
        _emit(args, data, "\n".join(lines))
        if result.error is not None:
            doubt = " ".join(n for _, n in result.in_doubt)
            return _fail(
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

    return _with_redis(run)


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    """List the newest quarantine entries."""
    from cycles_events import keys, ops
    from cycles_events.opsutil import format_ms, table

    async def run(redis: Redis, settings: Settings) -> int:
        total, entries = await ops.quarantine_list(redis, args.limit)
        rows = []
        for e in entries:
            at = e.get("quarantined_at_ms")
            payload = str(e.get("payload") or "").replace("\n", " ")
            rows.append(
                (
                    e.get("delivery_id"),
                    e.get("reason"),
                    format_ms(at) if isinstance(at, int) else None,
                    payload[:50] + ("..." if len(payload) > 50 else ""),
                )
            )
        text = f"{keys.FAILED}: {total} entries"
        if rows:
            text += f" (newest {len(rows)})\n" + table(
                rows, ("DELIVERY", "REASON", "QUARANTINED_AT", "PAYLOAD")
            )
        _emit(args, {"total": total, "entries": entries}, text)
        return EXIT_OK

    return _with_redis(run)


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
        _emit(args, data, text)
        return EXIT_OK

    return _with_redis(run)


def cmd_quarantine_requeue(args: argparse.Namespace) -> int:
    """Put a quarantined delivery id back on dispatch:pending."""
    return _quarantine_take(args, requeue=True)


def cmd_quarantine_drop(args: argparse.Namespace) -> int:
    """Remove a delivery's quarantine entries."""
    return _quarantine_take(args, requeue=False)


def cmd_subscriptions_enable(args: argparse.Namespace) -> int:
    """Re-enable a subscription as an admin PATCH to ACTIVE does."""
    from cycles_events import ops

    async def run(redis: Redis, settings: Settings) -> int:
        res = await ops.enable_subscription(
            redis, args.subscription_id, event_ttl_s=settings.event_ttl_days * 86400
        )
        if not res.changed:
            text = f"{res.subscription_id} is already ACTIVE with no consecutive failures"
        else:
            text = (
                f"{res.subscription_id}: {res.previous_status} -> ACTIVE, consecutive_failures "
                f"{res.previous_failures} -> 0"
            )
            if res.event_id:
                text += f"; saved webhook.resumed event {res.event_id}"
        data = {
            "subscription_id": res.subscription_id,
            "previous_status": res.previous_status,
            "previous_consecutive_failures": res.previous_failures,
            "changed": res.changed,
            "event_id": res.event_id,
        }
        _emit(args, data, text)
        return EXIT_OK

    return _with_redis(run)


def cmd_keygen(args: argparse.Namespace) -> int:
    """Print a new WEBHOOK_SECRET_ENCRYPTION_KEY."""
    from cycles_events.crypto import new_key

    key = new_key()
    _emit(args, {"WEBHOOK_SECRET_ENCRYPTION_KEY": key}, key)
    return EXIT_OK


def _strip_newline(value: str) -> str:
    return value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")


def cmd_encrypt_secret(args: argparse.Namespace) -> int:
    """Encrypt a signing secret read on stdin with the configured key."""
    from cycles_events.crypto import encrypt_secret

    key = _settings().encryption_key
    if key is None:
        return _fail(
            "WEBHOOK_SECRET_ENCRYPTION_KEY is not set (generate one: cycles-events keygen)"
        )
    if sys.stdin.isatty():
        secret = getpass.getpass("signing secret: ")
    else:
        secret = _strip_newline(sys.stdin.read())
    if not secret:
        return _fail("no secret on stdin")
    stored = encrypt_secret(secret, key)
    _emit(args, {"stored_secret": stored}, stored)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """Check an X-Cycles-Signature against a body read on stdin."""
    from cycles_events.crypto import PREFIX, SecretError, decrypt_secret
    from cycles_events.signing import verify

    secret: str = args.secret_file
    if secret.startswith(PREFIX):
        try:
            secret = decrypt_secret(secret, _settings().encryption_key)
        except SecretError as exc:
            return _fail(str(exc))
    body = sys.stdin.buffer.read()
    valid = verify(secret, body, args.signature)
    _emit(
        args,
        {"valid": valid, "body_bytes": len(body)},
        "signature valid" if valid else "signature INVALID",
    )
    return EXIT_OK if valid else EXIT_FAILED


# --- argument types ----------------------------------------------------------------------------


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value!r}")
    return n


def _time_arg(value: str) -> int:
    from cycles_events.opsutil import parse_time_ms

    try:
        return parse_time_ms(value, int(time.time() * 1000))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate_arg(value: str) -> float:
    from cycles_events.opsutil import parse_rate

    try:
        return parse_rate(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _status_arg(value: str) -> set[str]:
    from cycles_events.ops import DELIVERY_STATUSES

    names = {v.strip().upper() for v in value.split(",") if v.strip()}
    if names & {"ANY", "ALL"}:
        return set()
    bad = names - set(DELIVERY_STATUSES)
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown status {', '.join(sorted(bad)) or value!r} "
            f"(use {', '.join(DELIVERY_STATUSES)} or ANY, comma-separated)"
        )
    return names


_DELIVERY_ID = re.compile(r"del_[A-Za-z0-9_-]{1,64}")
_SUBSCRIPTION_ID = re.compile(r"whsub_[A-Za-z0-9_-]{1,64}")
_SIGNATURE = re.compile(r"sha256=[0-9a-fA-F]{64}")


def _delivery_id(value: str) -> str:
    if not _DELIVERY_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"not a delivery id (del_<hex>): {value!r}")
    return value


def _subscription_id(value: str) -> str:
    if not _SUBSCRIPTION_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"not a subscription id (whsub_<hex>): {value!r}")
    return value


def _signature(value: str) -> str:
    if not _SIGNATURE.fullmatch(value.strip()):
        raise argparse.ArgumentTypeError("expected sha256=<64 hex digits>")
    return value.strip()


def _secret_file(value: str) -> str:
    try:
        secret = _strip_newline(Path(value).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(
            f"cannot read {value}: {getattr(exc, 'strerror', None) or type(exc).__name__}"
        ) from None
    if not secret:
        raise argparse.ArgumentTypeError(f"{value} is empty")
    return secret


# --- the parser --------------------------------------------------------------------------------


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


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
