"""Redis clients of the service (plain, TLS, ACL user, Sentinel) and the state of the link."""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import hiredis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cycles_events import logs
from cycles_events.config import Settings

T = TypeVar("T")

# Errors that mean "Redis is unreachable right now", as opposed to a bad command.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)


def _pack(args: tuple[Any, ...]) -> bytes:
    if isinstance(args[0], str) and " " in args[0]:  # 'CLIENT SETINFO' and the like
        args = (*args[0].split(), *args[1:])
    try:
        packed: bytes = hiredis.pack_command(args)
    except UnicodeEncodeError:  # an id that was not UTF-8 on the way in goes back as it came
        raw: Any = tuple(
            a.encode("utf-8", "surrogateescape") if isinstance(a, str) else a for a in args
        )
        packed = hiredis.pack_command(raw)
    return packed


class _HiredisPacking:
    """Packs commands with hiredis's C packer, which redis-py's asyncio connections do not use.

    With batched scripts of several arguments per delivery, the pure-Python packer was the
    largest single CPU cost of a delivery.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        """One command in the Redis protocol."""
        return [_pack(args)]

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        """Several commands (a pipeline) in the Redis protocol."""
        return [b"".join(_pack(tuple(c)) for c in commands)]


class PackedConnection(_HiredisPacking, Connection):
    """A TCP connection using the C packer."""


class PackedSSLConnection(_HiredisPacking, SSLConnection):
    """A TLS connection using the C packer."""


class PackedSentinelConnection(_HiredisPacking, SentinelManagedConnection):
    """A connection to whichever server Sentinel names as the primary, using the C packer."""


def describe(exc: BaseException) -> str:
    """What failed, in a few words an operator can act on; never a password or a URL."""
    text = str(exc).lower()
    if isinstance(exc, AuthenticationError) or "wrongpass" in text or "noauth" in text:
        return "authentication failed (REDIS_USERNAME / REDIS_PASSWORD)"
    if isinstance(exc, ssl.SSLError) or "ssl" in text or "certificate" in text:
        return "TLS handshake failed (REDIS_TLS_ENABLED / REDIS_TLS_CA_FILE)"
    if (
        isinstance(exc, RedisTimeoutError | TimeoutError)
        or "timed out" in text
        or "timeout" in text
    ):
        return "timed out"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    if "temporary failure in name resolution" in text or "no address associated" in text:
        return "unknown host"
    refused = ("connection refused", "connect call failed", "error 111 ")
    if any(r in text for r in refused) or isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if "no route to host" in text or "error 113 " in text or "network is unreachable" in text:
        return "no route to host"
    if "no master found" in text or "masternotfound" in type(exc).__name__.lower():
        return "Sentinel names no primary"
    if "connection reset" in text or "closed" in text or "broken pipe" in text:
        return "connection lost"
    if "loading" in text:
        return "Redis is loading its data"
    if "oom" in text:
        return "Redis is out of memory"
    if isinstance(exc, ResponseError):
        return f"command refused: {str(exc).split(' ', 1)[0]}"
    return type(exc).__name__


def _ssl_options(settings: Settings) -> dict[str, Any]:
    return {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": settings.redis_tls_ca_file or None,
    }


def redis_client(settings: Settings, *, blocking: bool = False) -> Redis:
    """A client for the configured Redis: REDIS_URL, Sentinel, or host/port/user/password."""
    socket_timeout = settings.redis_socket_timeout_ms / 1000
    if blocking:  # a blocking pop waits up to the pending timeout before its answer comes
        socket_timeout = max(
            settings.redis_blocking_socket_timeout_ms / 1000, settings.pending_timeout_seconds + 1
        )
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout_ms / 1000,
        "health_check_interval": 15,
        # No retry behind our back: a CLAIM whose answer was lost must be asked again as such
        # (the claimer does), not run anew, which would leave the first batch claimed by nobody
        # until recovery. redis-py 8 retries a command on a connection error (before 8 it only
        # reconnected), and checks a pooled connection before it is used.
        "retry": Retry(NoBackoff(), 0),
        # ids are str in our code; whatever bytes a producer pushed must survive the round trip
        "encoding_errors": "surrogateescape",
    }
    password = settings.redis_password.get_secret_value() or None
    username = settings.redis_username or None
    if settings.sentinels:
        return _sentinel_client(settings, common, username, password)
    url = settings.redis_url.get_secret_value()
    tls = settings.redis_tls_enabled or url.startswith("rediss://")
    if url:
        extra = _ssl_options(settings) if tls else {}
        if url.startswith("redis://") and settings.redis_tls_enabled:
            url = "rediss://" + url.removeprefix("redis://")
        packed = PackedSSLConnection if tls else PackedConnection
        if url.startswith(("redis://", "rediss://")):
            return Redis.from_url(url, connection_class=packed, **common, **extra)
        return Redis.from_url(url, **common)
    pool_options: dict[str, Any] = {
        "host": settings.redis_host,
        "port": settings.redis_port,
        "username": username,
        "password": password,
        **common,
    }
    if tls:
        pool = ConnectionPool(
            connection_class=PackedSSLConnection, **pool_options, **_ssl_options(settings)
        )
    else:
        pool = ConnectionPool(connection_class=PackedConnection, **pool_options)
    return Redis(connection_pool=pool)


def _sentinel_client(
    settings: Settings, common: dict[str, Any], username: str | None, password: str | None
) -> Redis:
    sentinel_password = settings.redis_sentinel_password.get_secret_value() or None
    sentinel_options: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_ms / 1000,
        "socket_connect_timeout": settings.redis_connect_timeout_ms / 1000,
    }
    if sentinel_password:
        sentinel_options["password"] = sentinel_password
    tls = _ssl_options(settings) if settings.redis_tls_enabled else {}
    if tls:
        sentinel_options.update(ssl=True, **tls)
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        settings.sentinels, sentinel_kwargs=sentinel_options
    )
    options = dict(common)
    if tls:
        options.update(ssl=True, **tls)
    client: Redis = sentinel.master_for(
        settings.redis_sentinel_master.strip(),
        connection_class=PackedSentinelConnection,
        username=username,
        password=password,
        **options,
    )
    return client


class RedisIO:
    """Runs commands on a client and tells `state` how each went (the link's one judge)."""

    def __init__(self, redis: Redis, state: RedisState | None = None) -> None:
        self.redis = redis
        self.state = state or RedisState()

    async def _run(self, call: Awaitable[T]) -> T:
        started = self.state.clock()
        try:
            result = await call
        except UNAVAILABLE as exc:
            self.state.failed(exc)
            raise
        self.state.ok(started)
        return result


class RedisState:
    """Tracks whether Redis answers, logging each change of state once.

    Only the delivery path and the loops that talk to Redis report here. A failure within
    DOWN_AFTER_S of the last success is not an outage yet: after a restart, each pooled
    connection fails once while fresh ones succeed, and that is not a change of state. Once
    down, only a success that started after the outage began counts as its end, so a command
    that was already under way (or never touched Redis) cannot announce a false recovery.
    """

    DOWN_AFTER_S = 1.0

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.clock = clock
        self._on_error = on_error
        self.up = True
        self.since = clock()
        self.last_ok = clock()
        self.last_error: str | None = None
        self.outages = 0

    def ok(self, started: float | None = None) -> None:
        """Record a successful command (begun at `started`, by this clock, when known)."""
        now = self.clock()
        if not self.up and started is not None and started < self.since:
            return
        self.last_ok = now
        if not self.up:
            logs.info("redis_reconnected", down_seconds=round(now - self.since, 1))
            self.up = True
            self.since = now
            self.last_error = None

    def failed(self, exc: BaseException) -> None:
        """Record a connection failure."""
        self._on_error()
        self.last_error = describe(exc)
        now = self.clock()
        if self.up and now - self.last_ok >= self.DOWN_AFTER_S:
            logs.error("redis_unavailable", error=self.last_error)
            self.up = False
            self.since = now
            self.outages += 1
