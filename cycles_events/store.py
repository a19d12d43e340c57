"""All Redis I/O of the service, through the key names and scripts of `keys`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cycles_events import keys, logs
from cycles_events.models import JsonObject, dumps, parse_instant_ms, text


def _pack(args: tuple[Any, ...]) -> bytes:
    if isinstance(args[0], str) and " " in args[0]:  # 'CLIENT SETINFO' and the like
        args = (*args[0].split(), *args[1:])
    try:
        packed: bytes = hiredis.pack_command(args)
    except UnicodeEncodeError:  # an id that was not UTF-8 on the way in goes back as it came
        raw: Any = tuple(
            a.encode("utf-8", "surrogateescape") if isinstance(a, str) else a for a in args
        )
        packed = hiredis.pack_command(raw)
    return packed


class _HiredisPacking:
    """Packs commands with hiredis's C packer, which redis-py's asyncio connections do not use.

    With batched scripts of several arguments per delivery, the pure-Python packer was the
    largest single CPU cost of a delivery.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        """One command in the Redis protocol."""
        return [_pack(args)]

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        """Several commands (a pipeline) in the Redis protocol."""
        return [b"".join(_pack(tuple(c)) for c in commands)]


class PackedConnection(_HiredisPacking, Connection):
    """A TCP connection using the C packer."""


class PackedSSLConnection(_HiredisPacking, SSLConnection):
    """A TLS connection using the C packer."""


# Errors that mean "Redis is unreachable right now", as opposed to a bad command.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)


def _bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def _bytes_list(values: Any) -> list[bytes | None]:
    return [_bytes(v) for v in values]


def _s(value: Any) -> str:
    # surrogateescape: an id that is not UTF-8 still encodes back to the very same bytes
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


class RedisState:
    """Tracks whether Redis answers, logging each change of state once.

    A failure within DOWN_AFTER_S of the last success is not an outage yet: after a restart,
    each pooled connection fails once while fresh ones succeed, and that is not a state change.
    """

    DOWN_AFTER_S = 1.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.up = True
        self.since = clock()
        self.last_ok = clock()
        self.last_error: str | None = None

    def ok(self) -> None:
        """Record a successful command."""
        self.last_ok = self.clock()
        if not self.up:
            logs.info("redis_reconnected", down_seconds=round(self.last_ok - self.since, 1))
            self.up = True
            self.since = self.last_ok
            self.last_error = None

    def failed(self, exc: BaseException) -> None:
        """Record a connection failure."""
        self.last_error = type(exc).__name__
        now = self.clock()
        if self.up and now - self.last_ok >= self.DOWN_AFTER_S:
            logs.error("redis_unavailable", error=self.last_error)
            self.up = False
            self.since = now


@dataclass(frozen=True, slots=True)
class Related:
    """The records a batch of deliveries needs: events, subscriptions and secrets by id."""

    events: dict[str, bytes | None]
    subscriptions: dict[str, bytes | None]
    secrets: dict[str, bytes | None]
    parsed: dict[bytes, JsonObject | None] = field(default_factory=dict)


class Claimed(NamedTuple):
    """Ids just claimed, their delivery records (None when missing), and duplicates dropped."""

    ids: list[str]
    records: list[bytes | None]
    duplicates: int


class FinalWrite(NamedTuple):
    """A delivery's last write: its record, a retry to schedule, or a quarantine entry."""

    delivery_id: str
    token: str
    record: JsonObject | None = None
    retry_at_ms: int | None = None
    quarantine: JsonObject | None = None


@dataclass(frozen=True, slots=True)
class QueueDepths:
    """Sizes of the dispatch queues."""

    pending: int
    retry: int
    retry_due: int
    processing: int
    failed: int
    oldest_pending_age_s: float | None


class Store:
    """Redis operations of the dispatcher; every multi-step change is one Lua script."""

    def __init__(self, redis: Redis, blocking: Redis | None = None) -> None:
        self.redis = redis
        self.blocking = blocking or redis
        r = redis
        self._claim = r.register_script(keys.CLAIM)
        self._adopt = r.register_script(keys.ADOPT)
        self._finalize_many = r.register_script(keys.FINALIZE_MANY)
        self._cas_many = r.register_script(keys.CAS_MANY)
        self._release = r.register_script(keys.RELEASE)
        self._heartbeat = r.register_script(keys.HEARTBEAT)
        self._recover = r.register_script(keys.RECOVER)
        self._promote = r.register_script(keys.PROMOTE)
        self._save_event = r.register_script(keys.SAVE_EVENT)
        self._trim = r.register_script(keys.TRIM_ZSET)

    async def ping(self) -> bool:
        """PING Redis."""
        return bool(await self.redis.ping())

    async def claim(self, limit: int, token: str, now_ms: int) -> Claimed:
        """Claim up to `limit` ids with their records, counting concurrent duplicates dropped."""
        ids, dups, records = await self._claim(
            keys=[keys.PENDING, keys.PROCESSING, keys.CLAIMED_AT, keys.CLAIM_OWNER],
            args=[limit, now_ms, token, keys.DELIVERY_PREFIX],
        )
        # Lua's false arrives as None
        return Claimed([_s(i) for i in ids], _bytes_list(records), int(dups))

    async def claim_blocking(self, timeout_s: float, token: str) -> str | None:
        """Wait up to `timeout_s` for one id and claim it (None on timeout or duplicate)."""
        timeout: Any = timeout_s  # redis-py types it as int; Redis accepts fractional seconds
        raw = await self.blocking.blmove(keys.PENDING, keys.PROCESSING, timeout, "RIGHT", "LEFT")
        if raw is None:
            return None
        delivery_id = _s(raw)
        owned = await self._adopt(
            keys=[keys.PROCESSING, keys.CLAIMED_AT, keys.CLAIM_OWNER],
            args=[delivery_id, int(time.time() * 1000), token],
        )
        return delivery_id if int(owned) == 1 else None

    async def load_deliveries(self, ids: Sequence[str]) -> list[bytes | None]:
        """The delivery records of `ids`, in order."""
        return _bytes_list(await self.redis.mget([keys.delivery(i) for i in ids]))

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
        )
        if not names:
            return Related({}, {}, {})
        values = _bytes_list(await self.redis.mget(names))
        n, m = len(ev), len(subs)
        return Related(
            events=dict(zip(ev, values[:n], strict=True)),
            subscriptions=dict(zip(subs, values[n : n + m], strict=True)),
            secrets=dict(zip(subs, values[n + m :], strict=True)),
        )

    async def finalize(self, ops: Sequence[FinalWrite], failed_max_len: int) -> list[bool]:
        """Write deliveries' outcomes and release their claims, in one call.

        Returns, per write, False when the claim is no longer ours (then nothing was written).
        """
        if not ops:
            return []
        args: list[str | int] = [failed_max_len]
        for op in ops:
            args += [
                op.delivery_id,
                op.token,
                dumps(op.record) if op.record is not None else "",
                op.retry_at_ms if op.retry_at_ms is not None else "",
                dumps(op.quarantine) if op.quarantine is not None else "",
            ]
        done = await self._finalize_many(
            keys=[keys.PROCESSING, keys.CLAIMED_AT, keys.CLAIM_OWNER, keys.RETRY, keys.FAILED]
            + [keys.delivery(op.delivery_id) for op in ops],
            args=args,
        )
        return [int(d) == 1 for d in done]

    async def release(
        self, ids: Sequence[str], token: str, *, retry_at_ms: int | None = None
    ) -> int:
        """Give back unstarted claims: to pending, or parked on the retry ZSET."""
        if not ids:
            return 0
        n = await self._release(
            keys=[keys.PENDING, keys.PROCESSING, keys.CLAIMED_AT, keys.CLAIM_OWNER, keys.RETRY],
            args=[token, retry_at_ms if retry_at_ms is not None else "", *ids],
        )
        return int(n)

    async def heartbeat(self, ids: Sequence[str], owner_prefix: str, now_ms: int) -> int:
        """Refresh the claim time of ids this process still owns."""
        if not ids:
            return 0
        n = await self._heartbeat(
            keys=[keys.CLAIMED_AT, keys.CLAIM_OWNER], args=[now_ms, owner_prefix, *ids]
        )
        return int(n)

    async def recover(self, now_ms: int, idle_ms: int, limit: int = 1000) -> list[str]:
        """Return orphaned claims to pending."""
        ids = await self._recover(
            keys=[keys.PENDING, keys.PROCESSING, keys.CLAIMED_AT, keys.CLAIM_OWNER],
            args=[now_ms, idle_ms, limit],
        )
        return [_s(i) for i in ids]

    async def promote(self, now_ms: int, limit: int) -> tuple[int, int | None]:
        """Move due retries to pending; returns (moved, next due ms or None)."""
        moved, nxt = await self._promote(keys=[keys.RETRY, keys.PENDING], args=[now_ms, limit])
        next_ms = int(float(_s(nxt)))
        return int(moved), (None if next_ms < 0 else next_ms)

    async def get_subscription(self, subscription_id: str) -> bytes | None:
        """The raw subscription record."""
        return _bytes(await self.redis.get(keys.subscription(subscription_id)))

    async def cas_subscription(
        self, subscription_id: str, expected: str, new: str
    ) -> tuple[str, bytes | None]:
        """Compare-and-set a subscription: ('ok'|'missing'|'conflict', current when conflict)."""
        (result,) = await self.cas_subscriptions([(subscription_id, expected, new)])
        return result

    async def cas_subscriptions(
        self, items: Sequence[tuple[str, str, str]]
    ) -> list[tuple[str, bytes | None]]:
        """CAS several subscriptions (id, expected, new) in one call."""
        if not items:
            return []
        res = await self._cas_many(
            keys=[keys.subscription(sub_id) for sub_id, _, _ in items],
            args=[v for _, expected, new in items for v in (expected, new)],
        )
        out: list[tuple[str, bytes | None]] = []
        for r in res:
            status = _s(r[0])
            out.append((status, _bytes(r[1]) if status == "conflict" else None))
        return out

    async def save_event(self, event: JsonObject, ttl_seconds: int) -> None:
        """Save an event the way the admin server does (idempotent for a given event id)."""
        event_id = str(event["event_id"])
        tenant = text(event, "tenant_id") or "__system__"
        corr = text(event, "correlation_id")
        score = parse_instant_ms(event.get("timestamp")) or int(time.time() * 1000)
        await self._save_event(
            keys=[
                keys.event(event_id),
                keys.tenant_events(tenant),
                keys.EVENTS_ALL,
                keys.correlation(corr) if corr else keys.correlation("_"),
            ],
            args=[dumps(event), ttl_seconds, score, event_id, "1" if corr else "0"],
        )

    async def security_config(self) -> bytes | None:
        """The raw config:webhook-security value."""
        return _bytes(await self.redis.get(keys.SECURITY_CONFIG))

    async def acquire_lock(self, name: str, token: str, ttl_ms: int) -> bool:
        """Take a lock key for `ttl_ms` unless someone holds it."""
        return bool(await self.redis.set(name, token, nx=True, px=ttl_ms))

    async def trim_indexes(self, pattern: str, cutoff_ms: int, scan_count: int = 500) -> int:
        """Trim index ZSETs matching `pattern` below `cutoff_ms`, skipping non-ZSET keys."""
        removed = 0
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=pattern, count=scan_count):
            batch.append(key)
            if len(batch) >= scan_count:
                removed += await self._trim_batch(batch, cutoff_ms)
                batch = []
        if batch:
            removed += await self._trim_batch(batch, cutoff_ms)
        return removed

    async def _trim_batch(self, names: list[bytes], cutoff_ms: int) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            await self._trim(keys=[name], args=[cutoff_ms], client=pipe)
        results = await pipe.execute()
        return sum(int(r) for r in results if int(r) > 0)

    async def depths(self, now_ms: int) -> QueueDepths:
        """Queue depths and the age of the oldest pending delivery."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(keys.PENDING)
        pipe.zcard(keys.RETRY)
        pipe.zcount(keys.RETRY, "-inf", now_ms)
        pipe.llen(keys.PROCESSING)
        pipe.llen(keys.FAILED)
        pipe.lindex(keys.PENDING, -1)
        pending, retry, due, processing, failed, oldest = await pipe.execute()
        age: float | None = None
        if oldest is not None:
            raw = _bytes(await self.redis.get(keys.delivery(_s(oldest))))
            if raw is not None:
                age = _record_age_s(raw, now_ms)
        return QueueDepths(int(pending), int(retry), int(due), int(processing), int(failed), age)


def _record_age_s(raw: bytes, now_ms: int) -> float | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    created = parse_instant_ms(doc.get("attempted_at")) if isinstance(doc, dict) else None
    return None if created is None else max(0.0, (now_ms - created) / 1000)


def quarantine_entry(delivery_id: str, reason: str, payload: bytes, now_ms: int) -> JsonObject:
    """A dispatch:failed entry: {delivery_id, reason, quarantined_at_ms, payload}."""
    return {
        "delivery_id": delivery_id,
        "reason": reason,
        "quarantined_at_ms": now_ms,
        "payload": payload.decode("utf-8", "replace"),
    }
