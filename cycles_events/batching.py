"""Group commit: operations queued while one batch is in flight go out together in the next."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# told the result of an operation, or the exception that failed its batch
Done = Callable[[R | None, BaseException | None], None]


class GroupCommit(Generic[T, R]):
    """Runs `execute` on batches of submitted operations, one batch at a time."""

    def __init__(
        self, name: str, execute: Callable[[list[T]], Awaitable[list[R]]], max_batch: int = 256
    ) -> None:
        self.name = name
        self._execute = execute
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R] | Done[R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, op: T) -> R:
        """Queue one operation and wait for its result (or its batch's exception)."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._enqueue(op, fut)
        return await fut

    def push(self, op: T, done: Done[R]) -> None:
        """Queue one operation without waiting; `done` is called when its batch is over."""
        self._enqueue(op, done)

    def _enqueue(self, op: T, waiter: asyncio.Future[R] | Done[R]) -> None:
        self._queue.append((op, waiter))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=f"group-commit:{self.name}")

    async def idle(self) -> None:
        """Wait until everything queued so far has been executed."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait({self._flusher})

    async def _flush(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            live = [(op, w) for op, w in batch if not (isinstance(w, asyncio.Future) and w.done())]
            if not live:
                continue
            try:
                results = await self._execute([op for op, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"{self.name}: {len(results)} results for {len(live)}")
            except Exception as exc:
                self._settle(live, None, exc)
                continue
            except BaseException as exc:
                self._settle(live, None, exc)
                raise
            self._settle(live, results, None)

    def _settle(
        self,
        live: list[tuple[T, asyncio.Future[R] | Done[R]]],
        results: list[R] | None,
        exc: BaseException | None,
    ) -> None:
        for i, (_, waiter) in enumerate(live):
            if not isinstance(waiter, asyncio.Future):
                waiter(results[i] if results is not None else None, exc)
            elif waiter.done():
                continue
            elif results is not None:
                waiter.set_result(results[i])
            elif isinstance(exc, Exception):
                waiter.set_exception(exc)
            else:
                waiter.cancel()
