"""Intake: load a claimed batch, screen each record and prepare what can be sent (steps 1-8)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cycles_events import adaptive, boundary, lifecycle, logs, stdwebhooks
from cycles_events.connection import UNAVAILABLE
from cycles_events.crypto import SecretError, decrypt_secret
from cycles_events.dispatch.counts import Counts
from cycles_events.dispatch.outcomes import Context, Job, Outcome, Step
from cycles_events.metrics import Metrics
from cycles_events.models import (
    Delivery,
    JsonObject,
    RecordError,
    loads_object,
    payload_problems,
    read_object,
    text,
)
from cycles_events.policy import PolicySource
from cycles_events.store import Store
from cycles_events.storevalues import Related, quarantine_entry
from cycles_events.supervise import Faults, Tasks
from cycles_events.urlguard import UrlBlocked

RETRY_TOLERANCE_MS = 250
ERROR_RETRY_DELAY_MS = 5000
CONFIG_HOLD_MS = 5000
MAX_CACHED_SECRETS = 10_000
MAX_REDIS_BACKOFF_S = 0.5


def secret_hold_ms(age_ms: int) -> int:
    """How long a delivery without a usable secret waits: longer as it ages (1 s to 30 s)."""
    return min(30_000, max(1000, age_ms // 10))


@dataclass(frozen=True, slots=True)
class IntakeOptions:
    """The settings intake applies."""

    max_age_ms: int
    encryption_key: bytes | None
    standard_webhooks: bool = False  # the deployment's default; a subscription may override
    adaptive_concurrency: bool = False  # likewise


class Intake:
    """Turns claimed ids into jobs for the gate, or straight into outcomes for the recorder."""

    def __init__(
        self,
        *,
        store: Store,
        counts: Counts,
        metrics: Metrics,
        policy: PolicySource,
        options: IntakeOptions,
        tasks: Tasks,
        faults: Faults,
        clock: Callable[[], int],
        to_gate: Callable[[Job], None],
        to_record: Callable[[Outcome], None],
        saw_subscription: Callable[[str, bytes, JsonObject], None],
    ) -> None:
        self._store = store
        self._counts = counts
        self._metrics = metrics
        self._policy = policy
        self._opt = options
        self._tasks = tasks
        self._faults = faults
        self._clock = clock
        self._to_gate = to_gate
        self._to_record = to_record
        self._saw_subscription = saw_subscription
        self._secrets: dict[tuple[str, bytes], str] = {}

    def take(
        self,
        ids: Sequence[str],
        token: str,
        records: Sequence[bytes | None] | None,
        related: Related | None = None,
    ) -> None:
        """Accept a claimed batch (with its records, and theirs, when the claim read them)."""
        self._counts.loading += len(ids)
        if records is None:
            self._tasks.spawn(self._load(list(ids), token), "intake")
            return
        # at hand: screened (and prepared, when the claim read what they name) now, since a task
        # would cost the batch a turn of a busy loop; only a read still missing takes one
        unread = self._intake(list(ids), token, records, related)
        if unread:
            self._tasks.spawn(self._load_related(unread, token), "intake")

    def reload(self, job: Job) -> None:
        """Load a delivery again: it waited at the gate long enough for its records to change."""
        self.take([job.delivery.delivery_id], job.token, None)

    async def _load(self, ids: list[str], token: str) -> None:
        try:
            raws = await self._redis_load(ids)
        except Exception as exc:  # nothing was handed on: all of it is retried
            self._failed(ids, token, exc)
            self._loaded(len(ids))
            return
        unread = self._intake(ids, token, raws, None)
        if unread:  # read in this task: a task of its own would start a turn of the loop later
            await self._load_related(unread, token)

    def _intake(
        self,
        ids: list[str],
        token: str,
        raws: Sequence[bytes | None],
        read: Related | None,
    ) -> list[Delivery]:
        """Screen a batch and prepare it if the claim read what it names; what is left to read."""
        pending = set(ids)  # not handed on yet (to the gate, the recorder or a read)
        reading = 0
        try:
            screened: list[Delivery] = []
            for delivery_id, raw in zip(ids, raws, strict=True):
                pending.discard(delivery_id)
                try:
                    d = self._screen(delivery_id, raw, token)
                except Exception as exc:
                    self._error(delivery_id, token, exc)
                    continue
                if d is not None:
                    screened.append(d)
                    pending.add(delivery_id)
            if screened and (read is None or not covers(read, screened)):
                reading = len(screened)  # loading until their read ends
                pending.clear()
                return screened
            if read is not None:
                self._prepare_all(screened, token, read, pending)
        except Exception as exc:  # what it had not handed on is retried
            self._failed(list(pending), token, exc)
        finally:
            self._loaded(len(ids) - reading)
        return []

    async def _load_related(self, screened: list[Delivery], token: str) -> None:
        pending = {d.delivery_id for d in screened}
        try:
            read = await self._redis_related(screened)
            self._prepare_all(screened, token, read, pending)
        except Exception as exc:
            self._failed(list(pending), token, exc)
        finally:
            self._loaded(len(screened))

    def _prepare_all(
        self, screened: list[Delivery], token: str, related: Related, pending: set[str]
    ) -> None:
        for d in screened:
            pending.discard(d.delivery_id)
            try:
                job = self._prepare(d, token, related)
            except Exception as exc:
                self._error(d.delivery_id, token, exc)
                continue
            if job is not None:
                self._to_gate(job)

    def _loaded(self, n: int) -> None:
        """n claimed ids left the intake: the claimer may find room."""
        self._counts.loading -= n
        self._counts.freed()

    def _failed(self, ids: list[str], token: str, exc: Exception) -> None:
        for delivery_id in ids:
            self._error(delivery_id, token, exc)

    def _error(self, delivery_id: str, token: str, exc: Exception) -> None:
        self._faults.failed("intake", exc, delivery_id=delivery_id)
        retry_at = self._clock() + ERROR_RETRY_DELAY_MS
        self._to_record(Outcome(Step.ERROR, delivery_id, token, retry_at_ms=retry_at))

    async def _redis_load(self, ids: list[str]) -> list[bytes | None]:
        backoff = 0.05
        while True:
            try:
                return await self._store.load_deliveries(ids)
            except UNAVAILABLE:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_REDIS_BACKOFF_S)

    async def _redis_related(self, batch: list[Delivery]) -> Related:
        backoff = 0.05
        events = [d.event_id for d in batch]
        subs = [d.subscription_id for d in batch]
        while True:
            try:
                return await self._store.load_related(events, subs)
            except UNAVAILABLE:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_REDIS_BACKOFF_S)

    def _screen(self, delivery_id: str, raw: bytes | None, token: str) -> Delivery | None:
        """Step 1: drop, quarantine, skip or defer; the delivery when it goes on."""
        if raw is None:
            self._to_record(Outcome(Step.DROP, delivery_id, token))
            return None
        try:
            d = Delivery.parse(delivery_id, raw)
        except RecordError as exc:
            entry = quarantine_entry(delivery_id, "corrupt_record", raw, self._clock())
            logs.warning("delivery_corrupt", delivery_id=delivery_id, problem=str(exc))
            self._to_record(Outcome(Step.QUARANTINE, delivery_id, token, quarantine=entry))
            return None
        if d.status not in ("PENDING", "RETRYING"):
            self._to_record(Outcome(Step.SKIP, delivery_id, token))
            return None
        due = d.next_retry_at_ms
        if d.status == "RETRYING" and due is not None and due > self._clock() + RETRY_TOLERANCE_MS:
            self._to_record(Outcome(Step.DEFER, delivery_id, token, retry_at_ms=due))
            return None
        return d

    def _prepare(self, d: Delivery, token: str, related: Related) -> Job | None:
        """Steps 2-8: stale, event, trace, subscription, boundary, URL policy, secret."""
        now = self._clock()
        ev_raw = related.events.get(d.event_id)
        sub_raw = related.subscriptions.get(d.subscription_id)
        try:
            event = read_object(ev_raw) if ev_raw is not None else None
        except RecordError:
            event = None
        sub = self._parsed_subscription(d.subscription_id, sub_raw, related)
        tenant = text(sub or {}, "tenant_id") or text(event or {}, "tenant_id")
        ctx = Context(d, tenant, d.event_type or text(event or {}, "event_type") or "", event, sub)

        def end(step: Step, reason: str | None, message: str) -> None:
            record = lifecycle.failed(d, now, message)
            context = ctx._replace(reason=reason, message=message)
            self._to_record(Outcome(step, d.delivery_id, token, record, context=context))

        if d.attempted_at_ms is not None and now - d.attempted_at_ms > self._opt.max_age_ms:
            end(
                Step.STALE,
                None,
                lifecycle.stale_message(now - d.attempted_at_ms, self._opt.max_age_ms),
            )
            return None
        if ev_raw is None:
            end(Step.UPSTREAM, "event_not_found", f"Event not found: {d.event_id}")
            return None
        if event is None:
            end(Step.UPSTREAM, "invalid_record", f"Event record is not valid JSON: {d.event_id}")
            return None
        for rule in payload_problems(event):
            self._metrics.invalid_payload(text(event, "event_type"), rule)
        d = lifecycle.with_trace(d, event)
        ctx = ctx._replace(delivery=d)
        if sub_raw is None:
            end(Step.UPSTREAM, "subscription_not_found", "Subscription not found")
            return None
        if sub is None:
            end(Step.UPSTREAM, "invalid_record", "Subscription record is not valid JSON")
            return None
        status = sub.get("status")
        if status != "ACTIVE":
            end(Step.UPSTREAM, "subscription_inactive", f"Subscription not active: {status}")
            return None
        if boundary.blocked(sub, event):
            end(Step.BOUNDARY, None, boundary.MESSAGE)
            return None
        url = sub.get("url")
        if not isinstance(url, str) or not url.strip():
            end(Step.UPSTREAM, "ssrf_blocked", "URL blocked: subscription has no URL")
            return None
        if self._policy.error is not None:
            self._hold(d, token, ctx, "security_config_indeterminate", now + CONFIG_HOLD_MS)
            return None
        try:
            self._policy.current().check_url(url)
        except UrlBlocked as exc:
            end(Step.UPSTREAM, "ssrf_blocked", str(exc))
            return None
        stored = related.secrets.get(d.subscription_id)
        try:
            if stored is None:
                raise SecretError("no signing secret stored")
            secret = self._decrypt(d.subscription_id, stored)
            if not secret.strip():
                raise SecretError("the signing secret is blank")
        except SecretError as exc:
            age = now - (d.attempted_at_ms if d.attempted_at_ms is not None else now)
            hold_ctx = ctx._replace(message=str(exc))
            self._hold(d, token, hold_ctx, "missing_signing_secret", now + secret_hold_ms(age))
            return None
        assert ev_raw is not None
        standard: tuple[str, ...] = ()
        if stdwebhooks.enabled_for(sub, self._opt.standard_webhooks):
            previous = related.previous_secrets.get(d.subscription_id)
            standard = tuple(stdwebhooks.secrets_in_force(secret, self._previous(d, previous)))
        adapts = adaptive.enabled_for(sub, self._opt.adaptive_concurrency)
        return Job(d, token, ev_raw, event, sub, secret, url.strip(), tenant, standard, adapts)

    def _previous(self, d: Delivery, stored: bytes | None) -> str | None:
        """A rotated-out secret still in its grace period; one that cannot be used is none."""
        if stored is None:
            return None
        try:
            return self._decrypt(d.subscription_id + ":previous", stored)
        except SecretError:
            return None

    def _hold(self, d: Delivery, token: str, ctx: Context, reason: str, until_ms: int) -> None:
        context = ctx._replace(reason=reason)
        self._to_record(
            Outcome(Step.HOLD, d.delivery_id, token, retry_at_ms=until_ms, context=context)
        )

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
                self._saw_subscription(subscription_id, raw, doc)
        return cache[raw]

    def _decrypt(self, subscription_id: str, stored: bytes) -> str:
        """Decrypt a stored secret, remembering the result for the same stored value."""
        key = (subscription_id, stored)
        secret = self._secrets.get(key)
        if secret is None:
            secret = decrypt_secret(stored.decode("utf-8", "replace"), self._opt.encryption_key)
            if len(self._secrets) >= MAX_CACHED_SECRETS:
                self._secrets.clear()
            self._secrets[key] = secret
        return secret


def covers(read: Related, batch: Sequence[Delivery]) -> bool:
    """Whether the claim read every event and subscription the batch names."""
    return all(d.event_id in read.events and d.subscription_id in read.subscriptions for d in batch)
