"""Supervision shared by every stage: tracked tasks, faults that turn readiness DOWN, clocks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from cycles_events import logs
from cycles_events.connection import describe

# A fault that lasts this long, with no success in between, turns readiness DOWN.
PERSISTENT_AFTER_S = 10.0


class Faults:
    """Unexpected errors by component, and whether any of them persists."""

    def __init__(
        self,
        count: Callable[[], None] = lambda: None,
        *,
        clock: Callable[[], float] = time.monotonic,
        persistent_after_s: float | None = None,
    ) -> None:
        self._count = count
        self._clock = clock
        self._persistent_after_s = (
            PERSISTENT_AFTER_S if persistent_after_s is None else persistent_after_s
        )
        self._since: dict[str, float] = {}  # component -> first failure since its last success

    def failed(self, component: str, exc: BaseException, **ids: Any) -> None:
        """Log and count one unexpected error of a component."""
        self._count()
        self._since.setdefault(component, self._clock())
        logs.error(
            "unexpected_error",
            component=component,
            error=type(exc).__name__,
            detail=describe(exc) if "WRONGTYPE" not in str(exc) else str(exc)[:200],
            **ids,
        )

    def ok(self, component: str) -> None:
        """The component works again."""
        if self._since.pop(component, None) is not None:
            logs.info("component_recovered", component=component)

    def persistent(self) -> list[str]:
        """Components failing, without a success, for longer than the persistence window."""
        now = self._clock()
        return sorted(c for c, t in self._since.items() if now - t >= self._persistent_after_s)


class Tasks:
    """Every short task a stage starts: named, tracked, and never failing silently."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self._tasks: set[asyncio.Task[None]] = set()
        self._shielded: set[asyncio.Task[None]] = set()

    def spawn(
        self, coro: Coroutine[Any, Any, None], name: str, *, shielded: bool = False
    ) -> asyncio.Task[None]:
        """Start `coro`; a shielded task (a final write) is never cancelled by a drain."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        if shielded:
            self._shielded.add(task)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._shielded.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._faults.failed(task.get_name(), exc)

    @property
    def running(self) -> set[asyncio.Task[None]]:
        """The tasks not finished yet."""
        return set(self._tasks)

    async def drain(self, deadline: float) -> None:
        """Wait for every task until `deadline` (loop time), then cancel what may be cancelled."""
        loop = asyncio.get_running_loop()
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(set(self._tasks), timeout=deadline - loop.time())
        for task in self._tasks - self._shielded:
            task.cancel()


class ServerClock:
    """Epoch milliseconds on Redis's clock, so that every instance agrees whatever its own says.

    `sync` is fed Redis's TIME and the local monotonic time of the reading; between readings
    the local monotonic clock runs on from there. Until a reading, it is the local clock.
    """

    def __init__(self) -> None:
        self._offset_ms = time.time() * 1000 - time.monotonic() * 1000

    def sync(self, server_ms: int, at_monotonic: float) -> None:
        """Take a reading of Redis's clock."""
        self._offset_ms = server_ms - at_monotonic * 1000

    def __call__(self) -> int:
        """Now, in epoch ms."""
        return int(time.monotonic() * 1000 + self._offset_ms)
