"""`stats`: the depths of the dispatch queues, the claims by owner, and the outbox."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.models import JsonObject
from cycles_events.store import Store

WALK = 1000
# Our claim tokens: a random process prefix and a sequence number; Java's: a random UUID.
_OURS = re.compile(r"[0-9a-f]{16}:[0-9]+")
_JAVA = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
OWNER_KINDS = ("ours", "java", "orphan", "unowned", "other")


def owner_kind(owner: str | None) -> str:
    """Who holds a claim: this service, the Java service, Java's orphan mark, nobody yet."""
    if owner is None:
        return "unowned"
    if owner == keys.ORPHAN:
        return "orphan"
    if _OURS.fullmatch(owner):
        return "ours"
    if _JAVA.fullmatch(owner):
        return "java"
    return "other"


@dataclass(slots=True)
class ClaimGroup:
    """The claims of one owner kind."""

    count: int = 0
    oldest_age_s: float | None = None
    idle: int = 0  # claimed longer ago than the recovery idle: due for recovery

    def add(self, age_s: float | None, idle_s: float) -> None:
        """Count one claim of this kind."""
        self.count += 1
        if age_s is not None:
            self.oldest_age_s = max(age_s, self.oldest_age_s or 0.0)
            self.idle += age_s > idle_s


@dataclass(frozen=True, slots=True)
class Outbox:
    """The meta-event outbox: staged tasks and dead letters."""

    pending: int
    due: int
    oldest_age_s: float | None
    dead_letters: int


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
    claims: dict[str, ClaimGroup] = field(default_factory=dict)
    outbox: Outbox | None = None

    def as_json(self) -> JsonObject:
        """The JSON form (stable field names for scripts)."""
        out: JsonObject = {
            "pending": self.pending,
            "retry": self.retry,
            "retry_due": self.retry_due,
            "retry_due_next_minute": self.retry_due_next_minute,
            "processing": self.processing,
            "quarantine": self.quarantine,
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "claims": {
                kind: {"count": g.count, "oldest_age_s": g.oldest_age_s, "idle": g.idle}
                for kind, g in self.claims.items()
            },
        }
        if self.outbox is not None:
            o = self.outbox
            out["outbox"] = {
                "pending": o.pending,
                "due": o.due,
                "oldest_age_s": o.oldest_age_s,
                "dead_letters": o.dead_letters,
            }
        return out


async def server_ms(redis: Redis) -> int:
    """Redis's clock, which claim times are written in."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def claims(redis: Redis, now_ms: int, idle_ms: int) -> dict[str, ClaimGroup]:
    """Every entry of dispatch:processing by owner kind, with the age of its claim."""
    groups = {kind: ClaimGroup() for kind in OWNER_KINDS}
    start = 0
    while True:
        listed: list[Any] = await redis.lrange(keys.PROCESSING, start, start + WALK - 1)
        if not listed:
            return groups
        pipe = redis.pipeline(transaction=False)
        pipe.hmget(keys.CLAIM_OWNER, listed)
        pipe.zmscore(keys.CLAIMED_AT, listed)
        owners, times = await pipe.execute()
        for owner, at in zip(owners, times, strict=True):
            kind = owner_kind(owner.decode("utf-8", "replace") if owner is not None else None)
            age = None if at is None else max(0.0, (now_ms - at) / 1000)
            groups[kind].add(age, idle_ms / 1000)
        start += WALK


async def outbox(redis: Redis, now_ms: int) -> Outbox:
    """The outbox's staged tasks (due now, the oldest) and its dead letters."""
    pipe = redis.pipeline(transaction=False)
    pipe.zcard(keys.OUTBOX_PENDING)
    pipe.zcount(keys.OUTBOX_PENDING, "-inf", now_ms)
    pipe.zrange(keys.OUTBOX_PENDING, 0, 0, withscores=True)
    pipe.llen(keys.OUTBOX_FAILED)
    pending, due, first, dead = await pipe.execute()
    oldest = max(0.0, (now_ms - first[0][1]) / 1000) if first else None
    return Outbox(int(pending), int(due), oldest, int(dead))


async def stats(redis: Redis, at_ms: int, idle_ms: int = 180_000) -> Stats:
    """Depths of the queues, the claims by owner and the outbox."""
    depths = await Store(redis).depths(at_ms)
    soon = int(await redis.zcount(keys.RETRY, f"({at_ms}", at_ms + 60_000))
    now = await server_ms(redis)
    return Stats(
        pending=depths.pending,
        retry=depths.retry,
        retry_due=depths.retry_due,
        retry_due_next_minute=soon,
        processing=depths.processing,
        quarantine=depths.failed,
        oldest_pending_age_s=depths.oldest_pending_age_s,
        claims=await claims(redis, now, idle_ms),
        outbox=await outbox(redis, now),
    )
