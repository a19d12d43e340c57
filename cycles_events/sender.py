"""The outbound POST: the URL policy, guarded resolution, no redirects, bounded reads, timeouts."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple
from urllib.parse import unquote

import aiohttp
from aiohttp.abc import AbstractResolver

from cycles_events.http1 import (
    MAX_RESPONSE_BYTES,
    Answer,
    ClosedEarly,
    Connection,
    HttpError,
    Pool,
)
from cycles_events.urlguard import SecurityPolicy, Target, UrlBlocked

__all__ = ["MAX_RESPONSE_BYTES", "SendResult", "Sender", "describe_error"]


WATCH_S = 0.05


class SendResult(NamedTuple):
    """What one POST produced: an HTTP status, or an error, or a policy block."""

    status: int | None
    elapsed_ms: int
    error: str | None = None
    blocked: str | None = None
    retry_after: str | None = None


class ConnectTimeout(TimeoutError):
    """No connection within the connect timeout."""


class DnsError(OSError):
    """The host name did not resolve."""


def describe_error(exc: BaseException, total_timeout: float, connect_timeout: float = 0) -> str:
    """A transport error as an error_message: no URL, no user-info, no body."""
    if isinstance(exc, ConnectTimeout):
        return f"Timeout: no connection within {connect_timeout:g}s"
    if isinstance(exc, TimeoutError):
        return f"Timeout: no response within {total_timeout:g}s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS certificate verification failed"
    if isinstance(exc, ssl.SSLError):
        return "TLS handshake failed"
    if isinstance(exc, DnsError):
        return "DNS resolution failed"
    if isinstance(exc, HttpError):
        return f"Invalid HTTP response ({exc})"
    if isinstance(exc, ClosedEarly):
        return "Connection closed by server"
    if isinstance(exc, OSError):
        return f"Connection failed: {exc.strerror or type(exc).__name__}"
    return f"Transport error: {type(exc).__name__}"


def _request_head(target: Target, headers: Mapping[str, str], length: int) -> bytes:
    """The request line and headers, as the receiver gets them (Host from the URL)."""
    url = target.url
    default = 443 if target.scheme == "https" else 80
    host = url.raw_host or target.host
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if target.port != default:
        host = f"{host}:{target.port}"
    path = url.raw_path_qs or "/"
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if url.raw_user is not None and not any(n.lower() == "authorization" for n in headers):
        # user-info becomes Basic auth, unless a custom Authorization header says otherwise
        pair = f"{unquote(url.raw_user)}:{unquote(url.raw_password or '')}"
        lines.append("Authorization: Basic " + base64.b64encode(pair.encode()).decode())
    lines += ["Accept: */*", f"Content-Length: {length}", "", ""]
    return "\r\n".join(lines).encode("utf-8")


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
        self._pool = Pool()
        self._pool_policy: SecurityPolicy | None = None
        self._in_flight: set[Connection] = set()
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Ready the resolver, the TLS context and the watchdog of request deadlines."""
        if self.resolver is None:
            self.resolver = aiohttp.ThreadedResolver()
        self._ssl_context()
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch(), name="http-deadlines"
            )

    @property
    def watchdog(self) -> asyncio.Task[None] | None:
        """The task that enforces request deadlines (supervised by the app)."""
        return self._watchdog

    async def _watch(self) -> None:
        """End every request still under way at its deadline (checked every WATCH_S)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCH_S)
            now = loop.time()
            for conn in [c for c in self._in_flight if c.deadline <= now]:
                conn.expire()

    def _ssl_context(self) -> ssl.SSLContext:
        """One TLS context for every connection (loading the CA bundle costs ~25 ms of CPU)."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def close(self) -> None:
        """Close every connection."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._pool.close()
        for conn in list(self._in_flight):
            conn.close()
        if self.resolver is not None:
            await self.resolver.close()

    def _pool_for(self, policy: SecurityPolicy) -> Pool:
        """The pool of this policy: a changed policy retires the connections of the old one."""
        if policy is not self._pool_policy:
            self._pool.close()
            self._pool = Pool()
            self._pool_policy = policy
        return self._pool

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        """POST once; never follows redirects, reads at most 64 KiB of the answer."""
        started = time.perf_counter()
        policy = self._policy()
        try:
            target = policy.check_url(url)
        except UrlBlocked as exc:
            return SendResult(None, _ms(started), blocked=str(exc))
        pool = self._pool_for(policy)
        request = _request_head(target, headers, len(body)) + body
        conn: Connection | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._total_timeout
        try:
            conn = pool.take((target.scheme, target.host, target.port))
            reused = conn is not None
            for _ in range(2):
                if conn is None:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        conn = await self._connect(target, policy)
                # the watchdog ends the exchange at its deadline (a timer each cost ~8% CPU)
                conn.deadline = deadline
                self._in_flight.add(conn)
                try:
                    answer: Answer = await conn.exchange(request)
                    break
                except (ClosedEarly, ConnectionResetError, BrokenPipeError):
                    if not reused or conn.received:
                        raise
                    # a kept connection the server had closed before reading the request:
                    # sent again on a new one (nothing of it was answered, or read)
                    self._in_flight.discard(conn)
                    conn.close()
                    conn, reused = None, False
        except UrlBlocked as exc:
            return SendResult(None, _ms(started), blocked=str(exc))
        except Exception as exc:  # every transport failure is an outcome, never a crash
            if conn is not None:
                conn.close()
            message = describe_error(exc, self._total_timeout, self._connect_timeout)
            return SendResult(None, _ms(started), error=message)
        finally:
            if conn is not None:
                self._in_flight.discard(conn)
        assert conn is not None  # the loop ends with an answer on a connection, or raises
        if answer.reusable:
            pool.give_back(conn)
        else:
            conn.close()
        status = answer.status
        error = None
        if 300 <= status <= 399:
            error = f"Redirect not followed (HTTP {status})"
        elif status < 200:
            error = f"Unexpected informational response (HTTP {status})"
        return SendResult(status, _ms(started), error=error, retry_after=answer.retry_after)

    async def _connect(self, target: Target, policy: SecurityPolicy) -> Connection:
        """Resolve, judge every address, and connect to one of those judged (nothing else)."""
        addresses = await self._judged(target, policy)
        key = (target.scheme, target.host, target.port)
        tls = self._ssl_context() if target.scheme == "https" else None
        loop = asyncio.get_running_loop()
        failure: BaseException | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                for address in addresses:
                    try:
                        _, conn = await loop.create_connection(
                            lambda: Connection(key),
                            address,
                            target.port,
                            ssl=tls,
                            server_hostname=target.host if tls is not None else None,
                        )
                    except ssl.SSLError:
                        raise
                    except OSError as exc:  # refused or unreachable: the next judged address
                        failure = exc
                        continue
                    return conn
        except TimeoutError:
            raise ConnectTimeout() from None
        assert failure is not None
        raise failure

    async def _judged(self, target: Target, policy: SecurityPolicy) -> list[str]:
        """The host's addresses when every one of them is allowed (a literal is judged already)."""
        if target.url.raw_host is not None and _is_literal(target.host):
            return [target.host]
        assert self.resolver is not None
        try:
            found = await self.resolver.resolve(target.host, target.port, socket.AF_UNSPEC)
        except OSError as exc:
            raise DnsError(str(exc)) from None
        addresses = [r["host"] for r in found]
        policy.judge_addresses(target.host, addresses)
        return addresses


def _is_literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
