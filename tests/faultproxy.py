"""A fault-injection TCP proxy for Redis that knows RESP command and reply boundaries."""

# async with FaultProxy(redis_server.port) as proxy:  # or proxy.start_in_thread()
#     client = Redis(port=proxy.port)
#     proxy.drop_reply(command("EVALSHA", sha))  # runs on Redis, the client never hears back
#     proxy.delay_reply("GET", 0.5)  # a str matches a command name
#     proxy.fail_request(script_contains("-- marker"))  # never reaches Redis
#     proxy.cut_all(); proxy.pause(); proxy.resume()  # a blip; Redis unreachable; back

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

Command = list[bytes]
Match = Callable[[Command], bool]
Handler = Callable[[bytearray, int, float], Awaitable[str]]
T = TypeVar("T")

_CHUNK = 256 * 1024
_SIMPLE = frozenset(b"+-:_,#(")  # one line: simple string, error, integer, null, double, bool, big
_BULK = frozenset(b"$!=")  # length-prefixed: bulk string, bulk error, verbatim string
_AGGREGATE = frozenset(b"*~>")  # count-prefixed: array, set, push
_PAIRS = frozenset(b"%|")  # count-prefixed pairs: map, attribute (then the value it annotates)
# after these the server talks on its own (pub/sub, MONITOR, replication) or not at all
_UNPAIRED = frozenset({b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"MONITOR", b"SYNC", b"PSYNC"})


class ProtocolError(Exception):
    """Bytes that are not RESP this proxy understands."""


def reply_end(buf: bytes | bytearray, pos: int = 0) -> int | None:
    """The end offset of the RESP2/RESP3 frame at `pos`, or None if it is incomplete."""
    pending = 1
    while pending:
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            return None
        kind, pending, start, pos = buf[pos], pending - 1, pos, nl + 2
        if kind in _SIMPLE:
            continue
        try:
            count = int(buf[start + 1 : nl])
        except ValueError:
            raise ProtocolError(f"bad length line {bytes(buf[start:nl])!r}") from None
        if kind in _BULK:
            pos += count + 2 if count >= 0 else 0
            if pos > len(buf):
                return None
        elif kind in _AGGREGATE:
            pending += max(count, 0)
        elif kind in _PAIRS:
            pending += 2 * max(count, 0) + (kind == ord("|"))
        else:
            raise ProtocolError(f"unknown RESP type {chr(kind)!r}")
    return pos


def parse_command(buf: bytes | bytearray, pos: int = 0) -> tuple[Command, int] | None:
    """The request at `pos` (array of bulk strings, or inline) and its end, or None if partial."""
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        return None
    if buf[pos] != ord("*"):  # inline command, as typed into telnet
        return bytes(buf[pos:nl]).split(), nl + 2
    args: Command = []
    try:
        for _ in range(int(buf[pos + 1 : nl])):
            pos = nl + 2
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                return None
            if buf[pos] != ord("$"):
                raise ProtocolError(f"expected a bulk string, got {bytes(buf[pos:nl])!r}")
            end = nl + 2 + int(buf[pos + 1 : nl])
            if end + 2 > len(buf):
                return None
            args.append(bytes(buf[nl + 2 : end]))
            nl = end
    except ValueError:
        raise ProtocolError("bad length in request") from None
    return args, nl + 2


def _request_end(buf: bytearray, pos: int) -> int | None:
    return None if (parsed := parse_command(buf, pos)) is None else parsed[1]


def command(name: str, *args: bytes | str) -> Match:
    """A predicate: the command is `name` (any case) and its first arguments equal `args`."""
    want = name.upper().encode()
    expected = [a.encode() if isinstance(a, str) else a for a in args]
    return lambda cmd: bool(cmd) and cmd[0].upper() == want and cmd[1 : 1 + len(args)] == expected


def script_contains(marker: bytes | str) -> Match:
    """A predicate: an EVAL or EVAL_RO whose script text contains `marker`."""
    needle = marker.encode() if isinstance(marker, str) else marker
    return lambda cmd: len(cmd) > 1 and cmd[0].upper() in (b"EVAL", b"EVAL_RO") and needle in cmd[1]


@dataclass(eq=False)
class Rule:
    """One fault: what it does, which commands it matches, how often (None: forever)."""

    kind: str  # "drop_reply", "delay_reply" or "fail_request"
    match: Match
    times: int | None = 1
    seconds: float = 0.0
    hits: int = 0

    def take(self, cmd: Command) -> bool:
        """Whether the rule applies to `cmd`, counting it if so."""
        applies = (self.times is None or self.hits < self.times) and bool(self.match(cmd))
        self.hits += applies
        return applies


class _Conn:
    """One client connection and its upstream connection, pumping whole frames both ways."""

    def __init__(self, proxy: FaultProxy, client: asyncio.StreamWriter) -> None:
        self.proxy, self.client = proxy, client
        self.upstream: asyncio.StreamWriter | None = None
        # per request in flight, what its reply gets: a rule, None, or "raw" (stop pairing)
        self.pending: deque[Rule | str | None] = deque()

    def close(self, abort: bool = False) -> None:
        """Close both sides: flushing what was written first, or (`abort`) with a TCP reset."""
        self.proxy._conns.discard(self)
        for writer in (self.client, self.upstream):
            if writer is not None and not writer.is_closing():
                if abort and (sock := writer.get_extra_info("socket")) is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                (writer.transport.abort if abort else writer.close)()

    async def run(self, reader: asyncio.StreamReader) -> None:
        """Connect upstream and pump until either side goes away."""
        try:
            up_reader, self.upstream = await asyncio.open_connection(
                self.proxy.upstream_host, self.proxy.upstream_port
            )
        except OSError:
            self.close()
            return
        pumps = [
            asyncio.create_task(self._pump(reader, self.upstream, _request_end, self._request)),
            asyncio.create_task(self._pump(up_reader, self.client, reply_end, self._reply)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.close()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        frame_end: Callable[[bytearray, int], int | None], handle: Handler,
    ) -> None:  # fmt: skip
        """Copy whole frames, in order, asking `handle` about each: forward, close or go raw."""
        buf, raw, loop = bytearray(), False, asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while data := await reader.read(_CHUNK):
                arrived, pos = loop.time(), 0
                buf += data
                while not raw:
                    try:
                        end = frame_end(buf, pos)
                    except ProtocolError:  # pass the rest through untouched
                        self.pending.append("raw")
                        raw = True
                        break
                    if end is None:
                        break
                    verdict = await handle(buf, pos, arrived)
                    if verdict == "close":
                        return
                    writer.write(buf[pos:end])
                    pos, raw = end, verdict == "raw"
                if raw:
                    writer.write(buf[pos:])
                    pos = len(buf)
                del buf[:pos]
                await writer.drain()

    async def _request(self, buf: bytearray, pos: int, arrived: float) -> str:
        """Count the command, fail it, or note what its reply gets."""
        cmd = (parse_command(buf, pos) or ([], 0))[0]
        if not cmd:
            return "forward"  # an empty inline line
        if self.proxy._rule("fail_request", cmd):
            self.proxy.failed_requests += 1
            return "close"  # what came before it was forwarded, and runs
        self.proxy.commands[cmd[0].decode(errors="replace").upper()] += 1
        head = [arg.upper() for arg in cmd[:2]]
        if head[0] in _UNPAIRED or head == [b"CLIENT", b"REPLY"]:
            self.pending.append("raw")
            return "raw"
        drop = self.proxy._rule("drop_reply", cmd)
        self.pending.append(drop or self.proxy._rule("delay_reply", cmd))
        return "forward"

    async def _reply(self, buf: bytearray, pos: int, arrived: float) -> str:
        """Pair the reply with its request, then pass, drop or hold it (and those after it)."""
        if buf[pos] == ord(">") and (not self.pending or self.pending[0] != "raw"):
            return "forward"  # out of band (RESP3 push): answers no request
        action = self.pending.popleft() if self.pending else None
        if action == "raw":
            return "raw"
        if isinstance(action, Rule) and action.kind == "drop_reply":
            self.proxy.dropped_replies += 1
            return "close"  # the replies before it were written, and get flushed
        if isinstance(action, Rule):
            self.proxy.delayed_replies += 1
            await asyncio.sleep(arrived + action.seconds - asyncio.get_running_loop().time())
        return "forward"


class FaultProxy:
    """A TCP proxy in front of one Redis server that drops, delays or fails whole commands."""

    def __init__(
        self, upstream_port: int, *, upstream_host: str = "127.0.0.1", host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:  # fmt: skip
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.host, self.port = host, port
        self.rules: list[Rule] = []
        self.commands: Counter[str] = Counter()  # forwarded commands by upper-case name
        self.dropped_replies = self.delayed_replies = self.failed_requests = 0
        self.accepted, self.paused = 0, False  # accepted: connections served while reachable
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """A redis:// URL that goes through the proxy."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def open_connections(self) -> int:
        """How many client connections are open now."""
        return len(self._conns)

    async def start(self) -> FaultProxy:
        """Listen (on a free port unless one was given) in the running event loop."""
        self._loop, self.paused = asyncio.get_running_loop(), False
        await self._serve(self._bind())
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        self._pause(refuse=True)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        self._pause(refuse=True)  # in case a resume() was still binding

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> FaultProxy:
        """Run the proxy in its own thread and event loop (for sync tests or other loops)."""
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="faultproxy", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=10)
        return self

    def stop_in_thread(self) -> None:
        """Stop a proxy started with `start_in_thread`, and its thread."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._thread = None

    # --- rules: picked when the request goes through, first added first ----------------------

    def drop_reply(self, match: Match | str, times: int | None = 1) -> Rule:
        """Forward matching commands, then close the connection instead of passing the reply."""
        return self._add(Rule("drop_reply", _as_match(match), times))

    def delay_reply(self, match: Match | str, seconds: float, times: int | None = None) -> Rule:
        """Hold matching replies (and, to keep order, the ones after them) for `seconds`."""
        return self._add(Rule("delay_reply", _as_match(match), times, seconds))

    def fail_request(self, match: Match | str, times: int | None = 1) -> Rule:
        """Close the connection instead of forwarding matching commands: they never run."""
        return self._add(Rule("fail_request", _as_match(match), times))

    def remove(self, rule: Rule) -> None:
        """Stop applying `rule`."""
        if rule in self.rules:
            self.rules.remove(rule)

    def clear(self) -> None:
        """Remove every rule (counters stay)."""
        self.rules.clear()

    def _add(self, rule: Rule) -> Rule:
        self.rules.append(rule)  # atomic, so fine from another thread
        return rule

    def _rule(self, kind: str, cmd: Command) -> Rule | None:
        return next((r for r in list(self.rules) if r.kind == kind and r.take(cmd)), None)

    # --- connection faults, callable from any thread -----------------------------------------

    def cut_all(self) -> int:
        """Reset every open connection now; new ones still work. Returns how many were cut."""
        return self._call(self._cut)

    def pause(self, refuse: bool = True) -> None:
        """Make Redis unreachable: cut connections, refuse new ones (or accept-and-close them)."""
        self._call(lambda: self._pause(refuse))

    def resume(self) -> None:
        """Make Redis reachable again, on the same port."""
        self._call(self._resume)

    def _cut(self) -> int:
        conns, self._conns = self._conns, set()
        for conn in conns:
            conn.close(abort=True)
        return len(conns)

    def _pause(self, refuse: bool) -> None:
        self.paused = True
        if refuse and self._server is not None:
            self._server.close()
            self._server = None
        self._cut()

    def _resume(self) -> None:
        self.paused = False
        if self._server is None:  # bound now, so connections queue before the server runs
            task = asyncio.ensure_future(self._serve(self._bind()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _bind(self) -> socket.socket:
        # with IPPROTO_TCP explicit, asyncio sets TCP_NODELAY on accepted sockets (no 40 ms stalls)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        return sock

    async def _serve(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._accept, sock=sock)

    def _call(self, fn: Callable[[], T]) -> T:
        if self._loop is None or self._thread in (None, threading.current_thread()):
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.paused:
            writer.transport.abort()
            return
        self.accepted += 1
        conn, task = _Conn(self, writer), asyncio.current_task()
        self._conns.add(conn)
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await conn.run(reader)
        finally:
            self._conns.discard(conn)


def _as_match(match: Match | str) -> Match:
    return command(match) if isinstance(match, str) else match
