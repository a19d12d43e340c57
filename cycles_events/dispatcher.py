"""The worker pool: claims delivery ids, runs the lifecycle of contract section 3, records it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from cycles_events import USER_AGENT, lifecycle, logs
from cycles_events.batching import GroupCommit
from cycles_events.crypto import SecretError, decrypt_secret
from cycles_events.lifecycle import SubscriptionChange
from cycles_events.metrics import Metrics
from cycles_events.models import (
    ACTIVE_STATUSES,
    Delivery,
    JsonObject,
    RecordError,
    loads_object,
    payload_problems,
    read_object,
    text,
)
from cycles_events.retry import Kind, RetryPolicy, classify, parse_retry_after_ms, status_family
from cycles_events.sender import Sender, SendResult
from cycles_events.signing import build_headers
from cycles_events.store import (
    UNAVAILABLE,
    FinalWrite,
    RedisState,
    Related,
    Store,
    quarantine_entry,
)
from cycles_events.subscriptions import SubscriptionUpdater
from cycles_events.urlguard import SecurityConfigError, SecurityPolicy, UrlBlocked, redact_url

T = TypeVar("T")
# a final write, and the subscription success merge that goes with it
PendingWrite = tuple[FinalWrite, tuple[str, SubscriptionChange] | None]

CLAIM_BATCH = 32
RETRY_TOLERANCE_MS = 250
PARK_DELAY_MS = 1000
WAITING_FRESH_S = 5.0
STUCK_AFTER_S = 1.0
FINAL_WRITE_GRACE_S = 5.0
MAX_CACHED_SECRETS = 10_000
ERROR_RETRY_DELAY_MS = 5000
MAX_REDIS_BACKOFF_S = 5.0


def now_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class DispatchOptions:
    """Knobs of the worker pool, taken from Settings by `app`."""

    concurrency: int = 64
    per_subscription: int = 8
    pending_timeout_s: float = 5.0
    max_age_ms: int = 86_400_000
    event_ttl_s: int = 90 * 86400
    failed_max_len: int = 10_000
    encryption_key: bytes | None = None


@dataclass(slots=True)
class Job:
    """A delivery ready to send."""

    delivery: Delivery
    token: str
    body: bytes
    event: JsonObject
    subscription: JsonObject
    secret: str | None
    url: str
    tenant: str | None


class PolicySource:
    """Holds the current URL policy, refreshed from config:webhook-security by maintenance."""

    def __init__(self, *, allow_private_networks: bool) -> None:
        self.allow_private_networks = allow_private_networks
        self.policy = SecurityPolicy.build(None, allow_private_networks=allow_private_networks)
        self.error: str | None = None
        self.raw: bytes | None = None
        self.loaded = False

    def update(self, raw: bytes | None) -> None:
        """Parse a newly read config; a bad one keeps the last good policy and sets `error`."""
        if self.loaded and raw == self.raw and self.error is None:
            return
        try:
            self.policy = SecurityPolicy.from_stored(
                raw, allow_private_networks=self.allow_private_networks
            )
            self.error = None
        except SecurityConfigError as exc:
            self.error = str(exc)
        self.raw = raw
        self.loaded = True

    def current(self) -> SecurityPolicy:
        """The policy in force."""
        return self.policy


class Dispatcher:
    """Claims deliveries and sends them, many at a time, a bounded few per subscription."""

    def __init__(
        self,
        *,
        store: Store,
        sender: Sender,
        metrics: Metrics,
        policy: PolicySource,
        options: DispatchOptions,
        redis_state: RedisState | None = None,
        clock: Callable[[], int] = now_ms,
        on_retry_scheduled: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.sender = sender
        self.metrics = metrics
        self.policy = policy
        self.opt = options
        self.redis_state = redis_state or RedisState()
        self.clock = clock
        self.on_retry_scheduled = on_retry_scheduled or (lambda _ms: None)
        self.subscriptions = SubscriptionUpdater(store)
        # One group commit for every final write: queued outcomes go out together, a batch's
        # subscription success merges first (CAS), then its delivery writes and claim releases.
        self._commit: GroupCommit[PendingWrite, bool] = GroupCommit("record", self._write_outcomes)
        self.instance = secrets.token_hex(6)
        self._seq = itertools.count()
        self.held: dict[str, str] = {}  # delivery id -> claim token, for every claim we own
        # Every claimed delivery is in exactly one place until its request ends (or it ends
        # without one): loading its records, runnable (its subscription's slot is reserved),
        # waiting for its subscription's next slot, or sending (one of the workers holds it).
        self._loading = 0
        self._runnable: deque[Job] = deque()
        self._waiting: dict[str, deque[tuple[float, Job]]] = {}
        self._waiting_total = 0
        self._sending = 0
        self._per_sub: dict[str, int] = {}  # subscription -> runnable + sending
        # Claimed beyond what the workers can take: prefetch, and room for a saturated
        # subscription's overflow (parked when it is stuck) while the others keep flowing.
        self._claim_cap = 2 * options.concurrency
        self._low_water = max(1, min(CLAIM_BATCH // 2, options.concurrency // 4))
        # outcomes waiting for their final write; past this, claiming waits (backpressure)
        self._recording = 0
        self._recording_cap = 4 * options.concurrency
        self._progress: dict[str, float] = {}  # subscription -> last send start or completion
        self._tasks: set[asyncio.Task[None]] = set()
        self._final_writers: set[asyncio.Task[None]] = set()
        self._workers: set[asyncio.Task[None]] = set()
        self._idle_workers: deque[asyncio.Future[None]] = deque()
        self._fatal: BaseException | None = None
        self._secrets: dict[tuple[str, bytes], str] = {}
        self._capacity = asyncio.Event()
        self.accepting = True
        self.consuming = False
        self.blocking_claim = False  # waiting on an empty queue (the one wait a stop cuts short)
        metrics.in_flight.set_function(lambda: self.in_flight)

    @property
    def active(self) -> int:
        """Claimed deliveries whose request has not ended yet (nor ended without one)."""
        return self._loading + len(self._runnable) + self._waiting_total + self._sending

    @property
    def in_flight(self) -> int:
        """Requests under way (at most DISPATCH_CONCURRENCY)."""
        return self._sending

    # --- claiming -------------------------------------------------------------------------

    def _token(self) -> str:
        return f"{self.instance}:{next(self._seq)}"

    @property
    def owner_prefix(self) -> str:
        """The prefix of every claim token of this process."""
        return f"{self.instance}:"

    async def run(self) -> None:
        """Claim and dispatch until `stop_claiming` is called (or the task is cancelled)."""
        self._start_workers()
        backoff = 0.1
        while self.accepting:
            if self._fatal is not None:
                raise RuntimeError("a dispatch worker died") from self._fatal
            if self._runnable:  # a safety net: a runnable delivery never waits on a lost wake-up
                self._wake_workers()
            # Claimed deliveries wait (prefetched) for their subscription's next free slot; when
            # busy, claim only once a batch's worth of room is free, so each claim and its two
            # loads serve many deliveries rather than one.
            free = self._room()
            if free < self._low_water:
                self._park_stuck_overflow()
                self._capacity.clear()
                # woken only once a batch's worth of room is free (see _wake_claimer)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._capacity.wait()
                continue
            token = self._token()
            try:
                ids, records, dups = await self.store.claim(
                    min(free, CLAIM_BATCH), token, self.clock()
                )
                self.redis_state.ok()
                self.consuming = True
                backoff = 0.1
                loaded: list[bytes | None] | None = records
                if not ids and not dups and self.accepting:
                    self.blocking_claim = True
                    try:
                        one = await self.store.claim_blocking(self.opt.pending_timeout_s, token)
                    finally:
                        self.blocking_claim = False
                    ids, loaded = ([one] if one else []), None
            except UNAVAILABLE as exc:
                self._redis_failed(exc)
                self.consuming = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_REDIS_BACKOFF_S)
                continue
            if dups:
                self.metrics.dropped.labels("duplicate_claim").inc(dups)
            if not ids:
                continue
            if not self.accepting:
                await self._release_quietly(ids, token)
                return
            for i in ids:
                self.held[i] = token
            self._loading += len(ids)
            self._spawn(self._handle(ids, token, loaded), "deliveries")

    def _room(self) -> int:
        """How many ids a claim may take now."""
        if self._recording >= self._recording_cap:
            return 0
        return self._claim_cap - self.active

    def _wake_claimer(self) -> None:
        """Wake the claimer when it could claim a batch (not for every freed slot)."""
        if not self._capacity.is_set() and self._room() >= self._low_water:
            self._capacity.set()

    def stop_claiming(self) -> None:
        """Stop taking new work (the first step of a drain)."""
        self.accepting = False
        self.consuming = False
        self._capacity.set()
        self._wake_workers(all_of_them=True)

    def _spawn(self, coro: Awaitable[None], name: str, *, final_write: bool = False) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if final_write:  # a drain never cancels it
            self._final_writers.add(task)
            task.add_done_callback(self._final_writers.discard)

    def _redis_failed(self, exc: BaseException) -> None:
        self.redis_state.failed(exc)
        self.metrics.redis_errors.inc()

    async def _redis(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis operation, waiting out an outage with capped backoff."""
        backoff = 0.1
        while True:
            try:
                result = await op()
            except UNAVAILABLE as exc:
                self._redis_failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_REDIS_BACKOFF_S)
                continue
            self.redis_state.ok()
            return result

    # --- loading and deciding -------------------------------------------------------------

    async def _handle(
        self, ids: list[str], token: str, raws: list[bytes | None] | None = None
    ) -> None:
        """Load a claimed batch and take each delivery as far as a send or a final write.

        An unexpected error affects only the deliveries not yet handed on: each is retried.
        """
        try:
            parsed: list[Delivery] = []
            try:
                if raws is None:
                    raws = await self._redis(lambda: self.store.load_deliveries(ids))
            except Exception as exc:
                await self._unexpected(ids, token, exc)
                return
            for delivery_id, raw in zip(ids, raws, strict=True):
                try:
                    d = self._screen(delivery_id, raw, token)
                except Exception as exc:
                    await self._unexpected([delivery_id], token, exc)
                    continue
                if d is not None:
                    parsed.append(d)
            if not parsed:
                return
            try:
                related = await self._redis(
                    lambda: self.store.load_related(
                        [d.event_id for d in parsed], [d.subscription_id for d in parsed]
                    )
                )
            except Exception as exc:
                await self._unexpected([d.delivery_id for d in parsed], token, exc)
                return
            for d in parsed:
                try:
                    job = self._prepare(d, token, related)
                except Exception as exc:
                    await self._unexpected([d.delivery_id], token, exc)
                    continue
                if job is not None:
                    self._gate(job)
        finally:
            self._loading -= len(ids)
            self._wake_claimer()

    def _screen(self, delivery_id: str, raw: bytes | None, token: str) -> Delivery | None:
        """Step 1: drop, quarantine, skip or defer; returns the delivery when it goes on."""
        if raw is None:
            self.metrics.dropped.labels("missing_record").inc()
            logs.info("delivery_missing", delivery_id=delivery_id)
            self._final(FinalWrite(delivery_id, token))
            return None
        try:
            d = Delivery.parse(delivery_id, raw)
        except RecordError as exc:
            self.metrics.quarantined.inc()
            logs.warning("delivery_quarantined", delivery_id=delivery_id, reason=str(exc))
            entry = quarantine_entry(delivery_id, "corrupt_record", raw, self.clock())
            self._final(FinalWrite(delivery_id, token, quarantine=entry))
            return None
        if d.status not in ACTIVE_STATUSES:
            self.metrics.dropped.labels("not_pending").inc()
            logs.debug("delivery_skipped", delivery_id=delivery_id, status=d.status)
            self._final(FinalWrite(delivery_id, token))
            return None
        due = d.next_retry_at_ms
        if d.status == "RETRYING" and due is not None and due > self.clock() + RETRY_TOLERANCE_MS:
            logs.debug("delivery_not_due", delivery_id=delivery_id)
            self._final(FinalWrite(delivery_id, token, retry_at_ms=due))
            return None
        return d

    def _prepare(self, d: Delivery, token: str, related: Related) -> Job | None:
        """Steps 2-7: stale, event, subscription, URL policy, secret."""
        now = self.clock()
        ev_raw = related.events.get(d.event_id)
        sub_raw = related.subscriptions.get(d.subscription_id)
        event: JsonObject | None = None
        sub: JsonObject | None = None
        try:
            event = read_object(ev_raw) if ev_raw is not None else None
        except RecordError:
            event = None
        sub = self._parsed_subscription(d.subscription_id, sub_raw, related)
        tenant = text(sub or {}, "tenant_id") or text(event or {}, "tenant_id")

        if d.attempted_at_ms is not None and now - d.attempted_at_ms > self.opt.max_age_ms:
            msg = lifecycle.stale_message(now - d.attempted_at_ms, self.opt.max_age_ms)
            self.metrics.stale_delivery(tenant)
            logs.info("delivery_stale", delivery_id=d.delivery_id)
            self._final(FinalWrite(d.delivery_id, token, lifecycle.failed(d, now, msg)))
            return None
        if ev_raw is None:
            self._fail_upstream(
                d, token, tenant, "event_not_found", f"Event not found: {d.event_id}"
            )
            return None
        if event is None:
            self._fail_upstream(
                d, token, tenant, "invalid_record", f"Event record is not valid JSON: {d.event_id}"
            )
            return None
        for rule in payload_problems(event):
            self.metrics.invalid_payload(text(event, "event_type"), rule)
        d = lifecycle.with_trace(d, event)
        if sub_raw is None:
            self._fail_upstream(
                d, token, tenant, "subscription_not_found", "Subscription not found"
            )
            return None
        if sub is None:
            self._fail_upstream(
                d, token, tenant, "invalid_record", "Subscription record is not valid JSON"
            )
            return None
        status = sub.get("status")
        if status != "ACTIVE":
            self._fail_upstream(
                d, token, tenant, "subscription_inactive", f"Subscription not active: {status}"
            )
            return None
        url = sub.get("url")
        if not isinstance(url, str) or not url.strip():
            self._fail_upstream(
                d, token, tenant, "ssrf_blocked", "URL blocked: subscription has no URL"
            )
            return None
        if self.policy.error is not None:
            self.metrics.security_config_invalid.inc()
            logs.warning(
                "security_config_invalid", delivery_id=d.delivery_id, error=self.policy.error
            )
            retry_at = self.clock() + ERROR_RETRY_DELAY_MS
            self._spawn(self._release(d.delivery_id, token, retry_at), "release")
            return None
        try:
            self.policy.current().check_url(url)
        except UrlBlocked as exc:
            self._fail_upstream(d, token, tenant, "ssrf_blocked", str(exc))
            return None
        secret: str | None = None
        stored = related.secrets.get(d.subscription_id)
        if stored is not None:
            try:
                secret = self._decrypt(d.subscription_id, stored)
            except SecretError as exc:
                self._fail_upstream(
                    d, token, tenant, "secret_error", f"Signing secret unusable: {exc}"
                )
                return None
        assert ev_raw is not None
        return Job(d, token, ev_raw, event, sub, secret, url.strip(), tenant)

    def _parsed_subscription(
        self, subscription_id: str, raw: bytes | None, related: Related
    ) -> JsonObject | None:
        """Parse a subscription record once per batch (many deliveries share one)."""
        if raw is None:
            return None
        cache = related.parsed
        if raw not in cache:
            try:
                doc = cache[raw] = loads_object(raw)
            except RecordError:
                cache[raw] = None
            else:
                self.subscriptions.remember(subscription_id, raw.decode("utf-8", "replace"), doc)
        return cache[raw]

    def _decrypt(self, subscription_id: str, stored: bytes) -> str:
        """Decrypt a stored secret, remembering the result for the same stored value."""
        key = (subscription_id, stored)
        secret = self._secrets.get(key)
        if secret is None:
            secret = decrypt_secret(stored.decode("utf-8", "replace"), self.opt.encryption_key)
            if len(self._secrets) >= MAX_CACHED_SECRETS:
                self._secrets.clear()
            self._secrets[key] = secret
        return secret

    def _fail_upstream(
        self, d: Delivery, token: str, tenant: str | None, reason: str, message: str
    ) -> None:
        """End a delivery FAILED before any send; never counts against the subscription."""
        self.metrics.failure(tenant, d.event_type, reason)
        logs.info("delivery_failed", delivery_id=d.delivery_id, reason=reason, error=message)
        self._final(FinalWrite(d.delivery_id, token, lifecycle.failed(d, self.clock(), message)))

    # --- per-subscription gate --------------------------------------------------------------

    def _gate(self, job: Job) -> None:
        """Hand to a worker, or wait for the subscription's next free slot (parked if stuck)."""
        sub = job.delivery.subscription_id
        if not self.accepting:  # draining: nothing new starts, the claim goes back
            self._spawn(self._release(job.delivery.delivery_id, job.token, None), "release")
            return
        n = self._per_sub.get(sub, 0)
        if n < self.opt.per_subscription:
            self._per_sub[sub] = n + 1
            self._progress.setdefault(sub, time.monotonic())
            self._runnable.append(job)
            self._wake_workers()
            return
        queue = self._waiting.setdefault(sub, deque())
        if self._stuck(sub) and len(queue) >= self._stuck_queue:
            self._park(job)
            return
        queue.append((time.monotonic(), job))
        self._waiting_total += 1

    @property
    def _stuck_queue(self) -> int:
        return 2 * self.opt.per_subscription

    def _stuck(self, sub: str) -> bool:
        """At its bound, and no send of it has finished for a while: a slow or dead receiver."""
        last = self._progress.get(sub)
        return last is not None and time.monotonic() - last > STUCK_AFTER_S

    def _park(self, job: Job) -> None:
        self.metrics.parked.inc()
        delivery_id = job.delivery.delivery_id
        self._spawn(self._release(delivery_id, job.token, self.clock() + PARK_DELAY_MS), "park")

    def _park_stuck_overflow(self) -> None:
        """Free the waiting room held by stuck subscriptions, so the others keep flowing."""
        for sub, queue in list(self._waiting.items()):
            while len(queue) > self._stuck_queue and self._stuck(sub):
                _, job = queue.pop()
                self._waiting_total -= 1
                self._park(job)

    def _resume(self, sub: str) -> None:
        """Give a subscription's freed slot to its oldest waiting delivery."""
        queue = self._waiting.get(sub)
        if not queue:
            self._waiting.pop(sub, None)
            return
        since, job = queue.popleft()
        self._waiting_total -= 1
        if not queue:
            self._waiting.pop(sub, None)
        if not self.accepting or time.monotonic() - since <= WAITING_FRESH_S:
            self._gate(job)
            return
        # waited long enough for its records to be stale: load them again before sending
        self._loading += 1
        self._spawn(self._handle([job.delivery.delivery_id], job.token), "resume")

    # --- workers ----------------------------------------------------------------------------

    def _start_workers(self) -> None:
        """One long-lived worker per concurrent request: no task is created per delivery."""
        while len(self._workers) < self.opt.concurrency:
            task = asyncio.create_task(self._worker(), name="dispatch-worker")
            self._workers.add(task)
            task.add_done_callback(self._worker_ended)

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        self._workers.discard(task)
        if not task.cancelled() and task.exception() is not None and self._fatal is None:
            self._fatal = task.exception()
            self._capacity.set()

    def _wake_workers(self, *, all_of_them: bool = False) -> None:
        wanted = len(self._idle_workers) if all_of_them else len(self._runnable)
        while wanted > 0 and self._idle_workers:
            waiter = self._idle_workers.popleft()
            if not waiter.done():
                waiter.set_result(None)
                wanted -= 1

    async def _worker(self) -> None:
        """Send runnable deliveries one after another until the pool drains."""
        loop = asyncio.get_running_loop()
        while self.accepting:  # a drain gives back what is still runnable
            if self._runnable:
                job = self._runnable.popleft()
                self._sending += 1
                await self._send(job)
                continue
            # woken by _gate, by stop_claiming, and by the claimer at least every second
            waiter = loop.create_future()
            self._idle_workers.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()

    # --- sending and recording --------------------------------------------------------------

    async def _send(self, job: Job) -> None:
        """Sign and send one delivery, then hand its outcome on to be recorded."""
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
            result = await self.sender.post(job.url, job.body, headers)
        except asyncio.CancelledError:
            self._free_slot(d.subscription_id)
            raise
        except Exception as exc:
            self._free_slot(d.subscription_id)
            self._spawn(self._unexpected([d.delivery_id], job.token, exc), "error")
            return
        # The request is over: the worker and the subscription's slot go to the next delivery
        # while this one is recorded (the claim stays ours until the final write). Recording
        # happens outside the worker, so a drain never cancels the final write of a send.
        self._free_slot(d.subscription_id)
        try:
            self._record(job, result)
        except Exception as exc:
            self._spawn(self._unexpected([d.delivery_id], job.token, exc), "error")

    def _free_slot(self, sub_id: str) -> None:
        """A request ended: free its slots and give the subscription's to a waiting delivery."""
        self._sending -= 1
        left = self._per_sub[sub_id] - 1
        if left <= 0:
            self._per_sub.pop(sub_id, None)
            self._progress.pop(sub_id, None)
        else:
            self._per_sub[sub_id] = left
            self._progress[sub_id] = time.monotonic()
        self._resume(sub_id)
        self._wake_claimer()

    def _record(self, job: Job, result: SendResult) -> None:
        """Queue the outcome of a send for its final write (a terminal failure does more)."""
        d, tenant, event_type = (
            job.delivery,
            job.tenant,
            job.delivery.event_type or text(job.event, "event_type"),
        )
        now = self.clock()
        if result.blocked is not None:
            self.metrics.failure(tenant, event_type, "ssrf_blocked")
            logs.info(
                "delivery_blocked",
                delivery_id=d.delivery_id,
                url=redact_url(job.url),
                error=result.blocked,
            )
            record = lifecycle.failed(d, now, result.blocked)
            self._final(FinalWrite(d.delivery_id, job.token, record))
            return
        attempts = d.attempts + 1
        outcome = classify(result.status, result.error)
        if outcome.kind is Kind.SUCCESS:
            assert result.status is not None
            family = status_family(result.status)
            self.metrics.delivered(tenant, event_type, family, result.elapsed_ms / 1000)
            record = lifecycle.succeeded(
                d, now, attempts=attempts, status=result.status, elapsed_ms=result.elapsed_ms
            )
            change = SubscriptionChange(True, now, d.delivery_id)
            write = FinalWrite(d.delivery_id, job.token, record)
            self._final(write, (d.subscription_id, change))
            if logs.debugging():
                logs.debug(
                    "delivery_succeeded",
                    delivery_id=d.delivery_id,
                    status=result.status,
                    attempts=attempts,
                    ms=result.elapsed_ms,
                )
            return
        self.metrics.attempt(tenant, event_type)
        self.metrics.observe(tenant, event_type, outcome.reason, result.elapsed_ms / 1000)
        message = outcome.message or "delivery failed"
        policy = RetryPolicy.from_subscription(job.subscription)
        if outcome.kind is Kind.RETRYABLE and attempts <= policy.max_retries:
            retry_after = parse_retry_after_ms(result.retry_after, now)
            retry_at = now + policy.delay_ms(attempts, retry_after)
            self.metrics.retry(tenant, event_type)
            record = lifecycle.retrying(
                d,
                attempts=attempts,
                status=result.status,
                elapsed_ms=result.elapsed_ms,
                message=message,
                next_retry_ms=retry_at,
            )
            self._final(FinalWrite(d.delivery_id, job.token, record, retry_at))
            logs.info(
                "delivery_retrying",
                delivery_id=d.delivery_id,
                reason=outcome.reason,
                error=message,
                attempts=attempts,
                next_retry_ms=retry_at,
            )
            return
        self.metrics.failure(tenant, event_type, outcome.reason)
        record = lifecycle.failed(
            d, now, message, attempts=attempts, status=result.status, elapsed_ms=result.elapsed_ms
        )
        self._recording += 1
        self._spawn(
            self._record_failure(job, now, record, attempts, result, message, outcome.reason),
            "failure",
            final_write=True,
        )

    async def _record_failure(
        self,
        job: Job,
        now: int,
        record: JsonObject,
        attempts: int,
        result: SendResult,
        message: str,
        reason: str,
    ) -> None:
        """A terminal failure: the subscription's failure count, meta-events, then the record."""
        d, tenant = job.delivery, job.tenant
        try:
            applied = await self._redis(
                lambda: self.subscriptions.apply(
                    d.subscription_id, SubscriptionChange(False, now, d.delivery_id)
                )
            )
            sub_now = applied.subscription or job.subscription
            await self._save_event(
                lifecycle.delivery_failed_event(
                    sub_now,
                    d,
                    job.event,
                    attempts=attempts,
                    status=result.status,
                    error=message,
                    now_ms=now,
                )
            )
            if applied.result.disabled:
                self.metrics.disabled(tenant, lifecycle.DISABLE_REASON)
                logs.warning(
                    "subscription_auto_disabled",
                    delivery_id=d.delivery_id,
                    subscription_id=d.subscription_id,
                )
                await self._save_event(
                    lifecycle.disabled_event(
                        sub_now, d, job.event, applied.result.previous_status or "ACTIVE", now
                    )
                )
            self._final(FinalWrite(d.delivery_id, job.token, record))
            logs.info(
                "delivery_failed",
                delivery_id=d.delivery_id,
                reason=reason,
                error=message,
                attempts=attempts,
            )
        except Exception as exc:
            await self._unexpected([d.delivery_id], job.token, exc)
        finally:
            self._recording -= 1
            self._wake_claimer()

    async def _save_event(self, event: JsonObject) -> None:
        await self._redis(lambda: self.store.save_event(event, self.opt.event_ttl_s))

    def _final(
        self, write: FinalWrite, change: tuple[str, SubscriptionChange] | None = None
    ) -> None:
        """Queue a delivery's last write (and its subscription's success merge, if any).

        Final writes are group committed and never awaited by the delivery: the claim stays
        ours (and heartbeated) until the write lands, and a drain waits for all of them.
        """
        self._recording += 1

        def done(owned: bool | None, exc: BaseException | None) -> None:
            self._recording -= 1
            if exc is None:
                self._written(write, bool(owned))
            elif isinstance(exc, Exception):
                self._spawn(self._unexpected([write.delivery_id], write.token, exc), "error")
            self._wake_claimer()

        self._commit.push((write, change), done)

    def _written(self, write: FinalWrite, owned: bool) -> None:
        self.held.pop(write.delivery_id, None)
        if not owned:
            logs.warning("claim_lost", delivery_id=write.delivery_id)
        elif write.retry_at_ms is not None and write.record is not None:
            self.on_retry_scheduled(write.retry_at_ms)

    async def _write_outcomes(self, batch: list[PendingWrite]) -> list[bool]:
        # Redis outages are waited out here, for every queued write. Success merges are
        # idempotent (counter 0, timestamps), so a batch retried after a Redis error may apply
        # them twice without harm; terminal failures never come this way.
        changes = [change for _, change in batch if change is not None]
        writes = [write for write, _ in batch]

        async def once() -> list[bool]:
            if changes:
                await self.subscriptions.write(changes)
            return await self.store.finalize(writes, self.opt.failed_max_len)

        return await self._redis(once)

    async def _release(self, delivery_id: str, token: str, retry_at_ms: int | None) -> None:
        await self._redis(lambda: self.store.release([delivery_id], token, retry_at_ms=retry_at_ms))
        self.held.pop(delivery_id, None)
        if retry_at_ms is not None:
            self.on_retry_scheduled(retry_at_ms)

    async def _release_quietly(self, ids: list[str], token: str) -> None:
        try:
            await self.store.release(ids, token)
        except UNAVAILABLE as exc:
            self._redis_failed(exc)

    async def _unexpected(self, ids: list[str], token: str, exc: Exception) -> None:
        """Log and count an unexpected error, and retry the deliveries later; never re-raise."""
        self.metrics.errors.inc()
        for delivery_id in ids:
            logs.error(
                "delivery_error",
                delivery_id=delivery_id,
                error=type(exc).__name__,
                detail=str(exc)[:200],
            )
        try:
            await self.store.release(ids, token, retry_at_ms=self.clock() + ERROR_RETRY_DELAY_MS)
            for delivery_id in ids:
                self.held.pop(delivery_id, None)
            self.on_retry_scheduled(self.clock() + ERROR_RETRY_DELAY_MS)
        except Exception as again:  # Redis is gone too: the claims stay for recovery
            logs.error("delivery_error_release_failed", error=type(again).__name__)

    # --- heartbeat and drain ----------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Refresh the claim times of everything we hold."""
        ids = list(self.held)
        if ids:
            await self.store.heartbeat(ids, self.owner_prefix, self.clock())

    async def drain(self, grace_s: float) -> None:
        """Stop claiming, give back unstarted claims, let sends finish within the grace period."""
        self.stop_claiming()
        unstarted = [job for q in self._waiting.values() for _, job in q] + list(self._runnable)
        self._waiting.clear()
        self._waiting_total = 0
        self._runnable.clear()
        for job in unstarted:
            self.held.pop(job.delivery.delivery_id, None)
            await self._release_quietly([job.delivery.delivery_id], job.token)
        # sends and loads under way get the grace period, and so do the tasks they start
        # meanwhile (a load finishing now gives its claims back)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while (busy := self._workers | self._tasks) and loop.time() < deadline:
            await asyncio.wait(busy, timeout=deadline - loop.time())
        pending = self._workers | self._tasks
        if pending:
            logs.warning("drain_grace_expired", unfinished=len(pending))
            for task in pending:
                if task not in self._final_writers:
                    task.cancel()
            await asyncio.wait(pending, timeout=FINAL_WRITE_GRACE_S)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FINAL_WRITE_GRACE_S):
                await self._commit.idle()
