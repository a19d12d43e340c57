"""The management port: actuator-style health, info and Prometheus metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from cycles_events import ARTIFACT, __version__
from cycles_events.connection import describe
from cycles_events.metrics import Metrics

PING_TIMEOUT_S = 2.0
PATHS = (
    "/actuator/health",
    "/actuator/health/liveness",
    "/actuator/health/readiness",
    "/actuator/info",
    "/actuator/prometheus",
)


@dataclass
class HealthSources:
    """What the health endpoints ask; `app` fills it in."""

    ping: Callable[[], Awaitable[bool]]
    tasks_alive: Callable[[], dict[str, bool]]
    consuming: Callable[[], bool]
    draining: Callable[[], bool]
    dispatcher_details: Callable[[], dict[str, Any]]
    faults: Callable[[], list[str]] = list  # components failing persistently
    redis_error: Callable[[], str | None] = lambda: None  # what the last Redis failure was


def _json(status: str, components: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"status": status}
    if components is not None:
        body["components"] = components
    return web.Response(
        status=200 if status == "UP" else 503,
        text=json.dumps(body),
        content_type="application/vnd.spring-boot.actuator.v3+json",
    )


class ManagementServer:
    """An aiohttp server on MANAGEMENT_PORT answering GET/HEAD only."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        metrics: Metrics,
        health: HealthSources,
        build_time: str,
    ) -> None:
        self.host = host
        self.port = port
        self.metrics = metrics
        self.health = health
        self.build_time = build_time
        self._runner: web.AppRunner | None = None
        app = web.Application(middlewares=[self._only_get])
        handlers = (self._health, self._liveness, self._readiness, self._info, self._prometheus)
        for path, handler in zip(PATHS, handlers, strict=True):
            app.router.add_get(path, handler)
        self.app = app

    @web.middleware
    async def _only_get(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            if request.path in PATHS:
                return web.Response(status=405, headers={"Allow": "GET, HEAD"})
            return web.Response(status=404)
        return await handler(request)

    async def start(self) -> None:
        """Bind and serve."""
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _redis(self) -> dict[str, Any]:
        try:
            ok = await asyncio.wait_for(self.health.ping(), timeout=PING_TIMEOUT_S)
        except Exception as exc:
            return {"status": "DOWN", "details": {"error": describe(exc)}}
        return {"status": "UP" if ok else "DOWN", "details": {"ping": "PONG" if ok else None}}

    def _liveness_component(self) -> dict[str, Any]:
        tasks = self.health.tasks_alive()
        dead = sorted(name for name, alive in tasks.items() if not alive)
        return {"status": "DOWN" if dead else "UP", "details": {"tasks": tasks}}

    def _dispatcher_component(self) -> dict[str, Any]:
        failing = self.health.faults()
        ok = self.health.consuming() and not self.health.draining() and not failing
        details = dict(self.health.dispatcher_details())
        details["draining"] = self.health.draining()
        details["consuming"] = self.health.consuming()
        if failing:
            details["failing"] = failing
        if not ok and (error := self.health.redis_error()):
            details["redis_error"] = error
        return {"status": "UP" if ok else "DOWN", "details": details}

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Readiness: Redis answers, the workers consume, the process is not draining."""
        redis = await self._redis()
        dispatcher = self._dispatcher_component()
        up = redis["status"] == "UP" and dispatcher["status"] == "UP"
        self.metrics.ready.set(1 if up else 0)
        return up, {"redis": redis, "dispatcher": dispatcher}

    async def _health(self, request: web.Request) -> web.Response:
        up, components = await self.readiness()
        live = self._liveness_component()
        components["liveness"] = live
        return _json("UP" if up and live["status"] == "UP" else "DOWN", components)

    async def _liveness(self, request: web.Request) -> web.Response:
        live = self._liveness_component()
        return _json(live["status"], {"tasks": live})

    async def _readiness(self, request: web.Request) -> web.Response:
        up, components = await self.readiness()
        return _json("UP" if up else "DOWN", components)

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "build": {
                    "artifact": ARTIFACT,
                    "name": "cycles-events",
                    "group": "io.runcycles",
                    "version": __version__,
                    "time": self.build_time,
                }
            }
        )

    async def _prometheus(self, request: web.Request) -> web.Response:
        body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
