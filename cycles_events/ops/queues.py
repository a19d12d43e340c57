"""`stats`: the depths of the dispatch queues."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.models import JsonObject
from cycles_events.store import Store


@dataclass(frozen=True, slots=True)
class Stats:
    """Queue depths for `cycles-events stats`."""

    pending: int
    retry: int
    retry_due: int
    retry_due_next_minute: int
    processing: int
    quarantine: int
    oldest_pending_age_s: float | None

    def as_json(self) -> JsonObject:
        """The JSON form (stable field names for scripts)."""
        return {
            "pending": self.pending,
            "retry": self.retry,
            "retry_due": self.retry_due,
            "retry_due_next_minute": self.retry_due_next_minute,
            "processing": self.processing,
            "quarantine": self.quarantine,
            "oldest_pending_age_s": self.oldest_pending_age_s,
        }


async def stats(redis: Redis, at_ms: int) -> Stats:
    """Depths of dispatch:pending, :retry (due now / within a minute), :processing and :failed."""
    depths = await Store(redis).depths(at_ms)
    soon = int(await redis.zcount(keys.RETRY, f"({at_ms}", at_ms + 60_000))
    return Stats(
        pending=depths.pending,
        retry=depths.retry,
        retry_due=depths.retry_due,
        retry_due_next_minute=soon,
        processing=depths.processing,
        quarantine=depths.failed,
        oldest_pending_age_s=depths.oldest_pending_age_s,
    )
