"""The benchmark's webhook receiver, a process of its own: records when each request arrives.

Paths (any other path is a plain fast 200):
  /flaky        503 to the first attempt of each event, 200 after
  /slow/<ms>    answers after <ms> milliseconds (goal 4: 50 ms)
  /hold/<ms>    answers after <ms> milliseconds, counted in a gauge of requests held open and
                not keyed by event (the fleet sweep keeps thousands in flight this way)
  /bulk         only counted, with its arrival time (the backlog: events are shared)
  /overload/<n>/<ms>
                a receiver that breaks above n at once: a request that arrives while fewer
                than n are at work on that path is put to work and answered 200 after <ms>
                milliseconds (its receipt, keyed by event, is the time of that 200); one that
                arrives while n or more are at work answers 503 after 3 x <ms> (slower, and
                not counted as at work); /_overload counts both, per path
Control: GET /_count, /_stats, /_sample?path=, /_gauge, /_marks?total=, /_overload;
POST /_reset.
"""

from __future__ import annotations

import asyncio
import base64
import resource
import sys
import time
from array import array
from collections import defaultdict

from aiohttp import web

receipts: dict[str, list[float]] = defaultdict(list)
samples: dict[str, dict[str, object]] = {}
bulk = array("d")
gauge = {"in_flight": 0, "completed": 0, "arrived": 0}
OVERLOAD_SLOWER = 3  # a 503 of /overload takes this many times the path's <ms>
overloaded: dict[str, dict[str, int]] = defaultdict(
    lambda: {"working": 0, "refusing": 0, "ok": 0, "refused": 0, "peak": 0}
)


def _ms(path: str, prefix: str) -> float:
    return float(path[len(prefix) :].split("/", 1)[0]) / 1000


async def hook(request: web.Request) -> web.Response:
    """Accept a request; what happens next depends on the path (see the module's doc)."""
    body = await request.read()
    now = time.time()
    path = request.path
    gauge["arrived"] += 1
    if path.startswith("/hold/"):
        gauge["in_flight"] += 1
        try:
            await asyncio.sleep(_ms(path, "/hold/"))
        finally:
            gauge["in_flight"] -= 1
        gauge["completed"] += 1
        return web.Response(status=200)
    if path == "/bulk":
        bulk.append(now)
        return web.Response(status=200)
    if path.startswith("/overload/"):
        return await overload(request, path)
    if path not in samples:
        samples[path] = {
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": base64.b64encode(body).decode(),
        }
    seen = receipts[request.headers.get("X-Cycles-Event-Id", "")]
    seen.append(now)
    if path == "/flaky" and len(seen) == 1:
        return web.Response(status=503)
    if path.startswith("/slow/"):
        await asyncio.sleep(_ms(path, "/slow/"))
    return web.Response(status=200)


async def overload(request: web.Request, path: str) -> web.Response:
    """/overload/<n>/<ms>: 200 after <ms> while fewer than n are at work, else 503, slower."""
    limit, ms = path.split("/")[2:4]
    delay = float(ms) / 1000
    state = overloaded[path]
    state["peak"] = max(state["peak"], state["working"] + state["refusing"] + 1)
    if state["working"] >= int(limit):
        state["refusing"] += 1
        try:
            await asyncio.sleep(OVERLOAD_SLOWER * delay)
        finally:
            state["refusing"] -= 1
        state["refused"] += 1
        return web.Response(status=503)
    state["working"] += 1
    try:
        await asyncio.sleep(delay)
    finally:
        state["working"] -= 1
    state["ok"] += 1
    receipts[request.headers.get("X-Cycles-Event-Id", "")].append(time.time())
    return web.Response(status=200)


async def overload_counts(request: web.Request) -> web.Response:
    """Per /overload path: at work and refusing now, 200s and 503s so far, the most open."""
    return web.json_response(overloaded)


async def stats(request: web.Request) -> web.Response:
    """Every receipt time of the keyed paths, by event id."""
    return web.json_response(receipts)


async def count(request: web.Request) -> web.Response:
    """How many requests arrived since the last reset, on every path (cheap to poll)."""
    return web.Response(text=str(gauge["arrived"]))


async def sample(request: web.Request) -> web.Response:
    """The first request seen on a path: its headers and body (the raw loop copies it)."""
    got = samples.get(request.query.get("path", "/hook"))
    return web.json_response(got, status=200 if got else 404)


async def held(request: web.Request) -> web.Response:
    """Requests held open on /hold paths right now, and how many were answered."""
    return web.json_response(gauge)


async def marks(request: web.Request) -> web.Response:
    """Arrival times on /bulk: the first, and that of each tenth of `total`."""
    total = int(request.query["total"])
    tenths = [bulk[min(len(bulk), total * k // 10) - 1] for k in range(1, 11)] if bulk else []
    return web.json_response({"count": len(bulk), "first": bulk[0] if bulk else 0, "at": tenths})


async def reset(request: web.Request) -> web.Response:
    """Forget what was received."""
    receipts.clear()
    samples.clear()
    del bulk[:]
    overloaded.clear()
    gauge.update(arrived=0, completed=0)
    return web.Response(status=204)


def main() -> None:
    """Serve on the port given as the only argument."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    app = web.Application()
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_count", count)
    app.router.add_get("/_sample", sample)
    app.router.add_get("/_gauge", held)
    app.router.add_get("/_marks", marks)
    app.router.add_get("/_overload", overload_counts)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/{tail:.*}", hook)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        print=None,
        access_log=None,
        backlog=8192,
    )


if __name__ == "__main__":
    main()
