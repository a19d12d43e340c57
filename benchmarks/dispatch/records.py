"""Records in the Cycles admin's format, written fast: pipelined commands on one connection.

The shapes are those of tests.support.Admin (contract section 1): an event is SET event:{id}
(EX 90 days) plus its index entries (events:{tenant}, events:_all, the correlation set); a
delivery is SET delivery:{id} (EX 14 days) plus ZADD deliveries:{subscription}. Pushing an id to
dispatch:pending is left to the phase that measures it, except for the backlog, which is pushed
in the same stream before the daemon starts. Subscriptions are few and written with Admin.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence

from cycles_events.models import dumps, format_instant
from tests.support import DELIVERY_TTL_S, EVENT_TTL_S, admin_event, now_ms

Command = Sequence[str | bytes]
PREFIX = os.urandom(4).hex()  # ids unique to this run
_serial = itertools.count()


def new_id(kind: str) -> str:
    """A fresh id of the admin's shape: kind_ and 16 hex digits."""
    return f"{kind}_{PREFIX}{next(_serial):08x}"


def encode(args: Command) -> bytes:
    """One command in RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


async def pipe(host: str, port: int, commands: Iterable[Command], chunk: int = 1 << 20) -> int:
    """Send every command on one connection without waiting; all replies must be one line.

    Returns how many commands were sent; raises on the first error reply.
    """
    reader, writer = await asyncio.open_connection(host, port)
    sent = replies = 0
    error = b""

    async def read() -> None:
        nonlocal replies, error
        last = b"\n"  # as if a line had just ended: a reply starting with - is an error
        while True:
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionError("redis closed the connection")
            replies += data.count(b"\n")  # one line a reply; a CRLF may straddle reads
            at = (last + data).find(b"\n-")
            if at >= 0 and not error:
                error = (last + data)[at + 1 :].split(b"\r\n", 1)[0]
            last = data[-1:]

    reading = asyncio.create_task(read())
    buf: list[bytes] = []
    size = 0
    try:
        for command in commands:
            data = encode(command)
            buf.append(data)
            size += len(data)
            sent += 1
            if size >= chunk:
                writer.write(b"".join(buf))
                buf, size = [], 0
                await writer.drain()
        writer.write(b"".join(buf))
        await writer.drain()
        while replies < sent:
            if reading.done():
                reading.result()  # raises what ended it
            await asyncio.sleep(0.005)
    finally:
        reading.cancel()
        writer.close()
    if error:
        raise RuntimeError(f"redis answered {error.decode(errors='replace')}")
    return sent


def event_commands(event_id: str, tenant: str = "acme") -> list[Command]:
    """An event and its index entries, as tests.support.Admin.event writes them."""
    created = now_ms()
    doc = admin_event(event_id, tenant, created)
    score = str(created)
    return [
        ("SET", f"event:{event_id}", dumps(doc), "EX", str(EVENT_TTL_S)),
        ("ZADD", f"events:{tenant}", score, event_id),
        ("ZADD", "events:_all", score, event_id),
        ("SADD", "events:correlation:req_1", event_id),
        ("EXPIRE", "events:correlation:req_1", str(EVENT_TTL_S)),
    ]


def delivery_commands(delivery_id: str, sub_id: str, event_id: str) -> list[Command]:
    """A PENDING delivery record and its index entry, as the admin writes them (no push)."""
    created = now_ms()
    doc = {
        "delivery_id": delivery_id,
        "subscription_id": sub_id,
        "event_id": event_id,
        "event_type": "budget.exhausted",
        "status": "PENDING",
        "attempted_at": format_instant(created),
        "attempts": 0,
    }
    return [
        ("SET", f"delivery:{delivery_id}", dumps(doc), "EX", str(DELIVERY_TTL_S)),
        ("ZADD", f"deliveries:{sub_id}", str(created), delivery_id),
    ]


async def deliveries(host: str, port: int, sub_ids: list[str], n: int) -> list[tuple[str, str]]:
    """n deliveries, each of its own event, spread over the subscriptions in turn; not pushed.

    Returns (delivery id, event id) pairs in order.
    """
    pairs = [(new_id("del"), new_id("evt")) for _ in range(n)]

    def commands() -> Iterator[Command]:
        for i, (delivery_id, event_id) in enumerate(pairs):
            yield from event_commands(event_id)
            yield from delivery_commands(delivery_id, sub_ids[i % len(sub_ids)], event_id)

    await pipe(host, port, commands())
    return pairs


async def backlog(host: str, port: int, sub_ids: list[str], n: int, events: int) -> None:
    """n deliveries sharing `events` events, pushed to dispatch:pending as they are written."""
    event_ids = [new_id("evt") for _ in range(events)]

    def commands() -> Iterator[Command]:
        for event_id in event_ids:
            yield from event_commands(event_id)
        batch: list[str] = []
        for i in range(n):
            delivery_id = new_id("del")
            yield from delivery_commands(
                delivery_id, sub_ids[i % len(sub_ids)], event_ids[i % events]
            )
            batch.append(delivery_id)
            if len(batch) == 1000 or i == n - 1:
                yield ("LPUSH", "dispatch:pending", *batch)
                batch = []

    await pipe(host, port, commands())
