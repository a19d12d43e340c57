"""Group commit: operations queued while one batch is in flight go out together in the next."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Runs `execute` on batches of submitted operations, one batch at a time."""

    def __init__(
        self, name: str, execute: Callable[[list[T]], Awaitable[list[R]]], max_batch: int = 256
    ) -> None:
        self.name = name
        self._execute = execute
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, op: T) -> R:
        """Queue one operation and wait for its result (or its batch's exception)."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((op, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=f"group-commit:{self.name}")
        return await fut

    async def _flush(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            live = [(op, fut) for op, fut in batch if not fut.cancelled()]
            if not live:
                continue
            try:
                results = await self._execute([op for op, _ in live])
            except Exception as exc:
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            except BaseException:
                for _, fut in live:
                    if not fut.done():
                        fut.cancel()
                raise
            for (_, fut), result in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
