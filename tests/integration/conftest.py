"""Integration fixtures: the whole App running in the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from cycles_events import logs
from cycles_events.app import App
from cycles_events.config import Settings
from tests.support import KEY_B64, RedisServer, free_port

StartApp = Callable[..., Awaitable[App]]


def app_settings(redis_server: RedisServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "REDIS_URL": redis_server.url,
        "MANAGEMENT_PORT": free_port(),
        "MANAGEMENT_ADDRESS": "127.0.0.1",
        "WEBHOOK_URL_GUARD_ALLOW_PRIVATE_NETWORKS": True,
        "WEBHOOK_SECRET_ENCRYPTION_KEY": KEY_B64,
        "dispatch.pending.timeout-seconds": 0.5,
        "dispatch.http.timeout-seconds": 5,
        "SHUTDOWN_GRACE_SECONDS": 5,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def start_app(redis_server: RedisServer) -> AsyncIterator[StartApp]:
    logs.configure("DEBUG")
    running: list[tuple[App, asyncio.Task[int]]] = []

    async def start(**overrides: Any) -> App:
        app = App(app_settings(redis_server, **overrides))
        task = asyncio.create_task(app.run())
        running.append((app, task))
        for _ in range(500):  # until the claimer has talked to Redis: the app is ready
            if app.pipeline.consuming:
                break
            await asyncio.sleep(0.01)
        return app

    yield start
    loop = asyncio.get_running_loop()
    for app, task in running:
        if not task.done():
            if not app.draining:  # a second stop request exits the process (the test worker)
                app.request_stop("test-end")
            await asyncio.wait_for(task, timeout=30)
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
