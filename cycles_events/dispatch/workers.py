"""The send workers: sign and POST each job, then hand its outcome to the recorder (step 9)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cycles_events import USER_AGENT, adaptive, backoff, lifecycle, logs, stdwebhooks
from cycles_events.dispatch.gate import Gate
from cycles_events.dispatch.intake import ERROR_RETRY_DELAY_MS
from cycles_events.dispatch.outcomes import Job, Outcome, Step
from cycles_events.metrics import Metrics
from cycles_events.retry import Kind
from cycles_events.sender import Sender, SendResult
from cycles_events.signing import build_headers
from cycles_events.supervise import Faults
from cycles_events.urlguard import redact_url

_STEPS = {Kind.SUCCESS: Step.SUCCESS, Kind.RETRYABLE: Step.RETRY, Kind.PERMANENT: Step.FAILED}


class Workers:
    """One long-lived worker per concurrent request (no task is created per delivery)."""

    def __init__(
        self,
        *,
        gate: Gate,
        sender: Sender,
        metrics: Metrics,
        faults: Faults,
        concurrency: int,
        clock: Callable[[], int],
        to_record: Callable[[Outcome], None],
        retry_options: backoff.Options = backoff.OFF,
    ) -> None:
        self._gate = gate
        self._sender = sender
        self._metrics = metrics
        self._faults = faults
        self._concurrency = concurrency
        self._clock = clock
        self._to_record = to_record
        self._retry_options = retry_options
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> set[asyncio.Task[None]]:
        """Start the workers; the caller supervises the tasks returned."""
        while len(self._tasks) < self._concurrency:
            task = asyncio.get_running_loop().create_task(self._work(), name="send-worker")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return set(self._tasks)

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """The workers still running."""
        return set(self._tasks)

    async def _work(self) -> None:
        """Send runnable jobs one after another until the gate closes."""
        while self._gate.open:
            job = self._gate.take()
            if job is None:
                await self._gate.wait()
                continue
            await self._send(job)

    async def _send(self, job: Job) -> None:
        d = job.delivery
        try:
            headers = build_headers(
                event=job.event,
                delivery=d.doc,
                subscription=job.subscription,
                body=job.body,
                secret=job.secret,
                user_agent=USER_AGENT,
            )
            if job.standard_secrets:  # opted in: beside X-Cycles-Signature, never instead
                for name in [n for n in headers if n.lower() in stdwebhooks.RESERVED]:
                    del headers[name]
                event_id = str(job.event.get("event_id") or d.event_id)
                stamp = self._clock() // 1000
                headers.update(stdwebhooks.headers(event_id, stamp, job.body, job.standard_secrets))
            result = await self._sender.post(job.url, job.body, headers)
        except asyncio.CancelledError:  # past the drain's grace: the claim stays for recovery
            self._gate.done(job)
            raise
        except Exception as exc:
            self._gate.done(job)
            self._unexpected(job, exc)
            return
        # The request is over: the worker and the subscription's slot go on to the next job
        # while this outcome waits for its write (the claim stays ours until then).
        if result.blocked is None:
            signal = adaptive.signal_of(result.status, result.error)
            self._gate.done(job, result.elapsed_ms / 1000, signal)
        else:
            self._gate.done(job)
        try:
            self._to_record(self._outcome(job, result))
        except Exception as exc:
            self._unexpected(job, exc)

    def _outcome(self, job: Job, result: SendResult) -> Outcome:
        d = job.delivery
        now = self._clock()
        if result.blocked is not None:  # the connected address was judged: nothing was sent
            logs.info("delivery_blocked", delivery_id=d.delivery_id, url=redact_url(job.url))
            record = lifecycle.failed(d, now, result.blocked)
            context = job.context(reason="ssrf_blocked", message=result.blocked)
            return Outcome(Step.UPSTREAM, d.delivery_id, job.token, record, context=context)
        attempt = lifecycle.after_attempt(
            d,
            job.subscription,
            status=result.status,
            error=result.error,
            elapsed_ms=result.elapsed_ms,
            retry_after=result.retry_after,
            now_ms=now,
            options=self._retry_options.for_subscription(job.subscription),
        )
        context = job.context(
            reason=attempt.reason,
            message=attempt.message,
            attempts=attempt.attempts,
            status=result.status,
            disable_reason=attempt.disable_reason,
        )
        self._metrics.sent(job.tenant, context.event_type, attempt.reason, result.elapsed_ms / 1000)
        return Outcome(
            _STEPS[attempt.kind],
            d.delivery_id,
            job.token,
            attempt.record,
            retry_at_ms=attempt.retry_at_ms,
            context=context,
        )

    def _unexpected(self, job: Job, exc: Exception) -> None:
        d = job.delivery
        self._faults.failed(
            "send", exc, delivery_id=d.delivery_id, subscription_id=d.subscription_id
        )
        retry_at = self._clock() + ERROR_RETRY_DELAY_MS
        self._to_record(Outcome(Step.ERROR, d.delivery_id, job.token, retry_at_ms=retry_at))
