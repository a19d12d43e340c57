"""The `cycles-events` command line: the daemon, its health check and the operator commands."""

from __future__ import annotations

from collections.abc import Sequence

from cycles_events.cli.common import EXIT_OK, OutputClosed
from cycles_events.cli.daemon import tune_gc
from cycles_events.cli.parser import build_parser, check_arguments

__all__ = ["main", "tune_gc"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    try:
        code: int = args.func(args)
    except OutputClosed:
        return EXIT_OK
    return code
