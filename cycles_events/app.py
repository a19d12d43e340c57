"""Wires the pieces together and supervises them from start-up to a clean exit."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from cycles_events import __version__, logs
from cycles_events.config import Settings
from cycles_events.dispatcher import Dispatcher, DispatchOptions, PolicySource
from cycles_events.maintenance import (
    ClaimSweeper,
    QueueSampler,
    Retention,
    RetryPromoter,
    SecurityConfigRefresher,
)
from cycles_events.management import HealthSources, ManagementServer
from cycles_events.metrics import Metrics
from cycles_events.sender import Sender
from cycles_events.store import PackedConnection, PackedSSLConnection, RedisState, Store

COMMAND_TIMEOUT_S = 5.0


def redis_client(settings: Settings, *, socket_timeout: float | None = COMMAND_TIMEOUT_S) -> Redis:
    """A Redis client for the configured server (REDIS_URL wins over host/port/password)."""
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 3.0,
        "health_check_interval": 15,
        # One immediate retry on a fresh connection absorbs connections that died while Redis
        # restarted; a real outage still fails at once and is handled by the loops.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        # ids are str in our code; whatever bytes a producer pushed must survive the round trip
        "encoding_errors": "surrogateescape",
    }
    url = settings.redis_url.get_secret_value()
    if url.startswith("rediss://"):
        return Redis.from_url(url, connection_class=PackedSSLConnection, **common)
    if url.startswith("redis://"):
        return Redis.from_url(url, connection_class=PackedConnection, **common)
    if url:
        return Redis.from_url(url, **common)
    password = settings.redis_password.get_secret_value() or None
    pool = ConnectionPool(
        connection_class=PackedConnection,
        host=settings.redis_host,
        port=settings.redis_port,
        password=password,
        **common,
    )
    return Redis(connection_pool=pool)


class App:
    """The daemon: a management server, the worker pool and its supervised loops."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(tenant_tag=settings.metrics_tenant_tag_enabled)
        self.redis = redis_client(settings)
        self.blocking_redis = redis_client(
            settings, socket_timeout=settings.pending_timeout_seconds + COMMAND_TIMEOUT_S
        )
        self.store = Store(self.redis, self.blocking_redis)
        self.redis_state = RedisState()
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
        )
        self.dispatcher = Dispatcher(
            store=self.store,
            sender=self.sender,
            metrics=self.metrics,
            policy=self.policy,
            options=DispatchOptions(
                concurrency=settings.concurrency,
                per_subscription=settings.max_in_flight_per_subscription,
                pending_timeout_s=settings.pending_timeout_seconds,
                max_age_ms=settings.max_delivery_age_ms,
                event_ttl_s=settings.event_ttl_days * 86400,
                failed_max_len=settings.failed_max_len,
                encryption_key=settings.encryption_key,
            ),
            redis_state=self.redis_state,
            on_retry_scheduled=self.promoter.notify,
        )
        self.sweeper = ClaimSweeper(
            self.store,
            self.dispatcher,
            self.metrics,
            idle_ms=settings.processing_recovery_idle_ms,
        )
        self.retention = Retention(
            self.store,
            interval_ms=settings.retention_cleanup_interval_ms,
            event_ttl_days=settings.event_ttl_days,
            delivery_ttl_days=settings.delivery_ttl_days,
        )
        self.security = SecurityConfigRefresher(self.store, self.policy)
        self.sampler = QueueSampler(self.store, self.metrics)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.draining = False
        self.management = ManagementServer(
            host=settings.management_address,
            port=settings.management_port,
            metrics=self.metrics,
            health=HealthSources(
                ping=self.store.ping,
                tasks_alive=lambda: {n: not t.done() for n, t in self.tasks.items()},
                consuming=lambda: self.dispatcher.consuming and self.redis_state.up,
                draining=lambda: self.draining,
                dispatcher_details=lambda: {
                    "in_flight": self.dispatcher.in_flight,
                    "claimed": self.dispatcher.active,
                    "concurrency": settings.concurrency,
                },
            ),
            build_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        self._stop = asyncio.Event()
        self._signals = 0

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
        await self.management.start()
        await self.sender.start()
        logs.info(
            "started",
            version=__version__,
            management_port=self.settings.management_port,
            concurrency=self.settings.concurrency,
            per_subscription=self.settings.max_in_flight_per_subscription,
        )
        try:
            await asyncio.wait_for(self.security.step(), timeout=COMMAND_TIMEOUT_S)
        except Exception as exc:  # the refresher loop keeps trying
            logs.warning("security_config_unread", error=type(exc).__name__)
        self._start("claim-sweeper", self.sweeper.run(self.redis_state))
        self._start("retry-promoter", self.promoter.run(self.redis_state, self.metrics))
        self._start("security-config", self.security.run(self.redis_state, self.metrics))
        self._start("retention", self.retention.run(self.redis_state, self.metrics))
        self._start("queue-sampler", self.sampler.run(self.redis_state))
        self._start("dispatcher", self.dispatcher.run())
        code = await self._supervise()
        await self._shutdown()
        logs.info("stopped", exit_code=code)
        return code

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
        self.dispatcher.stop_claiming()
        claimer = self.tasks.get("dispatcher")
        if claimer is not None and not claimer.done():
            # A claim under way is let finish: the claimer gives its batch back (cancelled, the
            # batch would stay claimed until recovery). Only a wait on an empty queue is cut.
            if self.dispatcher.blocking_claim:
                claimer.cancel()
            await asyncio.wait({claimer}, timeout=2.0)
            if not claimer.done():
                claimer.cancel()
                await asyncio.wait({claimer}, timeout=2.0)
        await self.dispatcher.drain(self.settings.shutdown_grace_seconds)
        for name, task in self.tasks.items():
            if name != "dispatcher" and not task.done():
                task.cancel()
        await asyncio.wait(set(self.tasks.values()), timeout=2.0)
        await self.sender.close()
        await self.redis.aclose()
        await self.blocking_redis.aclose()
        await self.management.stop()
