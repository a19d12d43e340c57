"""The outbox publisher: saves staged meta-events (ours and the Java service's), section 7."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from redis.asyncio import Redis

from cycles_events import keys, logs
from cycles_events.connection import UNAVAILABLE, RedisIO, RedisState
from cycles_events.metrics import Metrics
from cycles_events.models import (
    SYSTEM_TENANT,
    JsonObject,
    RecordError,
    dumps,
    loads_object,
    parse_instant_ms,
    text,
)

LOCK_MS = 30_000
MAX_ATTEMPTS = 100
DEAD_LETTERS_KEPT = 10_000
POLL_S = 1.0
DUE_PER_POLL = 100
FIRST_DEFER_MS = 1000  # doubled after each failed publish
MAX_DEFER_MS = 60_000


class Staged(NamedTuple):
    """A task as read: its JSON, and its event when the JSON holds a usable one."""

    raw: str
    event: JsonObject | None
    created_ms: int | None


def read_task(raw: str) -> Staged:
    """Parse a task `{task_id, created_at, event}`; an unusable event reads as None."""
    try:
        doc = loads_object(raw)
    except RecordError:
        return Staged(raw, None, None)
    event = doc.get("event")
    created = parse_instant_ms(doc.get("created_at"))
    if not isinstance(event, dict) or text(event, "event_id") is None:
        return Staged(raw, None, created)
    return Staged(raw, event, created)


class OutboxStore(RedisIO):
    """The outbox's Redis operations."""

    def __init__(self, redis: Redis, state: RedisState) -> None:
        super().__init__(redis, state)
        self._publish = redis.register_script(keys.PUBLISH)
        self._defer = redis.register_script(keys.DEFER)

    async def due(self, now_ms: int, limit: int) -> list[str]:
        """Task ids whose next attempt is due."""
        raw: Any = await self._run(
            self.redis.zrangebyscore(keys.OUTBOX_PENDING, "-inf", now_ms, start=0, num=limit)
        )
        return [r.decode("utf-8", "surrogateescape") for r in raw]

    async def task(self, task_id: str) -> str | None:
        """A staged task's JSON."""
        raw: Any = await self._run(self.redis.get(keys.outbox_task(task_id)))
        return None if raw is None else raw.decode("utf-8", "surrogateescape")

    async def publish(
        self, task_id: str, staged: str, event: JsonObject | None, token: str, ttl_s: int, now: int
    ) -> tuple[str, str | None]:
        """Save the task's event and remove the task, under its lock: (result, why)."""
        event = event or {}
        event_id = str(event.get("event_id", ""))
        tenant = text(event, "tenant_id") or SYSTEM_TENANT
        corr = text(event, "correlation_id")
        score = parse_instant_ms(event.get("timestamp")) or now
        reply: Any = await self._run(
            self._publish(
                keys=[
                    keys.outbox_lock(task_id),
                    keys.outbox_task(task_id),
                    keys.OUTBOX_PENDING,
                    keys.OUTBOX_ATTEMPTS,
                    keys.event(event_id),
                    keys.tenant_events(tenant),
                    keys.EVENTS_ALL,
                    keys.correlation(corr or "_"),
                ],
                args=[
                    token,
                    LOCK_MS,
                    task_id,
                    staged,
                    dumps(event),
                    ttl_s,
                    score,
                    event_id,
                    "1" if corr else "0",
                ],
            )
        )
        if isinstance(reply, list):
            return "error", reply[1].decode() if len(reply) > 1 else None
        return reply.decode(), None

    async def defer(self, task_id: str, payload: str, max_attempts: int) -> tuple[str, int]:
        """Count a failed publish; after `max_attempts` the task becomes a dead letter."""
        entry = dumps({"task_id": task_id, "payload": payload})
        result, attempts = await self._run(
            self._defer(
                keys=[
                    keys.OUTBOX_PENDING,
                    keys.OUTBOX_ATTEMPTS,
                    keys.OUTBOX_FAILED,
                    keys.outbox_task(task_id),
                    keys.outbox_lock(task_id),
                ],
                args=[
                    task_id,
                    FIRST_DEFER_MS,
                    max_attempts,
                    entry,
                    DEAD_LETTERS_KEPT,
                    MAX_DEFER_MS,
                ],
            )
        )
        return result.decode(), int(attempts)


class Publisher:
    """Publishes tasks right after they are staged, and polls for any left (Java's too)."""

    def __init__(
        self,
        store: OutboxStore,
        metrics: Metrics,
        *,
        event_ttl_s: int,
        clock: Callable[[], int],
        poll_s: float = POLL_S,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._event_ttl_s = event_ttl_s
        self._clock = clock
        self._poll_s = poll_s
        self._token = secrets.token_hex(8)
        self._soon: dict[str, None] = {}
        self._wake = asyncio.Event()

    def soon(self, task_ids: Sequence[str]) -> None:
        """Tasks were just staged: publish them now rather than at the next poll."""
        for task_id in task_ids:
            self._soon[task_id] = None
        self._wake.set()

    async def step(self) -> float:
        """Publish what was staged or is due; the seconds until the next poll."""
        ids = list(self._soon)
        self._soon.clear()
        for task_id in await self._store.due(self._clock(), DUE_PER_POLL):
            if task_id not in ids:
                ids.append(task_id)
        for task_id in ids:
            try:
                await self.publish(task_id)
            except UNAVAILABLE:
                self.soon(ids[ids.index(task_id) :])
                raise
        return 0.0 if self._soon else self._poll_s

    async def wait(self, seconds: float) -> None:
        """Sleep until the next poll or until a task is staged."""
        self._wake.clear()
        if self._soon:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def publish(self, task_id: str) -> str:
        """Publish one task: 'published', 'locked', 'gone', 'deferred' or 'dead'."""
        raw = await self._store.task(task_id)
        staged = read_task(raw) if raw is not None else Staged("", None, None)
        event_type = (text(staged.event, "event_type") if staged.event else None) or "UNKNOWN"
        if raw is not None and staged.event is None:
            return await self._defer(task_id, raw, event_type, "invalid_task", dead_now=True)
        try:
            result, why = await self._store.publish(
                task_id, staged.raw, staged.event, self._token, self._event_ttl_s, self._clock()
            )
        except UNAVAILABLE:
            raise
        except Exception as exc:  # a save refused as a whole: put off like any failed save
            return await self._defer(task_id, staged.raw, event_type, type(exc).__name__)
        if result == "published":
            self._metrics.event_published.labels(event_type).inc()
            logs.info("meta_event_published", task_id=task_id, event_type=event_type)
        elif result == "error":
            logs.warning("meta_event_save_failed", task_id=task_id, error=why)
            return await self._defer(task_id, staged.raw, event_type, "save_failed")
        return result

    async def _defer(
        self, task_id: str, payload: str, event_type: str, reason: str, *, dead_now: bool = False
    ) -> str:
        # an unreadable task can never be published: a dead letter at once
        most = 1 if dead_now else MAX_ATTEMPTS
        result, attempts = await self._store.defer(task_id, payload, most)
        if result == "dead":
            self._metrics.event_dead_lettered.labels(event_type, reason).inc()
            logs.error(
                "meta_event_dead_lettered", task_id=task_id, reason=reason, attempts=attempts
            )
        elif result == "deferred":
            self._metrics.event_deferred.labels(event_type, reason).inc()
        return result
