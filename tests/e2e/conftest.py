"""E2E fixtures: `cycles-events run` as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import KEY_B64, RedisServer, free_port, stop_process


def daemon_exe() -> list[str]:
    exe = shutil.which("cycles-events", path=str(Path(sys.executable).parent))
    return [exe, "run"] if exe else [sys.executable, "-m", "cycles_events.cli", "run"]


class Daemon:
    """One `cycles-events run` process with its own log file."""

    def __init__(self, redis: RedisServer, **env: Any) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="cycles-daemon-")
        self.log_path = Path(self.dir) / "daemon.log"
        self.env = {
            **os.environ,
            "REDIS_URL": redis.url,
            "MANAGEMENT_PORT": str(self.port),
            "MANAGEMENT_ADDRESS": "127.0.0.1",
            "WEBHOOK_URL_GUARD_ALLOW_PRIVATE_NETWORKS": "true",
            "WEBHOOK_SECRET_ENCRYPTION_KEY": KEY_B64,
            "dispatch.pending.timeout-seconds": "0.5",
            "dispatch.http.timeout-seconds": "10",
            "SHUTDOWN_GRACE_SECONDS": "10",
            **{k: str(v) for k, v in env.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(daemon_exe(), env=self.env, stdout=log, stderr=log)
        log.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def health(self, path: str = "readiness") -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/actuator/health/{path}".rstrip("/")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    async def wait_ready(self, timeout: float = 20) -> None:
        await wait_for(lambda: self._ready(), timeout, "daemon never became ready")

    def _ready(self) -> bool:
        try:
            return self.health()[0] == 200
        except OSError:
            return False

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"action": "_raw", "text": raw})
        return lines

    def actions(self, action: str) -> list[dict[str, Any]]:
        return [line for line in self.logs() if line.get("action") == action]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 20)
        shutil.rmtree(self.dir, ignore_errors=True)


async def wait_for(cond: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(0.05)


@pytest.fixture
def daemon_factory(redis_server: RedisServer) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(redis: RedisServer | None = None, **env: Any) -> Daemon:
        d = Daemon(redis or redis_server, **env)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


@pytest.fixture
async def persistent_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer(persistent=True)
    server.start()
    yield server
    server.cleanup()
