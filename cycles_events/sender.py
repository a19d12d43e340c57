"""The outbound HTTP client: guarded resolution, no redirects, bounded reads, timeouts."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from cycles_events.urlguard import SecurityPolicy, UrlBlocked

MAX_RESPONSE_BYTES = 64 * 1024
MAX_HEADER_LINE = 8190


@dataclass(frozen=True, slots=True)
class SendResult:
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
        self._policy().judge_addresses(host, [r["host"] for r in results])
        return results

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._base.close()


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


def describe_error(exc: BaseException, total_timeout: float) -> str:
    """A transport error as an error_message: no URL, no user-info, no body."""
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
    if isinstance(exc, aiohttp.ClientError):
        return f"HTTP client error: {type(exc).__name__}"
    return f"Transport error: {type(exc).__name__}"


class Sender:
    """POSTs signed events; one session (and connection pool) per process."""

    def __init__(
        self,
        *,
        policy: Callable[[], SecurityPolicy],
        connect_timeout: float,
        total_timeout: float,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._policy = policy
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the session."""
        resolver = GuardedResolver(self._resolver or aiohttp.ThreadedResolver(), self._policy)
        connector = aiohttp.TCPConnector(
            resolver=resolver,
            use_dns_cache=False,
            limit=0,
            limit_per_host=0,
            ssl=ssl.create_default_context(),
        )
        self._session = aiohttp.ClientSession(
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
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        """POST once; never follows redirects, reads at most 64 KiB of the answer."""
        if self._session is None:
            raise RuntimeError("sender not started")
        started = time.perf_counter()
        try:
            self._policy().check_url(url)
            async with self._session.post(
                url, data=body, headers=dict(headers), allow_redirects=False
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                await _drain(resp)
        except UrlBlocked as exc:
            return SendResult(None, _ms(started), blocked=str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            blocked = _blocked_cause(exc)
            if blocked is not None:
                return SendResult(None, _ms(started), blocked=str(blocked))
            return SendResult(None, _ms(started), error=describe_error(exc, self._total_timeout))
        error = None
        if 300 <= status <= 399:
            error = f"Redirect not followed (HTTP {status})"
        elif status < 200:
            error = f"Unexpected informational response (HTTP {status})"
        return SendResult(status, _ms(started), error=error, retry_after=retry_after)


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read and discard at most MAX_RESPONSE_BYTES; drop the connection if there is more."""
    total = 0
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            return
        total += len(chunk)
        if total > MAX_RESPONSE_BYTES:
            resp.close()
            return


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
