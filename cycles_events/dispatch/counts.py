"""The counts every stage of the pipeline shares, and the claimer's wake-up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

# The most ids one claim takes: a claim of 64 rather than 32 in a burst cost Redis about 1.5 us
# and the daemon a few us less per delivery (interleaved bursts, six rounds)
CLAIM_BATCH = 64
# The least room worth a claim (under twice the concurrency: then that), and the least prefetch
# beyond the workers. A claim costs Redis three round trips (the claim, the records, what they
# name) whatever its size: claims of 32 rather than 16 took a fleet of four at 16 in flight each
# from 36.7-42.7 to 33.6-35.9 us of Redis per delivery, 5.15 to 4.77 commands (two rounds)
CLAIM_LOW_WATER = 32


@dataclass(slots=True)
class Counts:
    """Where the claimed deliveries are; each is in exactly one place until its final write.

    `room` tells the claimer how many ids it may take: claims beyond the workers (as many as
    the workers, and at least a claim's worth) serve as prefetch and as room for a saturated
    subscription's overflow, and none are taken while too many outcomes wait for their write
    (backpressure) or while final writes are failing.
    """

    concurrency: int
    loading: int = 0  # claimed: records being loaded and screened
    waiting: int = 0  # at the gate, for their subscription's next slot
    runnable: int = 0  # through the gate, for a worker
    sending: int = 0  # requests under way
    recording: int = 0  # outcomes waiting for their final write
    stalled: int = 0  # outcomes whose last write failed, waiting to be tried again
    outage: bool = False  # final writes cannot reach Redis
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def claimed(self) -> int:
        """Claimed deliveries whose request has not ended (nor ended without one)."""
        return self.loading + self.waiting + self.runnable + self.sending

    @property
    def low_water(self) -> int:
        """The least room worth a claim (a claim and its loads should serve many deliveries)."""
        return min(CLAIM_LOW_WATER, 2 * self.concurrency)

    def room(self) -> int:
        """How many ids a claim may take now."""
        if self.outage or self.recording >= 4 * self.concurrency:
            return 0
        if self.stalled >= self.concurrency:
            return 0
        return self.concurrency + max(self.concurrency, self.low_water) - self.claimed

    def freed(self) -> None:
        """Something moved on: wake the claimer if a batch fits now."""
        if not self._wake.is_set() and self.room() >= self.low_water:
            self._wake.set()

    def wake(self) -> None:
        """Wake the claimer whatever the room (a stop, a lost wake-up)."""
        self._wake.set()

    async def wait_for_room(self, timeout_s: float) -> None:
        """Sleep until `freed` or `wake`, at most `timeout_s`."""
        self._wake.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        except TimeoutError:
            pass
