"""Network doubles: DNS server and resolver on loopback, raw TCP servers, the daemon in-process."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import signal
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp.abc import AbstractResolver, ResolveResult
from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord

from cycles_events.app import App
from cycles_events.config import Settings

TTL = 0


@dataclass
class DnsServer:
    """Answers A/AAAA queries from per-name answer sequences; each query takes the next answer.

    `answers[name]` is a list of answer sets (lists of addresses); the n-th query for the name
    gets the n-th set, and the last set repeats. Unknown names get NXDOMAIN.
    """

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    queries: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0
    _counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _transport: asyncio.DatagramTransport | None = None

    def set(self, name: str, *answer_sets: list[str]) -> None:
        """Program the answers for a name (and reset its query counter)."""
        key = name.rstrip(".").lower()
        self.answers[key] = [list(s) for s in answer_sets]
        self._counts[key] = 0

    def count(self, name: str) -> int:
        """How many times `name` was looked up (A queries)."""
        key = name.rstrip(".").lower()
        return sum(1 for n, t in self.queries if n == key and t == "A")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = self

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                reply = server.reply(data)
                if reply is not None and server._transport is not None:
                    server._transport.sendto(reply, addr)

        transport, _ = await loop.create_datagram_endpoint(Protocol, local_addr=("127.0.0.1", 0))
        self._transport = transport
        self.port = self._transport.get_extra_info("sockname")[1]

    def reply(self, data: bytes) -> bytes | None:
        """The answer to one query packet."""
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return None
        q = request.q
        name = str(q.qname).rstrip(".").lower()
        qtype = QTYPE[q.qtype]
        self.queries.append((name, qtype))
        reply = request.reply()
        sets = self.answers.get(name)
        if sets is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return bytes(reply.pack())
        if qtype == "A":
            index = min(self._counts[name], len(sets) - 1)
            self._counts[name] += 1
        else:
            index = min(max(self._counts[name] - 1, 0), len(sets) - 1)
        for address in sets[index]:
            ip = ipaddress.ip_address(address)
            if qtype == "A" and ip.version == 4:
                reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(address), ttl=TTL))
            elif qtype == "AAAA" and ip.version == 6:
                reply.add_answer(RR(q.qname, QTYPE.AAAA, rdata=AAAA(tuple(ip.packed)), ttl=TTL))
        return bytes(reply.pack())

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class DnsResolver(AbstractResolver):
    """Resolves names by asking one DNS server over UDP (A first, then AAAA for AF_UNSPEC)."""

    def __init__(self, server_port: int, *, host: str = "127.0.0.1", timeout: float = 2.0) -> None:
        self.server = (host, server_port)
        self.timeout = timeout
        self._ids = itertools.count(1)

    async def _query(self, name: str, qtype: str) -> list[str]:
        loop = asyncio.get_running_loop()
        request = DNSRecord.question(name, qtype)
        request.header.id = next(self._ids) & 0xFFFF
        answer: asyncio.Future[bytes] = loop.create_future()

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if not answer.done():
                    answer.set_result(data)

            def error_received(self, exc: Exception) -> None:
                if not answer.done():
                    answer.set_exception(exc)

        transport, _ = await loop.create_datagram_endpoint(Protocol, remote_addr=self.server)
        try:
            transport.sendto(bytes(request.pack()))
            data = await asyncio.wait_for(answer, self.timeout)
        except TimeoutError:
            raise OSError(f"DNS query for {name} timed out") from None
        finally:
            transport.close()
        reply = DNSRecord.parse(data)
        if reply.header.rcode != RCODE.NOERROR:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        want = getattr(QTYPE, qtype)
        return [str(rr.rdata) for rr in reply.rr if rr.rtype == want]

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Every address of `host` for `family`, as aiohttp expects them."""
        addresses: list[tuple[str, socket.AddressFamily]] = []
        if family in (socket.AF_INET, socket.AF_UNSPEC):
            addresses += [(a, socket.AF_INET) for a in await self._query(host, "A")]
        if family in (socket.AF_INET6, socket.AF_UNSPEC):
            addresses += [(a, socket.AF_INET6) for a in await self._query(host, "AAAA")]
        if not addresses:
            raise socket.gaierror(socket.EAI_NODATA, "No address associated with hostname")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=fam,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address, fam in addresses
        ]

    async def close(self) -> None:
        """Nothing to close: each query uses its own socket."""


# --- raw TCP servers for hostile-receiver tests ---------------------------------------------------

RawHandler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 request (head, body) read from a stream, or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return head, body


async def http_ok(server: RawServer, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Answer 200 to every request on the connection (keep-alive)."""
    while (request := await read_request(reader)) is not None:
        server.requests.append(request[0])
        close = b"Connection: close\r\n" if server.close_each else b""
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + close + b"\r\nok")
        await w.drain()
        if server.close_each:
            return


def respond(data: bytes) -> RawHandler:
    """Read one request, send `data` verbatim, then wait for the client to hang up."""

    async def handler(server: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        request = await read_request(r)
        if request is None:
            return
        server.requests.append(request[0])
        w.write(data)
        await w.drain()
        await r.read()

    return handler


def respond_each(data: bytes) -> RawHandler:
    """Send `data` verbatim to every request on the connection (keep-alive)."""

    async def handler(server: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (request := await read_request(r)) is not None:
            server.requests.append(request[0])
            w.write(data)
            await w.drain()

    return handler


async def endless_body(server: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Answer 200 with a chunked body that never ends; stops when the client hangs up."""
    request = await read_request(r)
    if request is None:
        return
    server.requests.append(request[0])
    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 16384
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    while True:
        w.write(frame)
        await w.drain()
        server.sent += len(chunk)


async def silent(server: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Read the request and never answer."""
    request = await read_request(r)
    if request is not None:
        server.requests.append(request[0])
    await r.read()


@dataclass
class RawServer:
    """A TCP server that counts every connection made to it and runs `handler` on each."""

    handler: RawHandler = http_ok
    host: str = "127.0.0.1"
    port: int = 0
    close_each: bool = False
    connections: int = 0
    sent: int = 0
    requests: list[bytes] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self.handler(self, reader, writer)
            self.ended.append("done")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self.ended.append(type(exc).__name__)
        finally:
            self._writers.discard(writer)
            writer.close()

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        name = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{name}:{self.port}{path}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.sleep(0)


# --- the whole daemon with a resolver of the test's choosing ---------------------------------


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, resolver: AbstractResolver | None = None
) -> AsyncIterator[App]:
    """Run the App in this event loop, its sender resolving names through `resolver`."""
    app = App(settings)
    if resolver is not None:
        app.sender.resolver = resolver
    task = asyncio.create_task(app.run())
    try:
        for _ in range(500):
            if app.tasks.get("dispatcher") is not None or task.done():
                break
            await asyncio.sleep(0.01)
        yield app
    finally:
        if not task.done():
            app.request_stop("test-end")
        await asyncio.wait_for(task, timeout=30)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
