"""The outbound HTTP client: guarded resolution, no redirects, bounded reads, timeouts."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from cycles_events.urlguard import SecurityPolicy, UrlBlocked

MAX_RESPONSE_BYTES = 64 * 1024
MAX_HEADER_LINE = 8190
MAX_HEADERS = 100


class SendResult(NamedTuple):
    """What one POST produced: an HTTP status, or an error, or a policy block."""

    status: int | None
    elapsed_ms: int
    error: str | None = None
    blocked: str | None = None
    retry_after: str | None = None


class GuardedResolver(AbstractResolver):
    """Resolves once and judges every address, so the address checked is the one connected to."""

    def __init__(self, base: AbstractResolver, policy: Callable[[], SecurityPolicy]) -> None:
        self._base = base
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve `host` and refuse the whole answer if any address is blocked."""
        results = await self._base.resolve(host, port, family)
        self._policy().judge_addresses(host.rstrip("."), [r["host"] for r in results])
        return results

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._base.close()


@dataclass(eq=False)
class _Pool:
    """A session (and its connection pool) opened under one URL policy."""

    session: aiohttp.ClientSession
    policy: SecurityPolicy
    in_flight: int = 0
    retired: bool = False
    closing: asyncio.Task[None] | None = field(default=None, repr=False)


def _blocked_cause(exc: BaseException) -> UrlBlocked | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, UrlBlocked):
            return cur
        os_error = getattr(cur, "os_error", None)
        if isinstance(os_error, UrlBlocked):
            return os_error
        cur = cur.__cause__ or cur.__context__
    return None


def describe_error(exc: BaseException, total_timeout: float, connect_timeout: float = 0) -> str:
    """A transport error as an error_message: no URL, no user-info, no body."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"Timeout: no connection within {connect_timeout:g}s"
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return f"Timeout: no response within {total_timeout:g}s"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate verification failed"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "DNS resolution failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return f"Connection failed: {reason}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "Connection closed by server"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"Invalid HTTP response ({exc.status})"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "Invalid response body"
    if isinstance(exc, aiohttp.InvalidURL):
        return "Invalid URL"
    if isinstance(exc, aiohttp.ClientError):
        return f"HTTP client error: {type(exc).__name__}"
    return f"Transport error: {type(exc).__name__}"


class Sender:
    """POSTs signed events through connection pools that never outlive the URL policy."""

    def __init__(
        self,
        *,
        policy: Callable[[], SecurityPolicy],
        connect_timeout: float,
        total_timeout: float,
        resolver: AbstractResolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._policy = policy
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        self.resolver = resolver
        self._ssl = ssl_context
        self._pool: _Pool | None = None
        self._retired: set[_Pool] = set()

    async def start(self) -> None:
        """Open the first session."""
        if self._pool is None:
            self._pool = self._open(self._policy())

    def _open(self, policy: SecurityPolicy) -> _Pool:
        if self.resolver is None:
            self.resolver = aiohttp.ThreadedResolver()
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.resolver, self._policy),
            use_dns_cache=False,
            limit=0,
            limit_per_host=0,
            ssl=self._ssl_context(),
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self._total_timeout,
                connect=self._connect_timeout,
                sock_connect=self._connect_timeout,
            ),
            trust_env=False,
            auto_decompress=False,
            max_line_size=MAX_HEADER_LINE,
            max_field_size=MAX_HEADER_LINE,
            max_headers=MAX_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return _Pool(session, policy)

    def _ssl_context(self) -> ssl.SSLContext:
        """One TLS context for every pool (loading the CA bundle costs ~25 ms of CPU)."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _current(self, policy: SecurityPolicy) -> _Pool:
        """The pool for this policy: a changed policy retires the pool of the old one."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("sender not started")
        if pool.policy is not policy:
            pool.retired = True
            self._retired.add(pool)
            self._close_if_idle(pool)
            pool = self._pool = self._open(policy)
        return pool

    def _close_if_idle(self, pool: _Pool) -> None:
        if pool.retired and pool.in_flight == 0 and pool.closing is None:
            pool.closing = asyncio.ensure_future(pool.session.close())
            pool.closing.add_done_callback(lambda _t: self._retired.discard(pool))

    async def close(self) -> None:
        """Close every session and its connections."""
        pools = [*self._retired, *([self._pool] if self._pool else [])]
        self._pool = None
        for pool in pools:
            if pool.closing is not None:
                await asyncio.wait({pool.closing})
            else:
                await pool.session.close()
        self._retired.clear()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        """POST once; never follows redirects, reads at most 64 KiB of the answer."""
        started = time.perf_counter()
        policy = self._policy()
        try:
            target = policy.check_url(url)
        except UrlBlocked as exc:
            return SendResult(None, _ms(started), blocked=str(exc))
        pool = self._current(policy)
        url_to_send = target.url
        has_userinfo = url_to_send.raw_user is not None or url_to_send.raw_password is not None
        # user-info becomes Basic auth, unless a custom Authorization header says otherwise
        if has_userinfo and any(name.lower() == "authorization" for name in headers):
            url_to_send = url_to_send.with_user(None)
        pool.in_flight += 1
        try:
            async with pool.session.post(
                url_to_send, data=body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                await read_bounded(resp)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            blocked = _blocked_cause(exc)
            if blocked is not None:
                return SendResult(None, _ms(started), blocked=str(blocked))
            message = describe_error(exc, self._total_timeout, self._connect_timeout)
            return SendResult(None, _ms(started), error=message)
        finally:
            pool.in_flight -= 1
            self._close_if_idle(pool)
        error = None
        if 300 <= status <= 399:
            error = f"Redirect not followed (HTTP {status})"
        elif status < 200:
            error = f"Unexpected informational response (HTTP {status})"
        return SendResult(status, _ms(started), error=error, retry_after=retry_after)


async def read_bounded(resp: aiohttp.ClientResponse, limit: int = MAX_RESPONSE_BYTES) -> int:
    """Read and discard at most `limit` bytes of a body; drop the connection if there is more."""
    length = resp.content_length
    if length is not None and length <= limit:  # framed by Content-Length: one read
        return len(await resp.read())
    total = 0
    while total < limit:
        chunk = await resp.content.read(limit - total)
        if not chunk:
            return total
        total += len(chunk)
    if not resp.content.at_eof():
        resp.close()
    return total


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
