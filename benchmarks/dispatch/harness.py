"""The processes a run needs and the meters read from them.

redis-server (tests.support.RedisServer), the receiver and the daemons each run in a process of
their own. CPU time is read from /proc/<pid>/stat (utime + stime, every thread), memory from
/proc/<pid>/status (VmRSS now, VmHWM the peak), and Redis's work from `INFO cpu`
(used_cpu_user + used_cpu_sys, deltas) and `INFO commandstats` (calls, after CONFIG RESETSTAT).
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from tests.support import KEY_B64, free_port, stop_process

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[2]
# CYCLES_BENCH_DAEMON_ROOT: another checkout whose daemon is measured (a "before" run); the
# benchmark itself, its receiver and its raw loop stay this checkout's
DAEMON_ROOT = Path(os.environ.get("CYCLES_BENCH_DAEMON_ROOT") or ROOT).resolve()
# commands the driver itself sends around a measurement, never counted as the daemon's work
DRIVER_ONLY = {"info", "config"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()  # fields from the 3rd (state) on
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # the 14th (utime), the 15th (stime)


def memory_kib(pid: int) -> tuple[int, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                values[name] = int(value.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


async def wait_http(session: aiohttp.ClientSession, url: str, timeout: float = 30) -> None:
    """Wait until a URL answers at all."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with session.get(url) as resp:
                await resp.read()
                return
        except aiohttp.ClientError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


class ReceiverProc:
    """The receiver process (benchmarks/dispatch/receiver.py) and its control endpoints."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.dispatch.receiver", str(self.port)], cwd=ROOT
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))

    def url(self, path: str) -> str:
        return self.base + path

    async def ready(self) -> None:
        await wait_http(self.session, self.url("/_count"))

    async def _get(self, route: str, **params: str) -> Any:
        async with self.session.get(self.url(route), params=params) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)

    async def count(self) -> int:
        return int(await self._get("/_count"))

    async def stats(self) -> dict[str, list[float]]:
        got: dict[str, list[float]] = await self._get("/_stats")
        return got

    async def sample(self, path: str) -> dict[str, Any]:
        got: dict[str, Any] = await self._get("/_sample", path=path)
        return got

    async def gauge(self) -> dict[str, int]:
        got: dict[str, int] = await self._get("/_gauge")
        return got

    async def marks(self, total: int) -> dict[str, Any]:
        got: dict[str, Any] = await self._get("/_marks", total=str(total))
        return got

    async def reset(self) -> None:
        async with self.session.post(self.url("/_reset")) as resp:
            resp.raise_for_status()

    async def wait_count(self, n: int, timeout: float, poll: float = 0.05) -> None:
        """Wait until `n` requests have arrived since the last reset."""
        deadline = time.monotonic() + timeout
        while (got := await self.count()) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the receiver got {got} of {n} requests in {timeout:.0f} s")
            await asyncio.sleep(poll)

    async def wait_receipts(
        self, event_ids: list[str], timeout: float, attempts: int = 1
    ) -> dict[str, list[float]]:
        """Wait until every event has arrived `attempts` times; every receipt, by event."""
        await self.wait_count(len(event_ids) * attempts, timeout)
        deadline = time.monotonic() + timeout
        while True:
            got = await self.stats()
            missing = sum(1 for e in event_ids if len(got.get(e, ())) < attempts)
            if not missing:
                return got
            if time.monotonic() > deadline:
                raise RuntimeError(f"{missing} deliveries did not arrive in {timeout:.0f} s")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self.session.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Daemon:
    """One `python -m cycles_events.cli run` process with the benchmark's settings."""

    def __init__(self, redis_url: str, log_dir: Path, name: str, **settings: str) -> None:
        self.mgmt = free_port()
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "MANAGEMENT_PORT": str(self.mgmt),
            "MANAGEMENT_ADDRESS": "127.0.0.1",
            "WEBHOOK_URL_GUARD_ALLOW_PRIVATE_NETWORKS": "true",
            "WEBHOOK_SECRET_ENCRYPTION_KEY": KEY_B64,
            "PYTHONPATH": str(DAEMON_ROOT),
            **settings,
        }
        self.log_path = log_dir / f"{name}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - the process writes it until stopped
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cycles_events.cli", "run"],
            env=env,
            stdout=log,
            stderr=log,
            cwd=DAEMON_ROOT,
        )
        log.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self, session: aiohttp.ClientSession) -> None:
        url = f"http://127.0.0.1:{self.mgmt}/actuator/health/readiness"
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited; see {self.log_path}")
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not get ready; see {self.log_path}")
            await asyncio.sleep(0.1)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def memory_kib(self) -> tuple[int, int]:
        return memory_kib(self.pid)

    async def counters(self, session: aiohttp.ClientSession, *names: str) -> dict[str, float]:
        """Samples of the named metrics (summed over their labels) from /actuator/prometheus."""
        url = f"http://127.0.0.1:{self.mgmt}/actuator/prometheus"
        async with session.get(url) as resp:
            text = await resp.text()
        out = dict.fromkeys(names, 0.0)
        for line in text.splitlines():
            metric = line.split("{", 1)[0].split(" ", 1)[0]
            if metric in out:
                out[metric] += float(line.rsplit(" ", 1)[1])
        return out

    def stop(self) -> None:
        stop_process(self.proc, 40)


@dataclass
class RedisWork:
    """Redis's work over a measured span: CPU seconds and commands by name."""

    cpu_s: float
    calls: dict[str, int]
    seconds: float
    sys_s: float = 0.0  # the kernel's part of cpu_s
    usec: dict[str, int] = field(default_factory=dict)  # by command; a script's includes its own

    @property
    def commands(self) -> int:
        return sum(self.calls.values())

    def us_per(self, n: int) -> float:
        return self.cpu_s * 1e6 / n if n else float("nan")

    def commands_per(self, n: int) -> float:
        return self.commands / n if n else float("nan")

    def breakdown(self, n: int, top: int = 8) -> str:
        """The commands per delivery by name, the most frequent first."""
        ranked = sorted(self.calls.items(), key=lambda kv: -kv[1])[:top]
        return ", ".join(f"{name.upper()} {calls / n:.2f}" for name, calls in ranked)

    def time_breakdown(self, n: int, top: int = 6) -> str:
        """Where Redis's CPU went per delivery: the kernel, and the costliest commands."""
        ranked = sorted(self.usec.items(), key=lambda kv: -kv[1])[:top]
        named = ", ".join(f"{name.upper()} {us / n:.1f}" for name, us in ranked)
        return (
            f"{self.sys_s * 1e6 / n:.1f} µs in the kernel of {self.cpu_s * 1e6 / n:.1f}; "
            f"by command (commandstats, a script's µs include its commands'): {named}"
        )


class RedisMeter:
    """Redis CPU (INFO cpu) and commands (INFO commandstats) over a span, less the driver's own.

    The driver's own commands in the span (its pushes and polls) are told to `own` and taken
    off; INFO and CONFIG are never counted. Redis CPU includes the driver's pushes (an LPUSH of
    a thousand ids per call: well under 1% of a delivery's share).
    """

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._own: Counter[str] = Counter()
        self._cpu0 = (0.0, 0.0)
        self._t0 = 0.0

    async def _cpu(self) -> tuple[float, float]:
        """Redis's CPU seconds so far: user + sys, and sys."""
        info = await self.client.info("cpu")
        sys_s = float(info["used_cpu_sys"])
        return float(info["used_cpu_user"]) + sys_s, sys_s

    async def start(self) -> None:
        await self.client.config_resetstat()
        self._own.clear()
        self._cpu0 = await self._cpu()
        self._t0 = time.perf_counter()

    def own(self, command: str, n: int = 1) -> None:
        self._own[command.lower()] += n

    async def stop(self) -> RedisWork:
        cpu, sys_s = (b - a for a, b in zip(self._cpu0, await self._cpu(), strict=True))
        seconds = time.perf_counter() - self._t0
        stats = await self.client.info("commandstats")
        calls: dict[str, int] = {}
        usec: dict[str, int] = {}
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            if name.split("|", 1)[0] in DRIVER_ONLY:  # Redis 7 names subcommands config|get
                continue
            n = int(value["calls"]) - self._own.get(name, 0)
            if n > 0:
                calls[name] = n
                usec[name] = int(value["usec"])
        return RedisWork(cpu, calls, seconds, sys_s, usec)


def git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    return done.stdout.strip()


async def machine(client: Redis) -> dict[str, str]:
    """What the figures were measured on, and at which commit."""
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    server = await client.info("server")
    status = git("status", "--porcelain", cwd=DAEMON_ROOT)
    changed = [line for line in status.splitlines() if line.strip()]
    daemon_changed = [line for line in changed if line[3:].startswith("cycles_events/")]
    if not changed:
        tree = "clean"
    else:
        tree = f"dirty: {len(changed)} paths changed, {len(daemon_changed)} under cycles_events/"
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "redis": str(server.get("redis_version", "?")),
        "commit": git("rev-parse", "--short", "HEAD", cwd=DAEMON_ROOT) or "unknown",
        "tree": tree,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
