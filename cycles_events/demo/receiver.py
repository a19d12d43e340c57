"""The demo's local webhook receiver, which checks every signature it gets."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from cycles_events.demo.common import free_port
from cycles_events.signing import verify


@dataclass
class DemoReceiver:
    """The local webhook receiver: /orders and /alerts answer 200, /down always 503."""

    secrets_by_path: dict[str, str]
    port: int = 0
    runner: web.AppRunner | None = None
    requests: Counter[str] = field(default_factory=Counter)
    first_receipt_ms: dict[tuple[str, str], int] = field(default_factory=dict)
    signatures_ok: int = 0
    signatures_bad: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Record the request, check its signature, answer by path."""
        at = int(time.time() * 1000)
        body = await request.read()
        path = request.path
        self.requests[path] += 1
        event_id = request.headers.get("X-Cycles-Event-Id", "")
        self.first_receipt_ms.setdefault((path, event_id), at)
        secret = self.secrets_by_path.get(path)
        signature = request.headers.get("X-Cycles-Signature", "")
        if secret is not None and verify(secret, body, signature):
            self.signatures_ok += 1
        else:
            self.signatures_bad += 1
        if path == "/down":
            return web.Response(status=503, text="unavailable")
        return web.Response(status=200, text="ok")

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, shutdown_timeout=0.5).start()

    async def stop(self) -> None:
        """Stop listening."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def url(self, path: str) -> str:
        """The receiver URL of `path`."""
        return f"http://127.0.0.1:{self.port}{path}"
