"""Prometheus metrics of contract section 8, on a registry of our own."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import (
    process_collector as _process,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

UNKNOWN = "UNKNOWN"
_go_float: Callable[[float], str] = floatToGoString  # how prometheus_client writes `le`
MAX_CHILDREN = 100_000
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _tag(value: str | None) -> str:
    return value if value and value.strip() else UNKNOWN


class _LoopFamily:
    """A labelled family kept as plain numbers, for the delivery path.

    The event loop is the only writer, so it needs none of the locks prometheus_client takes on
    every update; subclasses expose it exactly as prometheus_client would. A cell holds `width`
    numbers.
    """

    width = 1

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.cells: dict[tuple[str, ...], list[float]] = {}
        registry.register(self)

    def cell(self, labels: tuple[str, ...]) -> list[float]:
        """The cell of a label set."""
        cell = self.cells.get(labels)
        if cell is None:
            cell = self.cells[labels] = [0.0] * self.width
        return cell

    def collect(self) -> Iterator[Metric]:
        """The family's samples (each subclass writes its own kind)."""
        raise NotImplementedError

    def _labelled(self) -> Iterator[tuple[dict[str, str], list[float]]]:
        for labels, cell in list(self.cells.items()):
            yield dict(zip(self.labelnames, labels, strict=True)), cell


class LoopCounter(_LoopFamily):
    """A counter (add to index 0 of a cell), exposed as a prometheus_client Counter."""

    def collect(self) -> Iterator[Metric]:
        """The family as prometheus_client writes a Counter."""
        family = Metric(self.name, self.documentation, "counter")
        for named, (value,) in self._labelled():
            family.add_sample(self.name + "_total", named, value)
        yield family


class LoopHistogram(_LoopFamily):
    """A histogram (cells: count per bucket, not cumulative, then the sum), exposed as a
    prometheus_client Histogram."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.bounds = list(buckets)
        self._le = [_go_float(b) for b in self.bounds] + ["+Inf"]
        self.width = len(self._le) + 1
        super().__init__(name, documentation, labelnames, registry)

    def observe(self, cell: list[float], value: float) -> None:
        """Count one observation in a cell."""
        cell[bisect.bisect_left(self.bounds, value)] += 1
        cell[-1] += value

    def collect(self) -> Iterator[Metric]:
        """The family as prometheus_client writes a Histogram."""
        family = Metric(self.name, self.documentation, "histogram")
        n = len(self._le)
        for named, cell in self._labelled():
            total = 0.0
            for le, count in zip(self._le, cell[:n], strict=True):
                total += count
                family.add_sample(self.name + "_bucket", {**named, "le": le}, total)
            family.add_sample(self.name + "_count", named, total)
            family.add_sample(self.name + "_sum", named, cell[n])
        yield family


class Metrics:
    """The service's meters; `tenant` labels exist only when the tenant tag is enabled."""

    def __init__(self, *, tenant_tag: bool, registry: CollectorRegistry | None = None) -> None:
        # A `_created` series for every counter doubles the series for nothing a dashboard uses.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.tenant_tag = tenant_tag
        t: tuple[str, ...] = ("tenant",) if tenant_tag else ()
        r = self.registry
        self.attempts = LoopCounter(
            "cycles_webhook_delivery_attempts",
            "Webhook delivery attempts (HTTP sends)",
            [*t, "event_type"],
            registry=r,
        )
        self.success = LoopCounter(
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
        self.latency = LoopHistogram(
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
        self.boundary_skipped_total = Counter(
            "cycles_webhook_delivery_boundary_skipped",
            "Deliveries failed unsent by the webhook ownership boundary",
            [*t, "event_type", "category"],
            registry=r,
        )
        self.dead_lettered_total = Counter(
            "cycles_webhook_delivery_dead_lettered",
            "Delivery records moved to dispatch:failed, by reason",
            ["reason"],
            registry=r,
        )
        self.security_config_indeterminate = Counter(
            "cycles_webhook_security_config_indeterminate",
            "Deliveries held because config:webhook-security could not be read or judged",
            registry=r,
        )
        self.event_published = Counter(
            "cycles_webhook_dispatcher_event_published",
            "Meta-events saved from the outbox",
            ["event_type"],
            registry=r,
        )
        self.event_deferred = Counter(
            "cycles_webhook_dispatcher_event_deferred",
            "Outbox publishes that failed and were put off",
            ["event_type", "reason"],
            registry=r,
        )
        self.event_dead_lettered = Counter(
            "cycles_webhook_dispatcher_event_dead_lettered",
            "Outbox tasks moved to dispatcher:event-outbox:failed",
            ["event_type", "reason"],
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
        self.limited = Gauge(
            "cycles_webhook_dispatch_concurrency_limited_subscriptions",
            "Adaptive subscriptions held below DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION",
            registry=r,
        )
        self.limits = Gauge(
            "cycles_webhook_dispatch_concurrency_limit_subscriptions",
            "Adaptive subscriptions whose current in-flight limit is at most `le`",
            ["le"],
            registry=r,
        )
        self.in_flight = Gauge(
            "cycles_webhook_dispatch_in_flight",
            "Webhook requests under way in this process (at most DISPATCH_CONCURRENCY)",
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
        if not values:  # a family without labels (the tenant tag is off) is its own child
            return metric
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= MAX_CHILDREN:
                self._children.clear()
            child = self._children[key] = metric.labels(*values)
        return child

    def sent(
        self, tenant: str | None, event_type: str | None, outcome: str, seconds: float
    ) -> None:
        """Count an HTTP attempt and its round trip (`outcome`: success or the failure reason)."""
        key = (0, (tenant or "", event_type or "", outcome))
        bundle = self._children.get(key)
        if bundle is None:
            t, e = self._t(tenant), _tag(event_type)
            bundle = self._children[key] = (
                self.attempts.cell((*t, e)),
                self.latency.cell((*t, e, outcome)),
            )
        attempts, latency = bundle
        attempts[0] += 1
        self.latency.observe(latency, seconds)

    def succeeded(self, tenant: str | None, event_type: str | None, family: str) -> None:
        """Count a delivery written SUCCESS."""
        key = (1, (tenant or "", event_type or "", family))
        cell = self._children.get(key)
        if cell is None:
            labels = (*self._t(tenant), _tag(event_type), family)
            cell = self._children[key] = self.success.cell(labels)
        cell[0] += 1

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

    def boundary_skipped(
        self, tenant: str | None, event_type: str | None, category: str | None
    ) -> None:
        """Count a delivery stopped by the ownership boundary."""
        labels = (*self._t(tenant), _tag(event_type), _tag(category))
        self._child(self.boundary_skipped_total, *labels).inc()

    def dead_lettered(self, reason: str) -> None:
        """Count a delivery record quarantined."""
        self._child(self.dead_lettered_total, reason).inc()

    def invalid_payload(self, event_type: str | None, rule: str) -> None:
        """Count a payload-shape problem."""
        self._child(self.payload_invalid, _tag(event_type), rule).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
