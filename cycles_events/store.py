"""All Redis I/O of the dispatcher, through the key names and scripts of `keys`."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from cycles_events import keys
from cycles_events.connection import RedisIO, RedisState
from cycles_events.models import JsonObject, dumps, parse_instant_ms, text
from cycles_events.storevalues import (
    Claimed,
    QueueDepths,
    Recovered,
    Related,
    Reply,
    Write,
    bytes_list,
    outcome_args,
    related_of,
    related_reply,
    reply,
    text_of,
    to_bytes,
)

# A claim of this many ids or fewer reads the records they name too (see claim.lua)
CLAIM_READS_RELATED_UP_TO = 8
HEARTBEAT_CHUNK = 2000


class Store(RedisIO):
    """Redis operations of the dispatcher; every change of state is one Lua script."""

    def __init__(
        self, redis: Redis, blocking: Redis | None = None, state: RedisState | None = None
    ) -> None:
        super().__init__(redis, state)
        self.blocking = blocking or redis
        r = redis
        self._claim = r.register_script(keys.CLAIM)
        self._outcome = r.register_script(keys.OUTCOME)
        self._heartbeat = r.register_script(keys.HEARTBEAT)
        self._recover = r.register_script(keys.RECOVER)
        self._promote = r.register_script(keys.PROMOTE)
        self._save_event = r.register_script(keys.SAVE_EVENT)
        self._trim = r.register_script(keys.TRIM_ZSET)
        self._cas = r.register_script(keys.CAS)

    async def ping(self) -> bool:
        """PING Redis."""
        return bool(await self._run(self.redis.ping()))

    async def server_time_ms(self) -> tuple[int, float]:
        """Redis's clock in epoch ms, and the local monotonic time half-way through the call."""
        before = time.monotonic()
        seconds, micros = await self._run(self.redis.time())
        return seconds * 1000 + micros // 1000, (before + time.monotonic()) / 2

    async def claim(
        self,
        limit: int,
        token: str,
        *,
        due: bool = False,
        again: bool = False,
        moved: str = "",
        read_up_to: int,
    ) -> Claimed:
        """Claim up to `limit` ids of pending (or due retries), first the id `wait_for_one`
        moved, if any, with their records and what those name when at most `read_up_to` came;
        `again` (the same token after a lost reply) answers what that call claimed instead of
        taking more."""
        ids, dups, records, now, *rel = await self._run(
            self._claim(
                keys=[
                    keys.RETRY if due else keys.PENDING,
                    keys.PROCESSING,
                    keys.CLAIMED_AT,
                    keys.CLAIM_OWNER,
                ],
                args=[
                    limit,
                    token,
                    keys.DELIVERY_PREFIX,
                    "again" if again else "",
                    "due" if due else "pending",
                    read_up_to,
                    *keys.RELATED_PREFIXES,
                    moved,
                ],
            )
        )
        related = related_reply(*rel) if rel else None
        read = None if records is None else bytes_list(records)
        return Claimed([text_of(i) for i in ids], read, int(dups), int(now), related)

    async def wait_for_one(self, timeout_s: float) -> str | None:
        """Wait up to `timeout_s` for one id and move it to processing (BLMOVE, as Java does)."""
        timeout: Any = timeout_s  # redis-py types it as int; Redis accepts fractional seconds
        raw = await self._run(
            self.blocking.blmove(keys.PENDING, keys.PROCESSING, timeout, "RIGHT", "LEFT")
        )
        return None if raw is None else text_of(raw)

    async def load_deliveries(self, ids: Sequence[str]) -> list[bytes | None]:
        """The delivery records of `ids`, in order."""
        return bytes_list(await self._run(self.redis.mget([keys.delivery(i) for i in ids])))

    async def load_related(
        self, event_ids: Sequence[str], subscription_ids: Sequence[str]
    ) -> Related:
        """Events, subscriptions and secrets for a batch, in one round trip."""
        ev = list(dict.fromkeys(event_ids))
        subs = list(dict.fromkeys(subscription_ids))
        names = (
            [keys.event(e) for e in ev]
            + [keys.subscription(s) for s in subs]
            + [keys.secret(s) for s in subs]
            + [keys.previous_secret(s) for s in subs]
        )
        if not names:
            return Related({}, {}, {})
        return related_of(ev, subs, bytes_list(await self._run(self.redis.mget(names))))

    async def record(self, writes: Sequence[Write], failed_max_len: int) -> list[Reply]:
        """Run the OUTCOME script on a batch of writes: one reply per write, in order."""
        if not writes:
            return []
        args: list[str | int] = [
            failed_max_len,
            keys.DELIVERY_PREFIX,
            keys.SUBSCRIPTION_PREFIX,
            keys.OUTBOX_TASK_PREFIX,
            len(writes),
        ]
        args += [w.delivery_id for w in writes]
        for w in writes:
            args += outcome_args(w)
        raw = await self._run(self._outcome(keys=keys.OUTCOME_KEYS, args=args))
        return [reply(r) for r in raw]

    async def heartbeat(self, ids: Sequence[str], owner_prefix: str) -> int:
        """Refresh the claim time of the ids this process still owns."""
        refreshed = 0
        for i in range(0, len(ids), HEARTBEAT_CHUNK):
            chunk = ids[i : i + HEARTBEAT_CHUNK]
            refreshed += int(
                await self._run(
                    self._heartbeat(
                        keys=[keys.CLAIMED_AT, keys.CLAIM_OWNER], args=[owner_prefix, *chunk]
                    )
                )
            )
        return refreshed

    async def recover(self, idle_ms: int, start: int, count: int) -> Recovered:
        """One step of the walk that returns idle claims to pending."""
        ids, dated, nxt, length = await self._run(
            self._recover(
                keys=[keys.PENDING, keys.PROCESSING, keys.CLAIMED_AT, keys.CLAIM_OWNER],
                args=[idle_ms, start, count],
            )
        )
        return Recovered([text_of(i) for i in ids], int(dated), int(nxt), int(length))

    async def promote(self, limit: int) -> tuple[int, int | None, int]:
        """Move due retries to pending: (moved, next due ms or None, Redis's now ms)."""
        moved, nxt, now = await self._run(
            self._promote(keys=[keys.RETRY, keys.PENDING], args=[limit])
        )
        next_ms = int(float(text_of(nxt)))
        return int(moved), (None if next_ms < 0 else next_ms), int(now)

    async def publish_limits(
        self, limits: dict[str, str], cleared: Sequence[str], ttl_ms: int
    ) -> None:
        """This instance's adaptive limits below the maximum, for the operator's CLI, less the
        ones it published before that are back at the maximum."""
        pipe = self.redis.pipeline(transaction=False)
        if cleared:
            pipe.hdel(keys.CONCURRENCY_LIMITS, *cleared)
        if limits:
            mapping: dict[Any, Any] = dict(limits)
            pipe.hset(keys.CONCURRENCY_LIMITS, mapping=mapping)
        pipe.pexpire(keys.CONCURRENCY_LIMITS, ttl_ms)
        await self._run(pipe.execute(raise_on_error=False))

    async def next_retry_ms(self) -> int | None:
        """When the earliest retry is due."""
        first = await self._run(self.redis.zrange(keys.RETRY, 0, 0, withscores=True))
        return int(first[0][1]) if first else None

    async def redis_uptime_s(self) -> int:
        """How long the Redis server has been up (a restart restores old claim times)."""
        info = await self._run(self.redis.info("server"))
        return int(info.get("uptime_in_seconds", 0))

    async def get_subscription(self, subscription_id: str) -> bytes | None:
        """The raw subscription record."""
        return to_bytes(await self._run(self.redis.get(keys.subscription(subscription_id))))

    async def cas_subscription(
        self, subscription_id: str, expected: str, new: str
    ) -> tuple[str, bytes | None]:
        """Compare-and-set a subscription: ('ok'|'missing'|'conflict', current when conflict)."""
        res = await self._run(
            self._cas(keys=[keys.subscription(subscription_id)], args=[expected, new])
        )
        status = text_of(res[0])
        return status, (to_bytes(res[1]) if status == "conflict" else None)

    async def save_event(self, event: JsonObject, ttl_seconds: int) -> None:
        """Save an event the way the admin server does (idempotent for a given event id)."""
        event_id = str(event["event_id"])
        tenant = text(event, "tenant_id") or "__system__"
        corr = text(event, "correlation_id")
        score = parse_instant_ms(event.get("timestamp")) or int(time.time() * 1000)
        await self._run(
            self._save_event(
                keys=[
                    keys.event(event_id),
                    keys.tenant_events(tenant),
                    keys.EVENTS_ALL,
                    keys.correlation(corr) if corr else keys.correlation("_"),
                ],
                args=[dumps(event), ttl_seconds, score, event_id, "1" if corr else "0"],
            )
        )

    async def security_config(self) -> bytes | None:
        """The raw config:webhook-security value."""
        return to_bytes(await self._run(self.redis.get(keys.SECURITY_CONFIG)))

    async def acquire_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        """Take a lock key for `ttl_ms` unless someone holds it."""
        return bool(await self._run(self.redis.set(name, token, nx=True, px=ttl_ms)))

    async def trim_indexes(self, pattern: str, cutoff_ms: int, scan_count: int = 500) -> int:
        """Trim index ZSETs matching `pattern` below `cutoff_ms`, skipping non-ZSET keys."""
        removed = 0
        cursor: int = 0
        while True:
            cursor, names = await self._run(
                self.redis.scan(cursor=cursor, match=pattern, count=scan_count)
            )
            if names:
                removed += await self._trim_batch(names, cutoff_ms)
            if cursor == 0:
                return removed

    async def _trim_batch(self, names: list[bytes | str], cutoff_ms: int) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            await self._trim(keys=[name], args=[cutoff_ms], client=pipe)
        results = await self._run(pipe.execute())
        return sum(int(r) for r in results if int(r) > 0)

    async def depths(self, now_ms: int) -> QueueDepths:
        """Queue depths and the age of the oldest pending delivery (a wrong type reads as 0)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(keys.PENDING)
        pipe.zcard(keys.RETRY)
        pipe.zcount(keys.RETRY, "-inf", now_ms)
        pipe.llen(keys.PROCESSING)
        pipe.llen(keys.FAILED)
        pipe.zcard(keys.OUTBOX_PENDING)
        pipe.lindex(keys.PENDING, -1)
        answers = await self._run(pipe.execute(raise_on_error=False))
        counts = [a if isinstance(a, int) else 0 for a in answers[:6]]
        pending, retry, due, processing, failed, outbox = counts
        oldest = answers[6] if isinstance(answers[6], bytes) else None
        age: float | None = None
        if oldest is not None:
            try:
                raw = to_bytes(await self._run(self.redis.get(keys.delivery(text_of(oldest)))))
            except ResponseError:  # a record of the wrong type has no age
                raw = None
            if raw is not None:
                age = _record_age_s(raw, now_ms)
        return QueueDepths(pending, retry, due, processing, failed, age, outbox)


def _record_age_s(raw: bytes, now_ms: int) -> float | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    created = parse_instant_ms(doc.get("attempted_at")) if isinstance(doc, dict) else None
    return None if created is None else max(0.0, (now_ms - created) / 1000)
