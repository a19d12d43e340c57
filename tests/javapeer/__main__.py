"""`python -m tests.javapeer`: run the Java-protocol peer as its own process."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from tests.javapeer.options import parse_args
from tests.javapeer.peer import JavaPeer


def main(argv: Sequence[str] | None = None) -> int:
    """Run the peer until SIGTERM/SIGINT; 0 on a clean stop."""
    options = parse_args(argv)
    if options.log is None:
        options.log = "-"
    try:
        peer = JavaPeer(options)
    except ValueError as exc:  # a bad encryption key: refuse to start, as Java does
        print(f"javapeer: {exc}", file=sys.stderr)
        return 2
    asyncio.run(peer.run_until_signalled())
    return 0


if __name__ == "__main__":
    sys.exit(main())
