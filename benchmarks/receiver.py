"""A webhook receiver for the benchmark: records when each event arrives."""

from __future__ import annotations

import sys
import time
from collections import defaultdict

from aiohttp import web

receipts: dict[str, list[float]] = defaultdict(list)


async def hook(request: web.Request) -> web.Response:
    """Accept a delivery; /flaky answers 503 to the first attempt of each event."""
    await request.read()
    now = time.time()
    event_id = request.headers.get("X-Cycles-Event-Id", "")
    seen = receipts[event_id]
    seen.append(now)
    if request.path == "/flaky" and len(seen) == 1:
        return web.Response(status=503)
    return web.Response(status=200)


async def stats(request: web.Request) -> web.Response:
    """Every receipt time, by event id."""
    return web.json_response(receipts)


async def count(request: web.Request) -> web.Response:
    """How many requests arrived in all (cheap to poll)."""
    return web.Response(text=str(sum(len(v) for v in receipts.values())))


async def reset(request: web.Request) -> web.Response:
    """Forget what was received."""
    receipts.clear()
    return web.Response(status=204)


def main() -> None:
    """Serve on the port given as the only argument."""
    app = web.Application()
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_count", count)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/{tail:.*}", hook)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
