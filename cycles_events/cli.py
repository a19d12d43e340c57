"""The `cycles-events` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from cycles_events import __version__, logs
from cycles_events.config import ConfigError, Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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
        return await App(settings).run()

    return asyncio.run(main())


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
