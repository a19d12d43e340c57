"""The Java-protocol peer: workers, processing recovery, retry promotion and the outbox."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from types import TracebackType
from typing import Any

import aiohttp
from redis.asyncio import Redis

from tests.javapeer import scripts as k
from tests.javapeer.log import PeerLog
from tests.javapeer.options import PeerOptions
from tests.javapeer.outbox import Publisher
from tests.javapeer.records import load_key, texts, wall_ms
from tests.javapeer.worker import Worker


class PeerKilled(BaseException):
    """Raised at a kill point in freeze mode: the peer stops dead, writing nothing more."""


class JavaPeer:
    """A re-implementation of how Java cycles-server-events v0.1.25.24 uses the shared Redis."""

    def __init__(self, options: PeerOptions | None = None, **overrides: Any) -> None:
        """The options with `overrides` applied; nothing connects before connect() or start()."""
        self.options = replace(options or PeerOptions(), **overrides)
        self.key = load_key(self.options.encryption_key)
        self.log = PeerLog(self.options.log, peer=self.options.name)
        self.stopping = asyncio.Event()
        self.dead = False
        self.counts = {"send": 0, "blmove": 0}
        self.workers = [Worker(self, i) for i in range(self.options.workers)]
        self.tasks: list[asyncio.Task[None]] = []
        self._redis: Redis | None = None
        self._http: aiohttp.ClientSession | None = None
        self._sc: k.Scripts | None = None
        self._publisher: Publisher | None = None

    # --- resources -------------------------------------------------------------------------

    @property
    def redis(self) -> Redis:
        """The peer's Redis client (decoded strings)."""
        assert self._redis is not None, "call connect() or start() first"
        return self._redis

    @property
    def http(self) -> aiohttp.ClientSession:
        """The peer's HTTP client (redirects never followed)."""
        assert self._http is not None, "call connect() or start() first"
        return self._http

    @property
    def sc(self) -> k.Scripts:
        """The registered Lua scripts."""
        assert self._sc is not None, "call connect() or start() first"
        return self._sc

    @property
    def publisher(self) -> Publisher:
        """The outbox publisher (its loop runs only when the option is on)."""
        assert self._publisher is not None, "call connect() or start() first"
        return self._publisher

    def now(self) -> int:
        """The peer's clock, epoch ms."""
        return wall_ms(self.options.clock_skew_ms)

    async def connect(self) -> None:
        """Open Redis and HTTP without starting any loop (for step-by-step tests)."""
        if self._redis is not None:
            return
        self._redis = Redis.from_url(self.options.redis_url, decode_responses=True)
        self._sc = k.Scripts(self._redis)
        timeout = aiohttp.ClientTimeout(
            total=self.options.http_timeout_s, sock_connect=self.options.connect_timeout_s
        )
        self._http = aiohttp.ClientSession(timeout=timeout)
        self._publisher = Publisher(
            self._redis,
            self._sc,
            self.log,
            ttl_days=self.options.event_ttl_days,
            skew_ms=self.options.clock_skew_ms,
        )
        await self._redis.ping()

    async def start(self) -> None:
        """Connect, run one recovery pass, then start the workers and the loops."""
        await self.connect()
        await self.recover_once()
        self.log.emit("started", None, workers=len(self.workers), pid=os.getpid())
        for worker in self.workers:
            self.tasks.append(asyncio.create_task(worker.run(), name=f"javapeer-w{worker.index}"))
        self.tasks.append(
            asyncio.create_task(
                self._every(self.options.recovery_interval_ms, self.recover_once), name="recovery"
            )
        )
        self.tasks.append(
            asyncio.create_task(
                self._every(self.options.retry_poll_ms, self.promote_once), name="retry"
            )
        )
        if self.options.publisher:
            poll = self.options.publisher_poll_ms
            self.tasks.append(asyncio.create_task(self.publisher.run(poll, self.stopping)))

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: workers finish their delivery and their BLMOVE wait."""
        self.stopping.set()
        if self._publisher is not None:
            self._publisher.kick.set()
        if timeout is None:
            timeout = self.options.pending_timeout_s + self.options.http_timeout_s + 2
        if self.tasks:
            _, late = await asyncio.wait(self.tasks, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        self.log.emit("stopped", None)
        await self._close()

    async def kill(self) -> None:
        """Stop dead, as a crash would: cancel every task, write nothing more."""
        self.dead = True
        self.stopping.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        await self._close()

    async def _close(self) -> None:
        """Close HTTP, Redis and the log."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        self.log.close()

    async def __aenter__(self) -> JavaPeer:
        """Start the peer."""
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the peer (or finish killing it)."""
        if self.dead:
            await self.kill()
        else:
            await self.stop()

    async def run_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT (the CLI)."""
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.stopping.wait()
        await self.stop()

    # --- kill points and the ordering lock -------------------------------------------------

    def kill_point(self, name: str) -> None:
        """Die here when the option for this point says so (os._exit(137), or freeze)."""
        self.counts[name] += 1
        limit = {"send": self.options.die_after_send, "blmove": self.options.die_after_blmove}
        if limit[name] <= 0 or self.counts[name] != limit[name]:
            return
        self.log.emit("dying", None, point=name, count=self.counts[name])
        if self.options.die_mode == "exit":
            self.log.close()
            os._exit(137)
        self.dead = True
        self.stopping.set()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        raise PeerKilled(name)

    @contextlib.asynccontextmanager
    async def ordering_lease(self) -> AsyncIterator[None]:
        """Hold dispatch:ordering:lock around a send when the option is on (Java does)."""
        if not self.options.ordering_lock:
            yield
            return
        token = str(uuid.uuid4())
        lease = self.options.ordering_lease_ms
        # polling a Redis lease (no local event can tell when another instance releases it)
        while not await self.redis.set(k.ORDERING_LOCK, token, nx=True, px=lease):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            if not self.dead:
                await self.sc.run(self.sc.release, [k.ORDERING_LOCK], [token])

    # --- the periodic passes ---------------------------------------------------------------

    async def _every(self, interval_ms: int, job: Callable[[], Awaitable[Any]]) -> None:
        """Run a job every interval until stopped; errors are logged, never fatal."""
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=interval_ms / 1000)
            if self.stopping.is_set():
                return
            try:
                await job()
            except Exception as exc:
                self.log.emit("error", None, job=job.__name__, error=type(exc).__name__)

    async def recover_once(self) -> list[str]:
        """One recovery pass over up to recovery_batch entries; the ids sent back to pending."""
        keys = [k.PROCESSING, k.CLAIMED_AT, k.CLAIM_OWNER, k.PENDING]
        args = [self.now(), self.options.recovery_idle_ms, self.options.recovery_batch]
        out = await self.sc.run(self.sc.recover, keys, args)
        stamped, recovered = int(out[0]), [str(x) for x in out[1:]]
        if stamped:
            self.log.emit("orphans_stamped", None, count=stamped)
        for delivery_id in recovered:
            self.log.emit("recovered", delivery_id)
        return recovered

    async def promote_once(self) -> int:
        """Move due retries to the left of dispatch:pending, one by one; how many moved."""
        due = texts(
            await self.redis.zrangebyscore(k.RETRY, "-inf", self.now(), 0, self.options.retry_batch)
        )
        moved = 0
        for delivery_id in due:
            if await self.sc.run(self.sc.promote, [k.RETRY, k.PENDING], [delivery_id]) == 1:
                moved += 1
                self.log.emit("promoted", delivery_id)
        return moved

    async def publish_once(self) -> int:
        """Save every due outbox task once; how many were saved."""
        return await self.publisher.publish_due()

    async def step(self, worker: int = 0) -> str | None:
        """One BLMOVE + claim + lifecycle by one worker (for tests that drive the peer)."""
        return await self.workers[worker].step()
