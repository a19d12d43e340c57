"""The claimer: takes delivery ids from dispatch:pending into claims this process owns."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable, Sequence

from cycles_events.connection import UNAVAILABLE
from cycles_events.dispatch.counts import CLAIM_BATCH, Counts
from cycles_events.dispatch.gate import Gate
from cycles_events.dispatch.outcomes import Outcome, Step
from cycles_events.metrics import Metrics
from cycles_events.store import Store
from cycles_events.storevalues import Claimed, Related
from cycles_events.supervise import Faults

MAX_BACKOFF_S = 5.0
# ids, claim token, their records and the records those name (each None: not read)
ToIntake = Callable[[Sequence[str], str, Sequence[bytes | None] | None, Related | None], None]
SAFETY_NET_S = 1.0
# A token longer than Redis's hash-max-listpack-value (64) keeps claim_owner a hash table:
# as a listpack (up to 128 entries) every HMGET, HSET and HDEL field is a scan of the hash.
INSTANCE_BYTES = 32


class Claimer:
    """Claims batches when there is room, blocks on an empty queue, and keeps the claims' book.

    Every claim token is this process's random prefix and a sequence number, so a heartbeat can
    tell its own claims. A claim whose reply was lost is asked for again with the same token,
    and the script answers with the same ids instead of taking more.
    """

    def __init__(
        self,
        *,
        store: Store,
        counts: Counts,
        gate: Gate,
        metrics: Metrics,
        faults: Faults,
        pending_timeout_s: float,
        to_intake: ToIntake,
        to_record: Callable[[Outcome], None],
        retry_lane: int = 0,
    ) -> None:
        self._store = store
        self._counts = counts
        self._gate = gate
        self._metrics = metrics
        self._faults = faults
        self._pending_timeout_s = pending_timeout_s
        self._to_intake = to_intake
        self._to_record = to_record
        self.instance = secrets.token_hex(INSTANCE_BYTES)
        self._seq = itertools.count()
        self.held: dict[str, str] = {}  # delivery id -> claim token, for every claim we own
        self.accepting = True
        self.consuming = False  # claims answered lately: Redis is there and we take work
        self.blocking = False  # waiting on an empty queue (the one wait a stop cuts short)
        self._unanswered: str | None = None  # a CLAIM token whose reply was lost
        self._unadopted: str | None = None  # an id moved by BLMOVE, not yet adopted
        self._drained = False  # pending looked idle at the last claim: the next step is the wait
        self._retry_lane = retry_lane  # retries claimed straight from dispatch:retry, at most
        self._lane_held: set[str] = set()
        self._lane_unanswered: str | None = None

    @property
    def owner_prefix(self) -> str:
        """The prefix of every claim token of this process."""
        return f"{self.instance}:"

    def _token(self) -> str:
        return f"{self.instance}:{next(self._seq)}"

    def stop(self) -> None:
        """Stop taking new work (the first step of a drain)."""
        self.accepting = False
        self.consuming = False
        self._counts.wake()

    def released(self, delivery_id: str) -> None:
        """A claim ended (written, or recovered by someone else)."""
        self.held.pop(delivery_id, None)
        self._lane_held.discard(delivery_id)

    async def claim_due(self, limit: int) -> tuple[int, int, bool]:
        """The retry lane: due retries claimed from dispatch:retry: (claimed, now ms, had room)."""
        room = min(limit, self._counts.room(), self._retry_lane - len(self._lane_held))
        if room <= 0 or not self.accepting:
            return 0, 0, False
        again = self._lane_unanswered is not None
        token = self._lane_unanswered or self._token()
        self._lane_unanswered = token
        claimed = await self._store.claim(
            room, token, due=True, again=again, read_up_to=self._read_up_to()
        )
        self._lane_unanswered = None
        if claimed.duplicates:
            self._metrics.dropped.labels("duplicate_claim").inc(claimed.duplicates)
        if claimed.ids:
            self._lane_held.update(claimed.ids)
            self._accept(claimed, token)
        return len(claimed.ids), claimed.now_ms, True

    async def heartbeat(self) -> int:
        """Refresh the claim times of everything this process holds."""
        ids = list(self.held)
        return await self._store.heartbeat(ids, self.owner_prefix) if ids else 0

    async def run(self) -> None:
        """Claim until `stop` (or cancellation)."""
        backoff = 0.1
        while self.accepting:
            self._gate.nudge()
            room = self._counts.room()
            if room < self._counts.low_water and self._unadopted is None:
                await self._counts.wait_for_room(SAFETY_NET_S)
                continue
            try:
                claimed, token = await self._claim(min(room, CLAIM_BATCH))
            except UNAVAILABLE:
                self.consuming = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            except Exception as exc:  # a script refused (a key of the wrong type): keep trying
                self.consuming = False
                self._faults.failed("claim", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            backoff = 0.1
            self.consuming = True
            self._faults.ok("claim")
            if claimed.duplicates:
                self._metrics.dropped.labels("duplicate_claim").inc(claimed.duplicates)
            if claimed.ids:
                self._accept(claimed, token)

    async def _claim(self, limit: int) -> tuple[Claimed, str]:
        """A batch; after one that found pending idle, a blocking wait first (as Java takes one id)
        and then the id it moved with whatever came with it, in the same claim."""
        limit = max(1, limit)
        if self._drained and self._unanswered is None and self._unadopted is None:
            self._drained = False
            self.blocking = True
            try:
                self._unadopted = await self._store.wait_for_one(self._pending_timeout_s)
            finally:
                self.blocking = False
            if self._unadopted is None:
                return Claimed([], [], 0, 0), ""
        again = self._unanswered is not None
        token = self._unanswered or self._token()
        self._unanswered = token
        moved = self._unadopted or ""
        claimed = await self._store.claim(
            limit, token, again=again, moved=moved, read_up_to=self._read_up_to()
        )
        self._unanswered = self._unadopted = None
        # answered: Redis is there and we take work (ready now, not after the blocking wait)
        self.consuming = True
        self._faults.ok("claim")
        # Nothing came, or only the id a wait moved: pending is idle, and asking again at once
        # would most likely find nothing. After a claim that found some, another most likely
        # finds more, for less than a wait and the claim after it.
        self._drained = len(claimed.ids) + claimed.duplicates <= bool(moved)
        return claimed, token

    def _read_up_to(self) -> int:
        """The most ids a claim takes with their records and what those name, in its own step."""
        # Fewer than the least room worth a claim came in: they trickled in, and the read saves
        # them the intake's two round trips through a busy loop (paced at 4,000/s, claims of
        # 9-31 ids went from 6-17 to 2-6 ms of p99 from claim to request when read so). A
        # pending backlog is claimed in claims at least that big (bursts, the fleet), which
        # leave it to the intake's MGETs, a fraction of the script's reads for Redis (see
        # claim.lua); the retry lane's claims, bounded by its share, may read in the step.
        return self._counts.low_water - 1

    def _accept(self, claimed: Claimed, token: str) -> None:
        if not self.accepting:  # stopped meanwhile: the batch goes back to the front of pending
            for delivery_id in claimed.ids:
                self.held[delivery_id] = token
                self._to_record(Outcome(Step.RELEASE, delivery_id, token, push="R"))
            return
        for delivery_id in claimed.ids:
            self.held[delivery_id] = token
        self._to_intake(claimed.ids, token, claimed.records, claimed.related)
