"""The demo's child processes: start and stop them, a throwaway redis-server and the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from cycles_events.demo.common import DemoError, free_port


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook that makes a child get SIGTERM when the demo dies, however it dies.

    The libc function is looked up here, in the parent, so that the hook itself only makes one
    C call between fork and exec (no import, no Python locks). Linux only; None elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return hook


@dataclass
class Processes:
    """Every process and directory the demo started, stopped in reverse order."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a child in its own session (Ctrl-C reaches only the demo, which stops it)."""
        proc = subprocess.Popen(
            argv, start_new_session=True, preexec_fn=_parent_death_signal(), **kwargs
        )
        self.procs.append((name, proc))
        return proc

    def stop_all(self, grace_s: float = 8.0) -> list[str]:
        """SIGTERM each child, SIGKILL it after `grace_s`; remove temp dirs. Returns names."""
        stopped = []
        while self.procs:
            name, proc = self.procs.pop()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            stopped.append(name)
        while self.dirs:
            shutil.rmtree(self.dirs.pop(), ignore_errors=True)
        return stopped


async def start_redis(procs: Processes, workdir: str) -> tuple[Redis, str]:
    """A throwaway redis-server on a free port; returns a client and its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise DemoError("redis-server not found (Debian: apt-get install redis-server)")
    port = free_port()
    procs.start(
        "redis-server",
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            workdir,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            await client.ping()
            return client, url
        except Exception:  # refused while it starts, or loading
            if time.monotonic() > deadline:
                raise DemoError("redis-server did not start") from None
            await asyncio.sleep(0.05)


def daemon_env(redis_url: str, management_port: int, key_b64: str) -> dict[str, str]:
    """The daemon's environment: ours, without any inherited Redis or dispatch settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("REDIS_", "DISPATCH", "WEBHOOK_", "MANAGEMENT_"))
    }
    env.update(
        REDIS_URL=redis_url,
        MANAGEMENT_PORT=str(management_port),
        MANAGEMENT_ADDRESS="127.0.0.1",
        WEBHOOK_URL_GUARD_ALLOW_PRIVATE_NETWORKS="true",
        WEBHOOK_SECRET_ENCRYPTION_KEY=key_b64,
        DISPATCH_PENDING_TIMEOUT_SECONDS="1",
        SHUTDOWN_GRACE_SECONDS="3",
        LOG_LEVEL="INFO",
    )
    return env


def _tail(log: Path, lines: int = 5) -> str:
    """The last lines of the daemon's log, on one line."""
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def wait_ready(
    http: aiohttp.ClientSession, port: int, daemon: subprocess.Popen[bytes], log: Path
) -> None:
    """Wait until the daemon's readiness is UP."""
    url = f"http://127.0.0.1:{port}/actuator/health/readiness"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise DemoError(f"the daemon exited ({daemon.returncode}): {_tail(log)}")
        with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise DemoError("the daemon did not become ready within 30 s")
