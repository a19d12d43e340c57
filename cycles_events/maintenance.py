"""Background loops: retry promotion, claim recovery, retention, config refresh, queue gauges."""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import Awaitable, Callable

from cycles_events import keys, logs
from cycles_events.dispatcher import Dispatcher, PolicySource, now_ms
from cycles_events.metrics import Metrics
from cycles_events.store import UNAVAILABLE, RedisState, Store

MAX_BACKOFF_S = 5.0


async def _forever(
    step: Callable[[], Awaitable[float]],
    redis_state: RedisState,
    metrics: Metrics,
) -> None:
    """Run `step` again and again; it returns seconds to wait. Redis outages back off."""
    backoff = 0.1
    while True:
        try:
            delay = await step()
            redis_state.ok()
            backoff = 0.1
        except UNAVAILABLE as exc:
            redis_state.failed(exc)
            metrics.redis_errors.inc()
            delay = backoff
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        if delay > 0:
            await asyncio.sleep(delay)


class RetryPromoter:
    """Moves due retries to pending within a fraction of a second of their due time."""

    def __init__(
        self,
        store: Store,
        *,
        poll_interval_ms: int,
        batch_size: int,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.poll_interval_ms = poll_interval_ms
        self.batch_size = batch_size
        self.clock = clock
        self._wake_at = math.inf
        self._wake = asyncio.Event()

    def notify(self, due_ms: int) -> None:
        """A retry was scheduled at `due_ms`: wake earlier if it is sooner than planned."""
        if due_ms < self._wake_at:
            self._wake_at = due_ms
            self._wake.set()

    async def step(self) -> float:
        """Promote what is due; return how long to sleep before the next due retry."""
        now = self.clock()
        moved, next_due = await self.store.promote(now, self.batch_size)
        if moved:
            logs.debug("retries_promoted", count=moved)
        if moved >= self.batch_size:
            return 0.0
        wake = now + self.poll_interval_ms
        if next_due is not None:
            wake = min(wake, next_due)
        self._wake_at = wake
        self._wake.clear()
        delay = max(0.0, (wake - self.clock()) / 1000)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=delay)
        return 0.0

    async def run(self, redis_state: RedisState, metrics: Metrics) -> None:
        """The promoter loop."""
        await _forever(self.step, redis_state, metrics)


class ClaimSweeper:
    """Returns orphaned claims to pending and keeps this process's own claims fresh."""

    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        metrics: Metrics,
        *,
        idle_ms: int,
        interval_s: float = 30.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.idle_ms = idle_ms
        self.interval_s = min(interval_s, max(0.05, idle_ms / 3000))
        self.clock = clock

    async def step(self) -> float:
        """Heartbeat our claims, then recover other claims idle for too long."""
        await self.dispatcher.heartbeat()
        ids = await self.store.recover(self.clock(), self.idle_ms)
        if ids:
            self.metrics.recovered.inc(len(ids))
            for delivery_id in ids:
                logs.warning("claim_recovered", delivery_id=delivery_id)
        return self.interval_s

    async def run(self, redis_state: RedisState) -> None:
        """The sweeper loop (it runs once at start)."""
        await _forever(self.step, redis_state, self.metrics)


class Retention:
    """Trims old entries from the event and delivery indexes; one instance per interval."""

    def __init__(
        self,
        store: Store,
        *,
        interval_ms: int,
        event_ttl_days: int,
        delivery_ttl_days: int,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.interval_ms = interval_ms
        self.event_ttl_ms = event_ttl_days * 86_400_000
        self.delivery_ttl_ms = delivery_ttl_days * 86_400_000
        self.clock = clock
        self.token = secrets.token_hex(8)

    async def step(self) -> float:
        """One pass, if no other instance took this interval."""
        if await self.store.acquire_lock(keys.RETENTION_LOCK, self.token, self.interval_ms):
            now = self.clock()
            events = await self.store.trim_indexes(keys.EVENTS_PATTERN, now - self.event_ttl_ms)
            deliveries = await self.store.trim_indexes(
                keys.DELIVERIES_PATTERN, now - self.delivery_ttl_ms
            )
            logs.info("retention_pass", events_removed=events, deliveries_removed=deliveries)
        return self.interval_ms / 1000

    async def run(self, redis_state: RedisState, metrics: Metrics) -> None:
        """The retention loop."""
        await _forever(self.step, redis_state, metrics)


class SecurityConfigRefresher:
    """Re-reads config:webhook-security every few seconds."""

    def __init__(self, store: Store, policy: PolicySource, *, interval_s: float = 5.0) -> None:
        self.store = store
        self.policy = policy
        self.interval_s = interval_s

    async def step(self) -> float:
        """Read the config once."""
        before = self.policy.error
        self.policy.update(await self.store.security_config())
        if self.policy.error and self.policy.error != before:
            logs.error("security_config_invalid", error=self.policy.error)
        elif before and not self.policy.error:
            logs.info("security_config_valid")
        return self.interval_s

    async def run(self, redis_state: RedisState, metrics: Metrics) -> None:
        """The refresh loop."""
        await _forever(self.step, redis_state, metrics)


class QueueSampler:
    """Samples queue depths into gauges on a timer (never on a scrape)."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        interval_s: float = 5.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.interval_s = interval_s
        self.clock = clock

    async def step(self) -> float:
        """Sample once."""
        d = await self.store.depths(self.clock())
        g = self.metrics.queue_depth
        g.labels("pending").set(d.pending)
        g.labels("retry").set(d.retry)
        g.labels("processing").set(d.processing)
        g.labels("failed").set(d.failed)
        self.metrics.oldest_pending_age.set(d.oldest_pending_age_s or 0.0)
        return self.interval_s

    async def run(self, redis_state: RedisState) -> None:
        """The sampling loop."""
        await _forever(self.step, redis_state, self.metrics)
