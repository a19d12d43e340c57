"""What the operator commands share: exit codes, settings, output and the Redis client."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cycles_events.config import ConfigError, Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PROG = "cycles-events"


def load_settings() -> Settings:
    """Settings from the environment; a configuration error exits 2."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"cycles-events: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def fail(message: str) -> int:
    """One clear line on stderr; exit status 1."""
    print(f"{PROG}: {message}", file=sys.stderr)
    return EXIT_FAILED


class OutputClosed(Exception):
    """Whoever read stdout stopped reading (`| head`): nothing more to say, nothing failed."""


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print `data` as JSON with --json, else the human-readable `text`."""
    try:
        if args.json:
            print(json.dumps(data, indent=2, ensure_ascii=False), flush=True)
        elif text:
            print(text, flush=True)
    except BrokenPipeError:
        # stdout now points at /dev/null, so that the flush at exit cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise OutputClosed from None


def _redis_target(settings: Settings) -> str:
    """host:port of the configured Redis, never its password."""
    url = settings.redis_url.get_secret_value()
    if url:
        try:
            parts = urlsplit(url)
            return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        except ValueError:
            return "(invalid REDIS_URL)"
    return f"{settings.redis_host}:{settings.redis_port}"


RedisCommand = Callable[["Redis", Settings], Awaitable[int]]


def with_redis(command: RedisCommand) -> int:
    """Run an async operator command with a Redis client; failures become one line, exit 1."""
    from redis.exceptions import RedisError

    from cycles_events.connection import UNAVAILABLE, redis_client
    from cycles_events.ops import OpsError

    settings = load_settings()

    async def runner() -> int:
        client = redis_client(settings)
        try:
            return await command(client, settings)
        finally:
            await client.aclose()

    try:
        return asyncio.run(runner())
    except OpsError as exc:
        return fail(str(exc))
    except UNAVAILABLE as exc:
        return fail(f"cannot reach Redis at {_redis_target(settings)} ({type(exc).__name__})")
    except RedisError as exc:
        return fail(f"Redis error at {_redis_target(settings)}: {exc}")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def strip_newline(value: str) -> str:
    """`value` without one trailing newline (LF or CRLF)."""
    return value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
