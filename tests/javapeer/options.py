"""Options of the Java-protocol peer, as a dataclass and as CLI flags."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, fields


@dataclass
class PeerOptions:
    """Settings of one peer process (each worker is one Java-like instance)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    encryption_key: str = ""  # Base64 of 32 bytes; empty = plaintext secrets only
    recovery_idle_ms: int = 180_000
    recovery_interval_ms: int = 30_000
    recovery_batch: int = 1000
    max_delivery_age_ms: int = 86_400_000
    http_timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    pending_timeout_s: float = 5.0
    retry_poll_ms: int = 5000
    retry_batch: int = 100
    secret_retry_delay_ms: int = 5000
    publisher: bool = True
    publisher_poll_ms: int = 1000
    event_ttl_days: int = 90
    failed_max_len: int = 10_000
    workers: int = 1
    ordering_lock: bool = False
    ordering_lease_ms: int = 60_000
    clock_skew_ms: int = 0
    log: str | None = None  # a file path, "-" for stdout, None for memory only
    name: str = "javapeer"
    die_after_send: int = 0  # exit right after the N-th HTTP answer, before its outcome write
    die_after_blmove: int = 0  # exit right after the N-th BLMOVE, before its claim script
    die_mode: str = "auto"  # exit: os._exit(137); freeze: stop every task; auto: exit in the CLI


_HELP = {
    "redis_url": "Redis URL (redis://host:port/db)",
    "encryption_key": "Base64 AES-256 key for enc: secrets (WEBHOOK_SECRET_ENCRYPTION_KEY)",
    "recovery_idle_ms": "a claim older than this goes back to dispatch:pending",
    "recovery_interval_ms": "how often the processing list is walked",
    "recovery_batch": "entries walked per recovery pass",
    "max_delivery_age_ms": "the stale rule (MAX_DELIVERY_AGE_MS)",
    "http_timeout_s": "whole-request timeout",
    "connect_timeout_s": "connect timeout",
    "pending_timeout_s": "BLMOVE blocking timeout",
    "retry_poll_ms": "retry promotion interval (Java: 5000)",
    "retry_batch": "due retries promoted per poll",
    "secret_retry_delay_ms": "delay before a delivery without a usable secret is tried again",
    "publisher": "run the outbox publisher (--no-publisher leaves staged tasks)",
    "publisher_poll_ms": "outbox poll interval",
    "event_ttl_days": "TTL of saved meta-events",
    "failed_max_len": "cap of dispatch:failed",
    "workers": "async workers, each one Java-like single sender",
    "ordering_lock": "take dispatch:ordering:lock around each send, as Java does",
    "ordering_lease_ms": "lease of dispatch:ordering:lock",
    "clock_skew_ms": "added to this peer's clock (claim times, recovery, retries)",
    "log": "JSON-lines log: a file path or - for stdout",
    "name": "peer name written in each log line",
    "die_after_send": "os._exit(137) right after the N-th HTTP answer, before its outcome",
    "die_after_blmove": "os._exit(137) right after the N-th BLMOVE, before its claim",
    "die_mode": "exit (os._exit(137)), freeze (in-process: stop every task), auto (CLI: exit)",
}


def build_parser() -> argparse.ArgumentParser:
    """The CLI of `python -m tests.javapeer`."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.javapeer",
        description="A Java cycles-server-events v0.1.25.24 protocol peer for tests.",
    )
    defaults = PeerOptions()
    for f in fields(PeerOptions):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=_HELP[f.name]
            )
            continue
        kind = {int: int, float: float}.get(type(default), str)
        parser.add_argument(flag, type=kind, default=default, help=_HELP[f.name])
    return parser


def parse_args(argv: Sequence[str] | None = None) -> PeerOptions:
    """PeerOptions from command-line flags."""
    ns = build_parser().parse_args(argv)
    opts = PeerOptions(**{f.name: getattr(ns, f.name) for f in fields(PeerOptions)})
    if opts.die_mode not in ("auto", "exit", "freeze"):
        raise SystemExit("--die-mode must be auto, exit or freeze")
    if opts.die_mode == "auto":
        opts.die_mode = "exit"
    if opts.workers < 1:
        raise SystemExit("--workers must be at least 1")
    return opts


def to_args(opts: PeerOptions) -> list[str]:
    """The CLI flags that reproduce the options (for starting a peer process)."""
    args: list[str] = []
    for f in fields(PeerOptions):
        value = getattr(opts, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            args.extend([flag, str(value)])
    return args
