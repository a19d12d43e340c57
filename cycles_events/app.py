"""Wires the pieces together and supervises them from start-up to a clean exit."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from cycles_events import BUILD_TIME, __version__, logs
from cycles_events.config import ConfigError, Settings
from cycles_events.connection import RedisState, redis_client
from cycles_events.dispatch.pipeline import DispatchOptions, Pipeline
from cycles_events.maintenance import (
    ClaimSweeper,
    ClockSync,
    LimitsSampler,
    OutboxLoop,
    QueueSampler,
    Retention,
    RetryPromoter,
    SecurityConfigRefresher,
    forever,
)
from cycles_events.management import HealthSources, ManagementServer
from cycles_events.metrics import Metrics
from cycles_events.outbox import OutboxStore, Publisher
from cycles_events.policy import PolicySource
from cycles_events.sender import Sender
from cycles_events.store import Store
from cycles_events.supervise import Faults, ServerClock

START_TIMEOUT_S = 5.0
CLAIMER_STOP_S = 2.0


class App:
    """The daemon: a management server, the dispatch pipeline and its supervised loops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(tenant_tag=settings.metrics_tenant_tag_enabled)
        self.faults = Faults(self.metrics.errors.inc)
        self.redis_state = RedisState(on_error=self.metrics.redis_errors.inc)
        self.redis = redis_client(settings)
        self.blocking_redis = redis_client(settings, blocking=True)
        self.store = Store(self.redis, self.blocking_redis, self.redis_state)
        self.clock = ServerClock()
        self.policy = PolicySource(allow_private_networks=settings.url_guard_allow_private_networks)
        self.sender = Sender(
            policy=self.policy.current,
            connect_timeout=settings.http_connect_timeout_seconds,
            total_timeout=settings.http_timeout_seconds,
        )
        self.promoter = RetryPromoter(
            self.store,
            poll_interval_ms=settings.retry_poll_interval_ms,
            batch_size=settings.retry_batch_size,
            clock=self.clock,
        )
        self.publisher = Publisher(
            OutboxStore(self.redis, self.redis_state),
            self.metrics,
            event_ttl_s=settings.event_ttl_days * 86400,
            clock=self.clock,
        )
        self.pipeline = Pipeline(
            store=self.store,
            sender=self.sender,
            metrics=self.metrics,
            policy=self.policy,
            options=DispatchOptions(
                concurrency=settings.concurrency,
                per_subscription=settings.max_in_flight_per_subscription,
                pending_timeout_s=settings.pending_timeout_seconds,
                max_age_ms=settings.max_delivery_age_ms,
                failed_max_len=settings.failed_max_len,
                encryption_key=settings.encryption_key,
                retry=settings.backoff,
                standard_webhooks=settings.standard_webhooks,
                adaptive_concurrency=settings.adaptive_concurrency,
                first_attempt_share=settings.first_attempt_share,
            ),
            faults=self.faults,
            clock=self.clock,
            retry_scheduled=self.promoter.notify,
            staged=self.publisher.soon,
        )
        self.promoter.lane = self.pipeline.retry_lane
        self.sweeper = ClaimSweeper(
            self.store,
            self.pipeline.heartbeat,
            self.metrics,
            idle_ms=settings.processing_recovery_idle_ms,
            interval_ms=settings.processing_recovery_interval_ms,
        )
        self.security = SecurityConfigRefresher(self.store, self.policy, self.metrics)
        self.loops: dict[str, Callable[[], Awaitable[float]]] = {
            "claim-sweeper": self.sweeper.step,
            "retry-promoter": self.promoter.step,
            "outbox-publisher": OutboxLoop(self.publisher).step,
            "security-config": self.security.step,
            "retention": Retention(
                self.store,
                interval_ms=settings.retention_cleanup_interval_ms,
                event_ttl_days=settings.event_ttl_days,
                delivery_ttl_days=settings.delivery_ttl_days,
                clock=self.clock,
            ).step,
            "clock-sync": ClockSync(self.store, self.clock).step,
        }
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.draining = False
        self.management = ManagementServer(
            host=settings.management_address,
            port=settings.management_port,
            metrics=self.metrics,
            health=HealthSources(
                ping=self.store.ping,
                tasks_alive=lambda: {n: not t.done() for n, t in self.tasks.items()},
                consuming=lambda: self.pipeline.consuming and self.redis_state.up,
                draining=lambda: self.draining,
                faults=self.faults.persistent,
                redis_error=lambda: self.redis_state.last_error,
                dispatcher_details=self._details,
            ),
            build_time=BUILD_TIME,
        )
        self.sampler = QueueSampler(
            self.store, self.metrics, self.clock, readiness=self.management.readiness
        )
        self.loops["queue-sampler"] = self.sampler.step
        # always: a subscription's metadata may opt in when the setting is off
        limits = LimitsSampler(self.store, self.metrics, self.pipeline.gate.limits)
        self.loops["limits-sampler"] = limits.step
        self._stop = asyncio.Event()
        self._signals = 0

    def _details(self) -> dict[str, Any]:
        counts = self.pipeline.counts
        return {
            "in_flight": counts.sending,
            "claimed": counts.claimed,
            "recording": counts.recording,
            "stalled_writes": counts.stalled,
            "concurrency": self.settings.concurrency,
        }

    def _start(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks[name] = asyncio.create_task(coro, name=name)

    def request_stop(self, reason: str = "signal") -> None:
        """Begin a graceful stop; a second request exits at once."""
        self._signals += 1
        if self._signals > 1:
            logs.warning("shutdown_forced")
            os._exit(1)
        logs.info("shutdown_requested", reason=reason)
        self.draining = True
        self.metrics.ready.set(0)
        self._stop.set()

    async def run(self) -> int:
        """Run until stopped; 0 on a graceful stop, 1 if a supervised task died."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        try:
            await self.management.start()
        except OSError as exc:  # the port is taken, or the address is not this host's
            where = f"{self.settings.management_address}:{self.settings.management_port}"
            raise ConfigError(
                f"invalid setting MANAGEMENT_PORT/MANAGEMENT_ADDRESS: cannot listen on {where}"
                f" ({exc.strerror or type(exc).__name__})"
            ) from None
        await self.sender.start()
        if self.sender.watchdog is not None:  # it enforces every request's deadline
            self.tasks["http-deadlines"] = self.sender.watchdog
        logs.info(
            "started",
            version=__version__,
            management_port=self.settings.management_port,
            concurrency=self.settings.concurrency,
            per_subscription=self.settings.max_in_flight_per_subscription,
        )
        self._warn_about_settings()
        await self._first_reads()
        for name, step in self.loops.items():
            self._start(name, forever(name, step, self.faults))
        self._start("dispatcher", self.pipeline.run())
        code = await self._supervise()
        await self._shutdown()
        logs.info("stopped", exit_code=code)
        return code

    def _warn_about_settings(self) -> None:
        if self.settings.encryption_key is None:
            logs.warning(
                "encryption_key_not_set",
                detail="WEBHOOK_SECRET_ENCRYPTION_KEY is empty: only plaintext signing secrets "
                "can be used; an enc: secret holds its deliveries, never an unsigned send",
            )
        if self.settings.evidence_server_id.strip():
            logs.warning(
                "evidence_signing_not_supported",
                detail="EVIDENCE_SERVER_ID is set, but evidence signing is a feature of the Java "
                "service: keep it on a Java instance",
            )

    async def _first_reads(self) -> None:
        """Redis's clock and the URL policy before the first claim, when Redis answers."""
        for name in ("clock-sync", "security-config"):
            try:
                async with asyncio.timeout(START_TIMEOUT_S):
                    await self.loops[name]()
            except Exception as exc:  # the loop keeps trying
                logs.warning("startup_read_failed", step=name, error=type(exc).__name__)

    async def _supervise(self) -> int:
        stop = asyncio.create_task(self._stop.wait(), name="stop-signal")
        try:
            done, _ = await asyncio.wait(
                {stop, *self.tasks.values()}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
        if stop in done:
            return 0
        for task in done:
            exc = task.exception() if not task.cancelled() else None
            logs.error(
                "task_died",
                task=task.get_name(),
                error=type(exc).__name__ if exc else "returned",
                detail=str(exc)[:300] if exc else None,
            )
        self.draining = True
        return 1

    async def _shutdown(self) -> None:
        self.draining = True
        self.pipeline.stop_claiming()
        claimer = self.tasks.get("dispatcher")
        if claimer is not None and not claimer.done():
            # A claim under way is let finish: the claimer gives its batch back (cancelled, the
            # batch would stay claimed until recovery). Only a wait on an empty queue is cut.
            if self.pipeline.blocking_claim:
                claimer.cancel()
            await asyncio.wait({claimer}, timeout=CLAIMER_STOP_S)
            if not claimer.done():
                claimer.cancel()
                await asyncio.wait({claimer}, timeout=CLAIMER_STOP_S)
        await self.pipeline.drain(self.settings.shutdown_grace_seconds)
        for name, task in self.tasks.items():
            if name not in ("dispatcher", "http-deadlines") and not task.done():
                task.cancel()
        await asyncio.wait(set(self.tasks.values()) - {self.sender.watchdog}, timeout=2.0)
        await self.sender.close()
        await self.redis.aclose()
        await self.blocking_redis.aclose()
        await self.management.stop()
