"""`make demo`: a throwaway Redis, a local receiver and the daemon, fed in the admin's format."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from cycles_events.demo.common import DemoError, Options, python_command, say
from cycles_events.demo.processes import Processes
from cycles_events.demo.receiver import DemoReceiver
from cycles_events.demo.run import run_demo

__all__ = ["main"]


async def main_async(opts: Options, procs: Processes) -> int:
    """Run the demo; Ctrl-C or SIGTERM cancels it, and every process is stopped either way."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopping = False

    def on_signal() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    receiver = DemoReceiver({})
    try:
        return await run_demo(opts, procs, receiver)
    except asyncio.CancelledError:
        if not stopping:
            raise
        say("interrupted: stopping the demo")
        return 130
    except DemoError as exc:
        say(f"demo failed: {exc}")
        return 1
    finally:
        await receiver.stop()
        stopped = procs.stop_all()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        say(f"stopped: {', '.join(stopped) or 'nothing'}, local receiver; temp files removed")


def parse_args(argv: Sequence[str] | None) -> Options:
    """Options from the command line and DEMO_* variables."""
    fast = os.environ.get("DEMO_FAST", "").lower() in ("1", "true", "yes")
    parser = argparse.ArgumentParser(
        prog=f"{python_command()} -m cycles_events.demo",
        description="Start a throwaway redis-server, a local receiver and the daemon, push "
        "events the way the admin server does and summarise what happened.",
        epilog="example: make demo ARGS='--no-tty --events 100'   (or: "
        f"{python_command()} -m cycles_events.demo --no-tty --events 100)",
    )
    parser.add_argument(
        "--events", type=int, default=int(os.environ.get("DEMO_EVENTS", 120 if fast else 300))
    )
    parser.add_argument("--no-tty", action="store_true", help="plain output, no progress bar")
    parser.add_argument("--timeout", type=float, default=25.0, help="seconds to wait for results")
    parser.add_argument("--hold", action="store_true", help="keep everything up until Ctrl-C")
    parser.add_argument("--rate", type=float, default=100.0, help="events pushed per second")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be at least 1")
    if not args.rate > 0:
        parser.error("--rate must be positive")
    interactive = not (args.no_tty or fast) and sys.stderr.isatty()
    return Options(args.events, interactive, args.timeout, args.hold, args.rate)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m cycles_events.demo`."""
    opts = parse_args(argv)
    procs = Processes()
    try:
        return asyncio.run(main_async(opts, procs))
    except KeyboardInterrupt:
        return 130
    finally:
        procs.stop_all(grace_s=3.0)
