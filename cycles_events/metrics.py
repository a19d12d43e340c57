"""Prometheus metrics of contract section 8, on a registry of our own."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import (
    process_collector as _process,
)

UNKNOWN = "UNKNOWN"
MAX_CHILDREN = 100_000
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _tag(value: str | None) -> str:
    return value if value and value.strip() else UNKNOWN


class Metrics:
    """The service's meters; `tenant` labels exist only when the tenant tag is enabled."""

    def __init__(self, *, tenant_tag: bool, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.tenant_tag = tenant_tag
        t: tuple[str, ...] = ("tenant",) if tenant_tag else ()
        r = self.registry
        self.attempts = Counter(
            "cycles_webhook_delivery_attempts",
            "Webhook delivery attempts (HTTP sends)",
            [*t, "event_type"],
            registry=r,
        )
        self.success = Counter(
            "cycles_webhook_delivery_success",
            "Successful webhook deliveries",
            [*t, "event_type", "status_code_family"],
            registry=r,
        )
        self.failed = Counter(
            "cycles_webhook_delivery_failed",
            "Webhook deliveries that ended FAILED, by reason",
            [*t, "event_type", "reason"],
            registry=r,
        )
        self.retried = Counter(
            "cycles_webhook_delivery_retried",
            "Failed attempts scheduled for a retry",
            [*t, "event_type"],
            registry=r,
        )
        self.stale = Counter(
            "cycles_webhook_delivery_stale",
            "Deliveries failed unsent because they were older than MAX_DELIVERY_AGE_MS",
            [*t],
            registry=r,
        )
        self.auto_disabled = Counter(
            "cycles_webhook_subscription_auto_disabled",
            "Subscriptions disabled after consecutive failures",
            [*t, "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "cycles_webhook_delivery_latency_seconds",
            "HTTP round trip of webhook deliveries",
            [*t, "event_type", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.payload_invalid = Counter(
            "cycles_webhook_events_payload_invalid",
            "Events delivered despite a payload-shape problem, by rule",
            ["type", "rule"],
            registry=r,
        )
        self.dropped = Counter(
            "cycles_webhook_dispatch_dropped",
            "Queue entries dropped without a send (missing record, duplicate, not pending)",
            ["reason"],
            registry=r,
        )
        self.quarantined = Counter(
            "cycles_webhook_dispatch_quarantined",
            "Corrupt delivery records moved to dispatch:failed",
            registry=r,
        )
        self.parked = Counter(
            "cycles_webhook_dispatch_parked",
            "Deliveries put back for a moment because their subscription was at its bound",
            registry=r,
        )
        self.errors = Counter(
            "cycles_webhook_dispatch_errors",
            "Unexpected errors while handling a delivery (the delivery is retried)",
            registry=r,
        )
        self.recovered = Counter(
            "cycles_webhook_dispatch_recovered",
            "Orphaned claims returned to dispatch:pending",
            registry=r,
        )
        self.security_config_invalid = Counter(
            "cycles_webhook_security_config_invalid",
            "Reads of config:webhook-security that could not be parsed",
            registry=r,
        )
        self.redis_errors = Counter(
            "cycles_webhook_redis_errors",
            "Redis commands that failed (connection lost, timeout)",
            registry=r,
        )
        self.in_flight = Gauge(
            "cycles_webhook_dispatch_in_flight",
            "Deliveries being handled by this process",
            registry=r,
        )
        self.queue_depth = Gauge(
            "cycles_webhook_dispatch_queue_depth",
            "Length of the dispatch queues",
            ["queue"],
            registry=r,
        )
        self.oldest_pending_age = Gauge(
            "cycles_webhook_dispatch_oldest_pending_age_seconds",
            "Age of the oldest delivery waiting in dispatch:pending",
            registry=r,
        )
        self.ready = Gauge(
            "cycles_webhook_dispatcher_ready",
            "1 when the readiness check is UP",
            registry=r,
        )
        _process.ProcessCollector(registry=r)

    def _t(self, tenant: str | None) -> tuple[str, ...]:
        return (_tag(tenant),) if self.tenant_tag else ()

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        """A labelled child, remembered: labels() takes a lock and builds a key every time."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= MAX_CHILDREN:
                self._children.clear()
            child = self._children[key] = metric.labels(*values)
        return child

    def delivered(
        self, tenant: str | None, event_type: str | None, family: str, seconds: float
    ) -> None:
        """Count a send that succeeded: its attempt, its round trip and its success."""
        key = (0, (tenant or "", event_type or "", family))
        bundle = self._children.get(key)
        if bundle is None:
            t, e = self._t(tenant), _tag(event_type)
            bundle = self._children[key] = (
                self._child(self.attempts, *t, e),
                self._child(self.latency, *t, e, "success"),
                self._child(self.success, *t, e, family),
            )
        attempts, latency, success = bundle
        attempts.inc()
        latency.observe(seconds)
        success.inc()

    def attempt(self, tenant: str | None, event_type: str | None) -> None:
        """Count an HTTP send."""
        self._child(self.attempts, *self._t(tenant), _tag(event_type)).inc()

    def succeeded(self, tenant: str | None, event_type: str | None, family: str) -> None:
        """Count a successful delivery."""
        self._child(self.success, *self._t(tenant), _tag(event_type), family).inc()

    def failure(self, tenant: str | None, event_type: str | None, reason: str) -> None:
        """Count a delivery that ended FAILED."""
        self._child(self.failed, *self._t(tenant), _tag(event_type), reason).inc()

    def retry(self, tenant: str | None, event_type: str | None) -> None:
        """Count a scheduled retry."""
        self._child(self.retried, *self._t(tenant), _tag(event_type)).inc()

    def stale_delivery(self, tenant: str | None) -> None:
        """Count a stale delivery."""
        self._child(self.stale, *self._t(tenant)).inc()

    def disabled(self, tenant: str | None, reason: str) -> None:
        """Count an auto-disabled subscription."""
        self._child(self.auto_disabled, *self._t(tenant), reason).inc()

    def observe(
        self, tenant: str | None, event_type: str | None, outcome: str, seconds: float
    ) -> None:
        """Record one HTTP round trip."""
        self._child(self.latency, *self._t(tenant), _tag(event_type), outcome).observe(seconds)

    def invalid_payload(self, event_type: str | None, rule: str) -> None:
        """Count a payload-shape problem."""
        self._child(self.payload_invalid, _tag(event_type), rule).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
