"""The per-subscription gate: at most N requests in flight per subscription, fairly queued."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from cycles_events.adaptive import AdaptiveLimits, Signal
from cycles_events.dispatch.counts import Counts
from cycles_events.dispatch.outcomes import Job, Outcome, Step

PARK_DELAY_MS = 1000
WAITING_FRESH_S = 5.0
STUCK_AFTER_S = 1.0


class Gate:
    """Hands jobs to the workers, a bounded few per subscription; parks a stuck one's overflow.

    A job is runnable (its subscription's slot reserved) or waiting for that slot. A subscription
    at its bound whose sends have not finished for a while (a slow or dead receiver) keeps a
    short queue; what is beyond it goes back to dispatch:retry for a moment, so that it never
    holds the claim room the other subscriptions need.
    """

    def __init__(
        self,
        *,
        counts: Counts,
        per_subscription: int,
        clock: Callable[[], int],
        to_record: Callable[[Outcome], None],
        reload: Callable[[Job], None],
        limits: AdaptiveLimits | None = None,
        retry_workers: int | None = None,
    ) -> None:
        self._counts = counts
        self._per_sub_max = per_subscription
        self.limits = limits or AdaptiveLimits(per_subscription)
        self._clock = clock
        self._to_record = to_record
        self._reload = reload
        self._runnable: deque[Job] = deque()  # first attempts (everything, without a retry lane)
        # With a retry lane, retries wait apart and at most `retry_workers` of them are sent at
        # once: the rest of the pool is kept for first attempts, so a retry backlog never
        # makes a fresh delivery wait behind it.
        self._retries: deque[Job] = deque()
        self._retry_workers = retry_workers
        self._sending_retries = 0
        self._waiting: dict[str, deque[Job]] = {}
        self._per_sub: dict[str, int] = {}  # subscription -> runnable + sending
        self._progress: dict[str, float] = {}  # subscription -> last send start or end
        self._idle: deque[asyncio.Future[None]] = deque()
        self.open = True

    @property
    def _stuck_queue(self) -> int:
        return 2 * self._per_sub_max

    def offer(self, job: Job) -> None:
        """A prepared job: runnable now, or waiting for its subscription's next slot."""
        if not self.open:  # draining: nothing new starts, the claim goes back
            self._release(job)
            return
        sub = job.subscription_id
        n = self._per_sub.get(sub, 0)
        bound = self.limits.limit(sub) if job.adaptive else self._per_sub_max
        if n < bound:
            self._per_sub[sub] = n + 1
            self._progress.setdefault(sub, time.monotonic())
            self._counts.runnable += 1
            if self._retry_workers is not None and job.delivery.attempts > 0:
                self._retries.append(job)
                if self._sending_retries < self._retry_workers:
                    self._wake_one()
            else:
                self._runnable.append(job)
                self._wake_one()
            return
        queue = self._waiting.setdefault(sub, deque())
        if self._stuck(sub) and len(queue) >= self._stuck_queue:
            self._park(job)
            return
        job.since = time.monotonic()
        queue.append(job)
        self._counts.waiting += 1

    def take(self) -> Job | None:
        """The next runnable job for a worker (its request starts now), if any."""
        if not self.open:
            return None
        if self._runnable:
            job = self._runnable.popleft()
        elif self._retries and self._sending_retries < (self._retry_workers or 0):
            job = self._retries.popleft()
            self._sending_retries += 1
        else:
            return None
        self._counts.runnable -= 1
        self._counts.sending += 1
        return job

    async def wait(self) -> None:
        """Wait until a job may be runnable (woken by `offer`, a drain, or the safety net)."""
        waiter = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():
                waiter.cancel()

    def done(self, job: Job, latency_s: float = 0.0, signal: Signal | None = None) -> None:
        """A request ended: free its slots and give the subscription's to a waiting job."""
        self._counts.sending -= 1
        if self._retry_workers is not None and job.delivery.attempts > 0:
            self._sending_retries -= 1
            if self._retries:
                self._wake_one()
        sub = job.subscription_id
        if job.adaptive and signal is not None:
            self.limits.on_result(sub, latency_s, signal)
        left = self._per_sub[sub] - 1
        if left <= 0:
            self._per_sub.pop(sub, None)
            self._progress.pop(sub, None)
        else:
            self._per_sub[sub] = left
            self._progress[sub] = time.monotonic()
        self._resume(sub)
        self._counts.freed()

    def nudge(self) -> None:
        """The safety net for a lost wake-up, and the relief of stuck subscriptions' overflow."""
        if self._runnable or self._retries:
            self._wake(len(self._runnable) + len(self._retries))
        for sub, queue in list(self._waiting.items()):
            while len(queue) > self._stuck_queue and self._stuck(sub):
                job = queue.pop()
                self._counts.waiting -= 1
                self._park(job)
            if not queue:
                self._waiting.pop(sub, None)

    def close(self) -> None:
        """Start nothing more: every job not started goes back to the front of pending."""
        self.open = False
        for queue in self._waiting.values():
            while queue:
                self._counts.waiting -= 1
                self._release(queue.popleft())
        self._waiting.clear()
        for runnable in (self._runnable, self._retries):
            while runnable:
                self._counts.runnable -= 1
                self._release(runnable.popleft())
        self._wake(len(self._idle))

    def _stuck(self, sub: str) -> bool:
        """At its bound, and no send of it has finished for a while: a slow or dead receiver."""
        last = self._progress.get(sub)
        return last is not None and time.monotonic() - last > STUCK_AFTER_S

    def _resume(self, sub: str) -> None:
        queue = self._waiting.get(sub)
        if not queue:
            self._waiting.pop(sub, None)
            return
        if queue[0].adaptive and self._per_sub.get(sub, 0) >= self.limits.limit(sub):
            return  # its limit went down: the slot freed is not one it may use yet
        job = queue.popleft()
        self._counts.waiting -= 1
        if not queue:
            self._waiting.pop(sub, None)
        if self.open and time.monotonic() - job.since > WAITING_FRESH_S:
            self._reload(job)  # waited long enough for its records to be stale
            return
        self.offer(job)

    def _park(self, job: Job) -> None:
        retry_at = self._clock() + PARK_DELAY_MS
        self._to_record(
            Outcome(Step.PARK, job.delivery.delivery_id, job.token, retry_at_ms=retry_at)
        )

    def _release(self, job: Job) -> None:
        self._to_record(Outcome(Step.RELEASE, job.delivery.delivery_id, job.token, push="R"))

    def _wake_one(self) -> None:
        self._wake(1)

    def _wake(self, wanted: int) -> None:
        while wanted > 0 and self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                wanted -= 1
