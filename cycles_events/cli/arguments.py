"""Argument types: each parses and checks one command-line value, or says why not."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from cycles_events.cli.common import strip_newline

# parser.py imports these, yet they keep their original private names: argparse puts a type's
# __name__ in its error message when the type raises ValueError, and that output must not change.


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


def _duration_arg(value: str) -> float:
    from cycles_events.opsutil import parse_duration_ms

    try:
        ms = parse_duration_ms(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if ms <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0: {value!r}")
    return ms / 1000


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


def _subscription_status_arg(value: str) -> set[str]:
    from cycles_events.ops import SUBSCRIPTION_STATUSES

    names = {v.strip().upper() for v in value.split(",") if v.strip()}
    bad = names - set(SUBSCRIPTION_STATUSES)
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown status {', '.join(sorted(bad)) or value!r} "
            f"(use {', '.join(SUBSCRIPTION_STATUSES)}, comma-separated)"
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
        secret = strip_newline(Path(value).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(
            f"cannot read {value}: {getattr(exc, 'strerror', None) or type(exc).__name__}"
        ) from None
    if not secret:
        raise argparse.ArgumentTypeError(f"{value} is empty")
    return secret
