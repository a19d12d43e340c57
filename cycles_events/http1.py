"""A lean HTTP/1.1 client for webhook POSTs: pooled keep-alive connections, bounded reads.

It does only what a delivery needs, which costs a fraction of a general client's CPU: write one
request, read the status line and headers (bounded in size and number), read and discard at
most 64 KiB of body (Content-Length, chunked, or up to the close), and keep the connection when
the answer allows it. It never follows a redirect (it does not know how), reads no proxy
settings, and connects only to the address the caller judged.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import NamedTuple, cast

MAX_RESPONSE_BYTES = 64 * 1024
MAX_HEADER_LINE = 8190
MAX_HEADERS = 100
MAX_HEAD_BYTES = 64 * 1024
IDLE_S = 15.0  # an idle connection kept longer than this is closed rather than reused
_END = b"\r\n\r\n"


class HttpError(Exception):
    """The answer is not the HTTP/1.1 this client reads; the message says how."""


class ClosedEarly(ConnectionError):
    """The server closed the connection before a whole answer."""


class Answer(NamedTuple):
    """A response's status, its Retry-After value, and whether the connection may be reused."""

    status: int
    retry_after: str | None
    reusable: bool


_BODY_NONE, _BODY_LENGTH, _BODY_CHUNKED, _BODY_CLOSE = 0, 1, 2, 3


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection, answering one request at a time."""

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.deadline = 0.0  # loop time by which the request under way must be answered
        self.received = False  # whether any byte of an answer came during this exchange
        self._buf = bytearray()
        self._waiter: asyncio.Future[Answer] | None = None
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._retry_after: str | None = None
        self._keep = True
        self._mode = -1  # the head is not read yet
        self._left = 0  # body bytes (or bytes of the current chunk) still to read
        self._read = 0  # body bytes read
        self._scan = 0  # where to look for the end of the head

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        """Read what came, and answer the waiting request once its response is whole."""
        waiter = self._waiter
        if waiter is None or waiter.done():  # bytes nobody asked for: the connection is spoiled
            self.close()
            return
        self.received = True
        self._buf += data
        try:
            answer = self._feed()
        except HttpError as exc:
            self.close()
            waiter.set_exception(exc)
            return
        if answer is not None:
            self._waiter = None
            waiter.set_result(answer)

    def eof_received(self) -> bool:
        """The server finished sending: ends a body read up to the close."""
        waiter = self._waiter
        self._keep = False
        if waiter is not None and not waiter.done():
            if self._mode == _BODY_CLOSE:
                self._waiter = None
                waiter.set_result(Answer(self._status, self._retry_after, False))
            else:
                waiter.set_exception(ClosedEarly("connection closed by the server"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: a request waiting on it fails."""
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ClosedEarly("connection closed by the server"))

    # --- requests ---------------------------------------------------------------------------

    def exchange(self, request: bytes) -> asyncio.Future[Answer]:
        """Send one request (head and body); the future of its whole answer."""
        # a future, not a coroutine: each resume of the sending worker passes one frame fewer;
        # the answer clears the waiter, a failure leaves it done on a connection being closed
        assert self.transport is not None
        self._reset()
        self._buf.clear()
        self.received = False
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self.transport.write(request)
        return waiter

    def expire(self) -> None:
        """The request under way ran out of time: it fails, and the connection is closed."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())
        self.close()

    def close(self) -> None:
        """Close at once (what is unread is dropped)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # --- the response -----------------------------------------------------------------------

    def _feed(self) -> Answer | None:
        if self._mode < 0 and not self._head():
            return None
        mode = self._mode
        if mode == _BODY_NONE:
            done = True
        elif mode == _BODY_LENGTH:
            take = min(self._left, len(self._buf))
            self._left -= take
            self._read += take
            del self._buf[:take]
            done = self._left == 0
        elif mode == _BODY_CHUNKED:
            done = self._chunks()
        else:  # read up to the close, bounded
            self._read += len(self._buf)
            self._buf.clear()
            done = False
        if self._read >= MAX_RESPONSE_BYTES and not done:  # more than we read: drop it
            self._keep = False
            return Answer(self._status, self._retry_after, False)
        if not done:
            return None
        reusable = self._keep and not self._buf
        return Answer(self._status, self._retry_after, reusable)

    def _head(self) -> bool:
        buf = self._buf
        end = buf.find(_END, self._scan)
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                raise HttpError("response head too large")
            self._scan = max(0, len(buf) - 3)
            return False
        if end > MAX_HEAD_BYTES:
            raise HttpError("response head too large")
        lines = bytes(buf[:end]).split(b"\r\n")
        del buf[: end + 4]
        if len(lines) - 1 > MAX_HEADERS:
            raise HttpError("too many header lines")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise HttpError("not an HTTP/1.x status line")
        if len(lines[0]) > MAX_HEADER_LINE:
            raise HttpError("status line too long")
        self._status = status = int(code)
        self._keep = version == b"HTTP/1.1"
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            if len(line) > MAX_HEADER_LINE:
                raise HttpError("header line too long")
            name, colon, value = line.partition(b":")
            if not colon or name[:1] in (b" ", b"\t"):
                continue  # folding or junk: nothing this client reads
            name = name.strip().lower()
            if name == b"content-length":
                if not value.strip().isdigit() or (length is not None and length != int(value)):
                    raise HttpError("bad Content-Length")
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.strip().lower().endswith(b"chunked")
            elif name == b"connection":
                token = value.strip().lower()
                self._keep = token != b"close" and (self._keep or token == b"keep-alive")
            elif name == b"retry-after":
                self._retry_after = value.strip().decode("latin-1")
        if status < 200 or status in (204, 304):
            self._mode = _BODY_NONE
            self._keep = self._keep and status >= 200  # an interim answer ends the exchange
        elif chunked:
            self._mode, self._left = _BODY_CHUNKED, -1
        elif length is not None:
            self._mode, self._left = _BODY_LENGTH, length
        else:
            self._mode, self._keep = _BODY_CLOSE, False
        return True

    def _chunks(self) -> bool:
        """Read chunks; True at the end of the body (the last chunk and its trailer)."""
        buf = self._buf
        while True:
            if self._left > 0:
                take = min(self._left, len(buf))
                self._left -= take
                self._read += take
                del buf[:take]
                if self._left:
                    return False
                self._left = -2  # the CRLF after the data
            if self._left == -2:
                if len(buf) < 2:
                    return False
                if buf[:2] != b"\r\n":
                    raise HttpError("bad chunk")
                del buf[:2]
                self._left = -1
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                if len(buf) > MAX_HEADER_LINE:
                    raise HttpError("bad chunk size")
                return False
            size_text = bytes(buf[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpError("bad chunk size") from None
            if size == 0:  # the last chunk: then trailer lines, if any, and an empty line
                end = buf.find(_END, line_end)
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise HttpError("trailer too large")
                    return False
                del buf[: end + 4]
                return True
            del buf[: line_end + 2]
            self._left = size


class Pool:
    """Idle keep-alive connections by (scheme, host, port)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], deque[Connection]] = {}
        self.closed = False

    def take(self, key: tuple[str, str, int]) -> Connection | None:
        """An idle connection to reuse, if a fresh one is there."""
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn.close()
        return None

    def give_back(self, conn: Connection) -> None:
        """Keep a connection whose answer was read whole."""
        if self.closed or conn.closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, deque()).append(conn)

    def close(self) -> None:
        """Close every idle connection, and every one given back from now on."""
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
