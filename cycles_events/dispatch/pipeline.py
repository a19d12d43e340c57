"""The dispatch pipeline: claim -> intake -> gate -> send -> record, composed in one place."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cycles_events import backoff, logs
from cycles_events.dispatch.claimer import Claimer
from cycles_events.dispatch.counts import Counts
from cycles_events.dispatch.gate import Gate
from cycles_events.dispatch.intake import Intake, IntakeOptions
from cycles_events.dispatch.recorder import Recorder
from cycles_events.dispatch.report import Report
from cycles_events.dispatch.workers import Workers
from cycles_events.metrics import Metrics
from cycles_events.policy import PolicySource
from cycles_events.sender import Sender
from cycles_events.store import Store
from cycles_events.supervise import Faults, Tasks

FINAL_WRITE_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class DispatchOptions:
    """Knobs of the pipeline, taken from Settings by `app`."""

    concurrency: int = 64
    per_subscription: int = 8
    pending_timeout_s: float = 5.0
    max_age_ms: int = 86_400_000
    failed_max_len: int = 10_000
    encryption_key: bytes | None = None
    retry: backoff.Options = backoff.OFF
    standard_webhooks: bool = False
    adaptive_concurrency: bool = False
    first_attempt_share: float = 0.0  # > 0: the retry lane, this share of workers kept fresh


class Pipeline:
    """A delivery id's path through this process, from its claim to its final write."""

    def __init__(
        self,
        *,
        store: Store,
        sender: Sender,
        metrics: Metrics,
        policy: PolicySource,
        options: DispatchOptions,
        faults: Faults,
        clock: Callable[[], int],
        retry_scheduled: Callable[[int], None] = lambda _ms: None,
        staged: Callable[[Sequence[str]], None] = lambda _ids: None,
    ) -> None:
        self.counts = Counts(options.concurrency)
        self.tasks = Tasks(faults)
        self.recorder = Recorder(
            store=store,
            counts=self.counts,
            report=Report(metrics),
            tasks=self.tasks,
            faults=faults,
            clock=clock,
            failed_max_len=options.failed_max_len,
            released=lambda delivery_id: self.claimer.released(delivery_id),
            retry_scheduled=retry_scheduled,
            staged=staged,
        )
        share = options.first_attempt_share
        retry_workers = max(1, int(options.concurrency * (1 - share))) if share > 0 else None
        self.gate = Gate(
            counts=self.counts,
            retry_workers=retry_workers,
            per_subscription=options.per_subscription,
            clock=clock,
            to_record=self.recorder.submit,
            reload=lambda job: self.intake.reload(job),
        )
        self.intake = Intake(
            store=store,
            counts=self.counts,
            metrics=metrics,
            policy=policy,
            options=IntakeOptions(
                options.max_age_ms,
                options.encryption_key,
                options.standard_webhooks,
                options.adaptive_concurrency,
            ),
            tasks=self.tasks,
            faults=faults,
            clock=clock,
            to_gate=self.gate.offer,
            to_record=self.recorder.submit,
            saw_subscription=self.recorder.saw_subscription,
        )
        self.workers = Workers(
            gate=self.gate,
            sender=sender,
            metrics=metrics,
            faults=faults,
            concurrency=options.concurrency,
            clock=clock,
            to_record=self.recorder.submit,
            retry_options=options.retry,
        )
        self.claimer = Claimer(
            store=store,
            counts=self.counts,
            gate=self.gate,
            metrics=metrics,
            faults=faults,
            pending_timeout_s=options.pending_timeout_s,
            to_intake=self.intake.take,
            to_record=self.recorder.submit,
            retry_lane=2 * retry_workers if retry_workers is not None else 0,
        )
        self.retry_lane = self.claimer.claim_due if retry_workers is not None else None
        metrics.in_flight.set_function(lambda: self.counts.sending)

    @property
    def consuming(self) -> bool:
        """Whether claims are being answered (Redis is there and work is taken)."""
        return self.claimer.consuming

    @property
    def blocking_claim(self) -> bool:
        """Whether the claimer waits on an empty queue (the one wait a stop may cut short)."""
        return self.claimer.blocking

    async def run(self) -> None:
        """Send with the workers and claim until stopped; a dead worker ends the run."""
        claimer = asyncio.get_running_loop().create_task(self.claimer.run(), name="claimer")
        pending: set[asyncio.Task[None]] = {claimer, *self.workers.start()}
        try:
            while not claimer.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {claimer}:
                    if not task.cancelled() and (exc := task.exception()) is not None:
                        raise RuntimeError(f"a {task.get_name()} died: {exc!r}") from exc
        finally:
            claimer.cancel()
        claimer.result()

    def stop_claiming(self) -> None:
        """Stop taking new work (the first step of a drain)."""
        self.claimer.stop()

    async def heartbeat(self) -> int:
        """Refresh the claim times of everything this process holds."""
        return await self.claimer.heartbeat()

    async def drain(self, grace_s: float) -> None:
        """Give back what has not started, let requests and loads finish, write every outcome."""
        self.stop_claiming()
        self.gate.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while (busy := self.workers.tasks | self.tasks.running) and loop.time() < deadline:
            await asyncio.wait(busy, timeout=deadline - loop.time())
        unfinished = self.workers.tasks | self.tasks.running
        if unfinished:
            logs.warning("drain_grace_expired", unfinished=len(unfinished))
        for task in self.workers.tasks:
            task.cancel()  # past the grace: these claims stay for the next instance to recover
        await self.tasks.drain(loop.time())
        await self.recorder.idle(FINAL_WRITE_GRACE_S)
