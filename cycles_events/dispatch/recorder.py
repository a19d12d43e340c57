"""The recorder: every outcome's final write, group-committed, each item one fenced step."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cycles_events.connection import UNAVAILABLE
from cycles_events.dispatch.counts import Counts
from cycles_events.dispatch.outcomes import Outcome, Step
from cycles_events.dispatch.report import Report, ids
from cycles_events.lifecycle import (
    NO_EFFECT,
    MergeResult,
    SubscriptionChange,
    merge_subscription,
    success_parts,
)
from cycles_events.metaevents import Task, disabled_task, failed_task
from cycles_events.models import JsonObject, RecordError, dumps, loads_object
from cycles_events.store import Store
from cycles_events.storevalues import Reply, Write
from cycles_events.supervise import Faults, Tasks

MAX_BATCH = 256
# Outcomes that come a few at a time wait up to this long for company: in a fleet of four with 16
# in flight each, 25 ms instead of 10 cut Redis's commands per delivery from 5.54 to 5.16. Not
# longer: 100 ms took that fleet's Redis from 37-40 to 31-35 us per delivery, but a process killed
# then holds four times as many answered requests not yet recorded, which are sent again (the
# chaos run's duplicate sends: 4-5 -> 7-16 of 2,250, over its 0.5% bar)
LINGER_S = 0.025
# ... before every write, not only the first of a run: in a 20,000 burst the writes went from
# about 21 outcomes each to about 64, Redis's CPU per delivery from 27-32 us to 23-26 us and
# commands from 3.1-3.2 to 2.7 (three interleaved rounds; 128 was no better)
LINGER_BELOW = 64
MAX_CAS_ROUNDS = 20
MAX_KNOWN = 10_000
OUTAGE_BACKOFF_S = (0.05, 0.5)
STALL_BACKOFF_S = (0.5, 10.0)
UNKNOWN = "\x00"  # an expected value no stored record holds: the write learns the current one


@dataclass(slots=True)
class _Pending:
    outcome: Outcome
    stalls: int = 0  # writes of it that failed
    rounds: int = 0  # compare-and-set conflicts of its subscription change
    without_subscription: bool = False  # its subscription is gone: write the rest


@dataclass(slots=True)
class _Built:
    pending: _Pending
    write: Write
    doc: JsonObject | None = None  # the subscription as this write leaves it
    new: str = ""
    merged: MergeResult | None = None
    tasks: tuple[Task, ...] = field(default=())


class Recorder:
    """Queues outcomes and writes them in batches with the OUTCOME script.

    Writes queued while one batch is in flight go out together in the next. A failed item is
    tried again alone, later, while its batch-mates are written; a subscription changed by
    someone else since it was read is merged again and written in a later round; an outage is
    waited out. Nothing is sent again because a write failed: the claim stays ours until the
    write lands or another instance recovers it (then the write changes nothing).
    """

    def __init__(
        self,
        *,
        store: Store,
        counts: Counts,
        report: Report,
        tasks: Tasks,
        faults: Faults,
        clock: Callable[[], int],
        failed_max_len: int,
        released: Callable[[str], None],
        retry_scheduled: Callable[[int], None],
        staged: Callable[[Sequence[str]], None],
    ) -> None:
        self._store = store
        self._counts = counts
        self._report = report
        self._tasks = tasks
        self._faults = faults
        self._clock = clock
        self._failed_max_len = failed_max_len
        self._released = released
        self._retry_scheduled = retry_scheduled
        self._staged = staged
        self._queue: deque[_Pending] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._known: dict[str, tuple[str, JsonObject | None]] = {}
        self._stalled: set[asyncio.TimerHandle] = set()
        self._company = asyncio.Event()  # the queue reached LINGER_BELOW: stop lingering

    def submit(self, outcome: Outcome) -> None:
        """Queue an outcome for its final write."""
        self._counts.recording += 1
        self._enqueue(_Pending(outcome))

    def saw_subscription(self, subscription_id: str, raw: bytes, doc: JsonObject) -> None:
        """A subscription as intake just read it: the next merge starts from it."""
        if len(self._known) >= MAX_KNOWN:
            self._known.clear()
        self._known[subscription_id] = (raw.decode("utf-8", "surrogateescape"), doc)

    @property
    def busy(self) -> bool:
        """Whether outcomes are still waiting for their write."""
        return bool(self._queue) or bool(self._stalled) or not self._idle()

    def _idle(self) -> bool:
        return self._flusher is None or self._flusher.done()

    def _enqueue(self, pending: _Pending, *, first: bool = False) -> None:
        if first:
            self._queue.appendleft(pending)
        else:
            self._queue.append(pending)
        if len(self._queue) >= LINGER_BELOW:
            self._company.set()
        if self._idle():
            self._flusher = self._tasks.spawn(self._flush(), "recorder", shielded=True)

    async def idle(self, timeout_s: float) -> bool:
        """Wait until every queued outcome is written (stalled ones included); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.busy and loop.time() < deadline:
            if self._flusher is not None and not self._flusher.done():
                await asyncio.wait({self._flusher}, timeout=deadline - loop.time())
            else:
                await asyncio.sleep(0.05)
        return not self.busy

    async def _flush(self) -> None:
        while self._queue:
            if len(self._queue) < LINGER_BELOW:
                # a write costs Redis and us about the same for 1 outcome as for 30: outcomes
                # that come a few at a time wait a moment for company (the receipt has happened
                # already, and a queued outcome holds no worker), until LINGER_BELOW are queued
                self._company.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LINGER_S):  # no task per wait, unlike wait_for
                        await self._company.wait()
            batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        backoff = OUTAGE_BACKOFF_S[0]
        while True:
            built = self._build(batch)
            try:
                replies = await self._store.record([b.write for b in built], self._failed_max_len)
            except UNAVAILABLE:
                self._counts.outage = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, OUTAGE_BACKOFF_S[1])
                continue
            except Exception as exc:
                if len(batch) == 1:
                    self._stall(batch[0], exc)
                    return
                for one in batch:  # find the item at fault: each is written alone
                    await self._write([one])
                return
            break
        if self._counts.outage:
            self._counts.outage = False
            self._counts.freed()
        for b, reply in zip(built, replies, strict=True):
            self._settle(b, reply)
        if not self._stalled:
            self._faults.ok("record")

    def _build(self, batch: list[_Pending]) -> list[_Built]:
        now = self._clock()
        chains: dict[str, _Built] = {}  # subscription -> the last write of it in this batch
        out: list[_Built] = []
        for p in batch:
            o = p.outcome
            ctx = o.context
            base = Write(
                o.delivery_id,
                o.token,
                record=dumps(o.record) if o.record is not None else "",
                retry_at_ms=o.retry_at_ms,
                push=o.push,
                quarantine=dumps(o.quarantine) if o.quarantine is not None else "",
            )
            if ctx is None or o.step not in (Step.SUCCESS, Step.FAILED):
                out.append(_Built(p, base))
                continue
            sub_id = ctx.delivery.subscription_id
            before = chains.get(sub_id)
            if (
                before is not None
                and before.doc is not None
                and o.step is Step.SUCCESS
                and before.pending.outcome.step is Step.SUCCESS
            ):  # a success after a success, merged at the same instant: the same document
                write = base._replace(subscription_id=sub_id, expected="^", new="=")
                out.append(_Built(p, write, before.doc, before.new, NO_EFFECT))
                chains[sub_id] = out[-1]
                continue
            doc: JsonObject | None = None
            raw = UNKNOWN
            if p.without_subscription:
                pass
            elif before is not None and before.doc is not None:
                expected, doc = "^", dict(before.doc)
            else:
                raw, parsed = self._known.get(sub_id, (UNKNOWN, None))
                expected = raw
                try:
                    doc = dict(parsed) if parsed is not None else loads_object(raw)
                except RecordError:
                    doc = {} if raw == UNKNOWN else None  # unknown: learn it; unreadable: leave it
            merged: MergeResult | None = None
            if doc is not None:
                change = SubscriptionChange(
                    o.step is Step.SUCCESS, now, o.delivery_id, ctx.disable_reason
                )
                merged = merge_subscription(doc, change)
            tasks: tuple[Task, ...] = ()
            if o.step is Step.FAILED:
                sub_now = doc if doc is not None else (ctx.subscription or {})
                failed = failed_task(
                    sub_now,
                    ctx.delivery,
                    ctx.event,
                    attempts=ctx.attempts,
                    status=ctx.status,
                    error=ctx.message,
                    now_ms=now,
                )
                tasks = (failed,)
                if merged is not None and merged.disabled:
                    previous = merged.previous_status or "ACTIVE"
                    gone = disabled_task(
                        sub_now, ctx.delivery, ctx.event, previous, now, reason=merged.reason
                    )
                    tasks += (gone,)
            if doc is None:
                out.append(_Built(p, base._replace(tasks=tasks), tasks=tasks))
                continue
            # a success first of its subscription in the write goes by parts: another success
            # written meanwhile does not send it round again (after an item of the write it
            # follows that item, applied or not)
            parts = None
            if o.step is Step.SUCCESS and before is None and raw != UNKNOWN:
                parts = success_parts(raw, doc)
            new = "".join(parts) if parts else dumps(doc)
            same = before is not None and before.new == new
            write = base._replace(
                subscription_id=sub_id,
                expected=expected,
                new="=" if same else new,
                parts=parts or (),
                tasks=tasks,
            )
            built = _Built(p, write, doc, new, merged, tasks)
            chains[sub_id] = built
            out.append(built)
        return out

    def _settle(self, b: _Built, reply: Reply) -> None:
        p, o = b.pending, b.pending.outcome
        if reply.status == "ok":
            if b.doc is not None:
                self._known[b.write.subscription_id] = (b.new, b.doc)
            if o.retry_at_ms is not None:
                self._retry_scheduled(o.retry_at_ms)
            if b.tasks:
                self._staged([t.task_id for t in b.tasks])
            self._finish(o)
            self._reported(lambda: self._report.written(o, b.merged), o)
        elif reply.status == "lost":
            self._finish(o)
            self._reported(lambda: self._report.lost(o), o)
        elif reply.status == "conflict":
            p.rounds += 1
            if reply.current is None:  # the subscription is gone: the rest is written alone
                p.without_subscription = True
                self._known.pop(b.write.subscription_id, None)
            else:
                raw = reply.current.decode("utf-8", "surrogateescape")
                self._known[b.write.subscription_id] = (raw, None)
            if p.rounds > MAX_CAS_ROUNDS:
                p.rounds = 0
                self._stall(p, RuntimeError("the subscription kept changing during the write"))
            else:
                self._enqueue(p, first=True)
        else:
            self._stall(p, RuntimeError(reply.error or "the write failed"))

    def _reported(self, report: Callable[[], None], outcome: Outcome) -> None:
        """Count and log a settled outcome; a failure there never unsettles it."""
        try:
            report()
        except Exception as exc:
            self._faults.failed("report", exc, **ids(outcome))

    def _finish(self, outcome: Outcome) -> None:
        self._released(outcome.delivery_id)
        self._counts.recording -= 1
        self._counts.freed()

    def _stall(self, p: _Pending, exc: BaseException) -> None:
        """Try a failed write again later, alone; its claim stays ours meanwhile."""
        p.stalls += 1
        self._counts.stalled += 1
        self._faults.failed("record", exc, step=p.outcome.step.value, **ids(p.outcome))
        low, high = STALL_BACKOFF_S
        delay = min(high, low * 2 ** (p.stalls - 1))
        handle: asyncio.TimerHandle

        def again() -> None:
            self._stalled.discard(handle)
            self._counts.stalled -= 1
            self._enqueue(p)

        handle = asyncio.get_running_loop().call_later(delay, again)
        self._stalled.add(handle)
