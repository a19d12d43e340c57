"""What every part of the demo shares: its error, its options, free ports, ids, progress lines."""

from __future__ import annotations

import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path


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


def _runnable(path: Path) -> str:
    """`path` as a command typed in the current directory (relative when inside it)."""
    try:
        shown = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return str(shown) if "/" in str(shown) else f"./{shown}"


def python_command() -> str:
    """This interpreter, so that a printed command works outside an activated venv too."""
    return _runnable(Path(sys.executable))


def cli_command() -> str:
    """The `cycles-events` command of this environment."""
    script = Path(sys.executable).parent / "cycles-events"
    if script.exists():
        return _runnable(script)
    return f"{python_command()} -m cycles_events.cli"


def hold_command() -> str:
    """How to run the demo again with --hold."""
    direct = f"{python_command()} -m cycles_events.demo --hold"
    makefile = Path("Makefile")
    if makefile.is_file() and "ARGS" in makefile.read_text(errors="replace"):
        return f"make demo ARGS=--hold  (or: {direct})"
    return direct
