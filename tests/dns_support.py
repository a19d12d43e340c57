"""A real DNS server on loopback (dnslib over UDP) and an aiohttp resolver that queries it."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import socket
from collections import defaultdict
from dataclasses import dataclass, field

from aiohttp.abc import AbstractResolver, ResolveResult
from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord

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
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.DatagramTransport)
                server._transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                reply = server.reply(data)
                if reply is not None and server._transport is not None:
                    server._transport.sendto(reply, addr)

        await loop.create_datagram_endpoint(Protocol, local_addr=("127.0.0.1", 0))
        assert self._transport is not None
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
                reply.add_answer(RR(q.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=TTL))
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
