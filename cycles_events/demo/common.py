"""What every part of the demo shares: its error, its options, free ports, ids, progress lines."""

from __future__ import annotations

import secrets
import socket
import sys
from dataclasses import dataclass


class DemoError(Exception):
    """The demo cannot go on; the message says why in one line."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hex16() -> str:
    """16 lower-case hex characters."""
    return secrets.token_hex(8)


@dataclass
class Options:
    """Command-line options of the demo."""

    events: int
    interactive: bool
    timeout_s: float
    hold: bool
    rate: float


def say(message: str) -> None:
    """A progress line on stderr."""
    print(message, file=sys.stderr, flush=True)
