"""Helpers of the CLI tests: run `cycles-events` as a subprocess, seed records, snapshot Redis."""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import sys
import termios
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from cycles_events.models import dumps, format_instant
from tests.support import DELIVERY_TTL_S, EVENT_TTL_S, hex16, now_ms


@dataclass
class Run:
    """A finished CLI run."""

    code: int
    out: str
    err: str


def cli_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a CLI run against `redis_url` (nothing inherited from REDIS_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "WEBHOOK_"))}
    env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


async def cli(
    redis_url: str, *args: str, stdin: bytes | None = None, timeout: float = 60, **env: str
) -> Run:
    """Run `python -m cycles_events.cli ARGS` and wait for it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cycles_events.cli",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(redis_url, **env),
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def cli_tty(
    redis_url: str, *args: str, columns: int = 100, timeout: float = 60, **env: str
) -> tuple[int, str, str]:
    """Run the CLI with stdout and stderr on a terminal `columns` wide: (code, tty text, err)."""
    code, tty, err = await _on_terminal(redis_url, args, "stdout", columns, timeout, env)
    return code, tty.decode().replace("\r\n", "\n"), err.decode()


async def cli_progress(
    redis_url: str, *args: str, timeout: float = 60, **env: str
) -> tuple[int, str, bytes]:
    """Run the CLI with stderr on a terminal (where progress is drawn): (code, stdout, tty)."""
    code, tty, out = await _on_terminal(redis_url, args, "stderr", None, timeout, env)
    return code, out.decode(), tty


async def _on_terminal(
    redis_url: str,
    args: Sequence[str],
    stream: str,
    columns: int | None,
    timeout: float,
    env: dict[str, str],
) -> tuple[int, bytes, bytes]:
    """Run the CLI with `stream` ('stdout' or 'stderr') on a terminal, `columns` wide when given:
    (code, what the terminal got, the other stream)."""
    primary, secondary = os.openpty()
    run_env = cli_env(redis_url, **env)
    if columns is not None:
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        run_env = {k: v for k, v in run_env.items() if k not in ("COLUMNS", "LINES")}
    pipe = asyncio.subprocess.PIPE
    reading: asyncio.Task[bytearray] | None = None
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "cycles_events.cli", *args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=secondary if stream == "stdout" else pipe,
            stderr=secondary if stream == "stderr" else pipe,
            env=run_env,
        )
        os.close(secondary)
        secondary = -1
        reading = asyncio.create_task(_read_terminal(primary))  # both drained at once
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        tty = await asyncio.wait_for(reading, timeout)
    finally:
        if reading is not None:
            reading.cancel()  # only after a timeout: closing the terminal ends its read
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert proc.returncode is not None
    return proc.returncode, bytes(tty), (err if stream == "stdout" else out)


async def _read_terminal(primary: int) -> bytearray:
    """What was written to a terminal, until its other side is closed (EIO on Linux)."""
    tty = bytearray()
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await loop.run_in_executor(None, os.read, primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        tty += chunk
    return tty


async def seed_deliveries(
    redis: Redis,
    sub_id: str,
    n: int,
    *,
    status: str = "FAILED",
    error: str | None = "HTTP 503",
    event_type: str = "budget.exhausted",
    created_ms: int | None = None,
    step_ms: int = 1,
    **fields: Any,
) -> list[str]:
    """`n` events with one finished delivery each, written as the producers and we write them."""
    start = created_ms if created_ms is not None else now_ms() - n * step_ms - 1000
    ids: list[str] = []
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        at = start + i * step_ms
        event_id = f"evt_{hex16()}"
        event = {
            "event_id": event_id,
            "event_type": event_type,
            "category": event_type.split(".")[0],
            "timestamp": format_instant(at),
            "tenant_id": "acme",
            "source": "cycles-server",
            "trace_id": os.urandom(16).hex(),
        }
        pipe.set(f"event:{event_id}", dumps(event), ex=EVENT_TTL_S)
        pipe.zadd("events:acme", {event_id: at})
        pipe.zadd("events:_all", {event_id: at})
        delivery_id = f"del_{hex16()}"
        doc: dict[str, Any] = {
            "delivery_id": delivery_id,
            "subscription_id": sub_id,
            "event_id": event_id,
            "event_type": event_type,
            "status": status,
            "attempted_at": format_instant(at),
            "attempts": 6 if status == "FAILED" else 0,
            "trace_id": event["trace_id"],
        }
        if error is not None:
            doc["error_message"] = error
            doc["completed_at"] = format_instant(at + 500)
        doc.update(fields)
        pipe.set(f"delivery:{delivery_id}", dumps(doc), ex=DELIVERY_TTL_S)
        pipe.zadd(f"deliveries:{sub_id}", {delivery_id: at})
        ids.append(delivery_id)
    await pipe.execute()
    return ids


async def snapshot(redis: Redis) -> dict[bytes, tuple[bytes | None, bool]]:
    """Every key's DUMP and whether it has a TTL."""
    out: dict[bytes, tuple[bytes | None, bool]] = {}
    async for key in redis.scan_iter(count=1000):
        out[key] = (await redis.dump(key), await redis.pttl(key) > 0)
    return out
