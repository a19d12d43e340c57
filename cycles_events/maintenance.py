"""Background loops: retry promotion, claim heartbeat and recovery, retention, the security
config, queue gauges, the server clock and the outbox publisher."""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Awaitable, Callable

from cycles_events import keys, logs
from cycles_events.adaptive import AdaptiveLimits
from cycles_events.connection import UNAVAILABLE
from cycles_events.metrics import Metrics
from cycles_events.outbox import Publisher
from cycles_events.policy import PolicySource
from cycles_events.store import Store
from cycles_events.supervise import Faults, ServerClock

OUTAGE_BACKOFF_S = (0.1, 1.0)
ERROR_BACKOFF_S = (0.5, 5.0)
RECOVERY_STEP = 1000
RECOVERY_STEPS_PER_PASS = 100


async def forever(name: str, step: Callable[[], Awaitable[float]], faults: Faults) -> None:
    """Run `step` again and again (it returns seconds to wait); nothing it raises ends the loop.

    An outage is waited out with a short capped backoff; any other error (a key of the wrong
    type, a refused script) is logged, counted and tried again more slowly.
    """
    outage, error = OUTAGE_BACKOFF_S[0], ERROR_BACKOFF_S[0]
    while True:
        try:
            delay = await step()
        except UNAVAILABLE:
            delay, outage = outage, min(outage * 2, OUTAGE_BACKOFF_S[1])
        except Exception as exc:
            faults.failed(name, exc)
            delay, error = error, min(error * 2, ERROR_BACKOFF_S[1])
        else:
            faults.ok(name)
            outage, error = OUTAGE_BACKOFF_S[0], ERROR_BACKOFF_S[0]
        if delay > 0:
            await asyncio.sleep(delay)


LANE_FULL_RECHECK_MS = 50


class RetryPromoter:
    """Moves due retries to pending within a fraction of a second of their due time.

    With a retry lane (`lane`), due retries are claimed by this process straight from
    dispatch:retry instead, as far as the lane has room, so that they never queue in pending
    ahead of first attempts.
    """

    def __init__(
        self,
        store: Store,
        *,
        poll_interval_ms: int,
        batch_size: int,
        lane: Callable[[int], Awaitable[tuple[int, int, bool]]] | None = None,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.store = store
        self.clock = clock
        self.poll_interval_ms = poll_interval_ms
        self.batch_size = batch_size
        self.lane = lane
        self._wake_at = math.inf
        self._wake = asyncio.Event()

    def notify(self, due_ms: int) -> None:
        """A retry was scheduled at `due_ms`: wake earlier if it is sooner than planned."""
        if due_ms < self._wake_at:
            self._wake_at = due_ms
            self._wake.set()

    async def step(self) -> float:
        """Promote what is due, then sleep until the next due retry (or a sooner notify)."""
        self._wake.clear()  # before the round trip: a notify during it is kept, not erased
        full = False
        if self.lane is not None:
            moved, now, room = await self.lane(self.batch_size)
            full = not room
            next_due = (
                None if full or moved >= self.batch_size else await self.store.next_retry_ms()
            )
            now = now or self.clock()
        else:
            moved, next_due, now = await self.store.promote(self.batch_size)
        if moved:
            logs.debug("retries_promoted", count=moved, lane=self.lane is not None)
        if moved >= self.batch_size:
            return 0.0
        wake = now + self.poll_interval_ms
        if next_due is not None:
            wake = min(wake, next_due)
        if full:  # the lane is full: look again as soon as some of it frees
            wake = min(wake, now + LANE_FULL_RECHECK_MS)
        self._wake_at = min(self._wake_at, wake) if self._wake.is_set() else wake
        delay = max(0.0, (self._wake_at - now) / 1000)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
        self._wake_at = math.inf
        return 0.0


class ClaimSweeper:
    """Keeps this process's claims fresh and returns orphaned claims to pending.

    Claim times are Redis's clock. Live claims are refreshed every heartbeat period (far inside
    any idle window, Java's included) and at once when Redis comes back. Other instances' claims
    are not judged during the first two heartbeat periods after an outage, nor while Redis has
    been up for less than that (a restart restores old claim times): their owners need that
    long to refresh them.
    """

    def __init__(
        self,
        store: Store,
        heartbeat: Callable[[], Awaitable[int]],
        metrics: Metrics,
        *,
        idle_ms: int,
        interval_ms: int,
    ) -> None:
        self.store = store
        self._heartbeat = heartbeat
        self.metrics = metrics
        self.idle_ms = idle_ms
        self.heartbeat_s = min(10.0, max(0.05, idle_ms / 4000))
        self.recover_every_s = min(interval_ms / 1000, max(0.05, idle_ms / 3000))
        self.grace_s = 2 * self.heartbeat_s
        self._next_recovery = 0.0  # monotonic
        self._quiet_until = 0.0
        self._outages_seen = store.state.outages
        self._index = 0

    async def step(self) -> float:
        """Heartbeat; recover when a pass is due and no outage is fresh."""
        state = self.store.state
        if state.outages != self._outages_seen:
            self._outages_seen = state.outages
            self._quiet_until = math.inf  # until Redis is back, then the grace period
        await self._heartbeat()
        now = time.monotonic()
        if self._quiet_until == math.inf:
            await self.store.ping()  # Redis answers again (a heartbeat of no claims asks nothing)
            self._quiet_until = now + self.grace_s
            logs.info("claims_refreshed_after_outage", grace_s=round(self.grace_s, 2))
        due = now >= self._next_recovery and now >= self._quiet_until
        if due and await self.store.redis_uptime_s() >= self.grace_s:
            await self.recover_pass()
            self._next_recovery = now + self.recover_every_s
        return self.heartbeat_s

    async def recover_pass(self) -> list[str]:
        """Walk the whole processing list (in bounded steps) and recover its idle claims."""
        recovered: list[str] = []
        for _ in range(RECOVERY_STEPS_PER_PASS):
            step = await self.store.recover(self.idle_ms, self._index, RECOVERY_STEP)
            recovered += step.ids
            self._index = step.next_index
            if self._index >= step.length:  # the end of the list: the next pass starts over
                self._index = 0
                break
        if recovered:
            self.metrics.recovered.inc(len(recovered))
            logs.warning("claims_recovered", count=len(recovered), delivery_ids=recovered[:20])
        return recovered


class Retention:
    """Trims old entries from the event and delivery indexes; one pass per interval, fleet-wide."""

    def __init__(
        self,
        store: Store,
        *,
        interval_ms: int,
        event_ttl_days: int,
        delivery_ttl_days: int,
        clock: Callable[[], int],
    ) -> None:
        self.store = store
        self.interval_ms = interval_ms
        self.event_ttl_ms = event_ttl_days * 86_400_000
        self.delivery_ttl_ms = delivery_ttl_days * 86_400_000
        self.clock = clock
        self.token = secrets.token_hex(8)

    async def step(self) -> float:
        """One pass, if no other instance (Java included) took this interval."""
        if await self.store.acquire_lock(keys.RETENTION_LOCK, self.token, self.interval_ms):
            now = self.clock()
            events = await self.store.trim_indexes(keys.EVENTS_PATTERN, now - self.event_ttl_ms)
            deliveries = await self.store.trim_indexes(
                keys.DELIVERIES_PATTERN, now - self.delivery_ttl_ms
            )
            logs.info("retention_pass", events_removed=events, deliveries_removed=deliveries)
        return self.interval_ms / 1000


class SecurityConfigRefresher:
    """Re-reads config:webhook-security every few seconds."""

    def __init__(self, store: Store, policy: PolicySource, metrics: Metrics) -> None:
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.interval_s = 5.0

    async def step(self) -> float:
        """Read the config once."""
        before = self.policy.error
        self.policy.update(await self.store.security_config())
        if self.policy.error:
            self.metrics.security_config_invalid.inc()
            if self.policy.error != before:
                logs.error("security_config_indeterminate", error=self.policy.error)
        elif before:
            logs.info("security_config_valid")
        return self.interval_s


class QueueSampler:
    """Samples queue depths (and readiness) into gauges on a timer (never on a scrape)."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        clock: Callable[[], int],
        readiness: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.readiness = readiness
        self.interval_s = 5.0

    async def step(self) -> float:
        """Sample once."""
        if self.readiness is not None:  # sets the ready gauge, probes or no probes
            await self.readiness()
        d = await self.store.depths(self.clock())
        g = self.metrics.queue_depth
        g.labels("pending").set(d.pending)
        g.labels("retry").set(d.retry)
        g.labels("processing").set(d.processing)
        g.labels("failed").set(d.failed)
        g.labels("outbox").set(d.outbox)
        self.metrics.oldest_pending_age.set(d.oldest_pending_age_s or 0.0)
        return self.interval_s


class LimitsSampler:
    """Exports the adaptive per-subscription limits: gauges, and the lowest ones for the CLI."""

    def __init__(self, store: Store, metrics: Metrics, limits: AdaptiveLimits) -> None:
        self.store = store
        self.metrics = metrics
        self.limits = limits
        self.interval_s = 5.0
        self._published: set[str] = set()  # the entries this instance wrote last time

    async def step(self) -> float:
        """Sample once (nothing is written while no subscription adapts)."""
        if not len(self.limits) and not self._published:
            return self.interval_s
        summary = self.limits.summary(lowest=100)
        self.metrics.limited.set(summary.below_max)
        for bound, count in summary.buckets:
            self.metrics.limits.labels(str(bound)).set(count)
        top = self.limits.maximum
        lowest = {sub: f"{limit}/{top}" for sub, limit in summary.lowest}
        # back at the maximum (or forgotten) since: not shown as held down any more
        cleared = sorted(self._published - lowest.keys())
        await self.store.publish_limits(lowest, cleared, int(self.interval_s * 6000))
        self._published = set(lowest)
        return self.interval_s


class ClockSync:
    """Keeps the server clock in step with Redis's TIME."""

    def __init__(self, store: Store, clock: ServerClock) -> None:
        self.store = store
        self.clock = clock
        self.interval_s = 30.0

    async def step(self) -> float:
        """Read Redis's clock once."""
        self.clock.sync(*await self.store.server_time_ms())
        return self.interval_s


class OutboxLoop:
    """Runs the outbox publisher: right after staging, and on a poll."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def step(self) -> float:
        """Publish what is staged or due, then wait for the next."""
        await self.publisher.wait(await self.publisher.step())
        return 0.0
