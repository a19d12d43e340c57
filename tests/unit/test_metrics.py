"""The lock-free meters of the delivery path are exposed exactly as prometheus_client's."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from cycles_events.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram


def _without_created(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if "_created" not in line]


def test_loop_meters_expose_what_prometheus_client_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = LoopCounter("t_attempts", "Attempts", ["tenant", "event_type"], ours)
    histogram = LoopHistogram("t_latency_seconds", "Latency", ["outcome"], LATENCY_BUCKETS, ours)
    ref_counter = Counter("t_attempts", "Attempts", ["tenant", "event_type"], registry=theirs)
    ref_histogram = Histogram(
        "t_latency_seconds", "Latency", ["outcome"], buckets=LATENCY_BUCKETS, registry=theirs
    )
    for tenant, event_type, outcome, seconds in [
        ("acme", "budget.exhausted", "success", 0.003),
        ("acme", "budget.exhausted", "success", 0.005),  # on a bucket's bound
        ("acme", "tenant.created", "http_5xx", 0.7),
        ("UNKNOWN", "budget.exhausted", "success", 61.0),  # past the last bound
        ("acme", "budget.exhausted", "transport_error", 0.0),
    ]:
        counter.cell((tenant, event_type))[0] += 1
        histogram.observe(histogram.cell((outcome,)), seconds)
        ref_counter.labels(tenant, event_type).inc()
        ref_histogram.labels(outcome).observe(seconds)
    assert _without_created(ours) == _without_created(theirs)
    created = [line for line in generate_latest(ours).decode().splitlines() if "_created{" in line]
    assert created == []  # no `_created` series: they double the series for nothing
