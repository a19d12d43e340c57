"""The Grafana dashboard and the alert rules against a real Prometheus scraping real daemons.

Two `cycles-events run` processes (one with the tenant label, one without, as a fleet in the
middle of a migration from the Java service may be) share a redis-server; a real `prometheus`
(Debian's package) scrapes both every second and evaluates deploy/prometheus's rules, unchanged,
every second. A small workload produces every outcome the dashboard shows; then every panel's
query, its template variables filled in from the variables' own queries, must return series
carrying the labels its legend names, and the alerts of the workload's events must fire.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from redis.asyncio import Redis

from cycles_events.models import dumps, format_instant
from tests.dashboard_support import (
    RULES,
    PrometheusServer,
    eventually,
    legend_labels,
    query_panels,
    substitute,
    variables,
)
from tests.e2e.conftest import Daemon
from tests.support import Admin, Receiver, fail_first, free_port, now_ms, status

pytestmark = pytest.mark.e2e

NAMESPACE = "cycles-test"
# http to loopback only: a subscription elsewhere is refused by the URL policy, before any
# connection is made.
SECURITY = {
    "allow_http": True,
    "blocked_cidr_ranges": ["192.0.2.0/24"],
    "allowed_url_patterns": ["http://127.0.0.1:*"],
}
NO_RETRY = {"max_retries": 0, "initial_delay_ms": 100, "backoff_multiplier": 1.0}
QUICK_RETRY = {"max_retries": 3, "initial_delay_ms": 100, "backoff_multiplier": 1.0}
# Grafana's built-in intervals, as wide as the test so that every rate has its samples (with a
# minute, a slow CI run once read the attempt failure ratio as 0 / 0, most likely because no
# attempt had risen within the last minute when the panels were queried).
BUILTINS = {"__rate_interval": "5m", "__interval": "1s", "__range": "5m"}
FIRING = {
    "CyclesWebhookAutoDisabled",
    "CyclesEventsStaleDeliveries",
    "CyclesEventsQuarantineGrowing",
    "CyclesEventsOutboxDeadLetters",
}
FAILURE_REASONS = {
    "http_4xx",
    "http_5xx",
    "transport_error",
    "ssrf_blocked",
    "event_not_found",
    "subscription_not_found",
    "subscription_inactive",
    "missing_signing_secret",
}


async def stage_task(redis: Redis, task_id: str, payload: str) -> None:
    """An outbox task, staged the way the terminal step (ours or Java's) stages one."""
    await redis.set(f"dispatcher:event-outbox:task:{task_id}", payload)
    await redis.zadd("dispatcher:event-outbox:pending", {task_id: now_ms()})


async def workload(admin: Admin, redis: Redis, receiver: Receiver) -> dict[str, list[str]]:
    """Every outcome the dashboard shows; the delivery ids by the status they must end in."""
    receiver.behaviours["/flaky"] = fail_first(503)
    receiver.behaviours["/reject"] = status(400)
    receiver.behaviours["/down"] = status(503)
    sub = admin.subscription
    ok = await sub(receiver.url("/ok"))
    flaky = await sub(receiver.url("/flaky"), retry_policy=QUICK_RETRY)
    failing = [
        await sub(receiver.url("/reject"), retry_policy=NO_RETRY),  # http_4xx
        await sub(receiver.url("/down"), retry_policy=NO_RETRY),  # http_5xx
        await sub(f"http://127.0.0.1:{free_port()}/refused", retry_policy=NO_RETRY),  # transport
        await sub("http://127.0.0.2:9/blocked"),  # ssrf_blocked: outside allowed_url_patterns
        await sub(receiver.url("/ok"), status="PAUSED"),  # subscription_inactive
        "whsub_0000000000000000",  # subscription_not_found
        # revision 2: disabled when consecutive failures EXCEED the threshold, so one more
        # terminal failure disables this one
        await sub(
            receiver.url("/down"),
            retry_policy=NO_RETRY,
            disable_after_failures=2,
            consecutive_failures=2,
        ),
    ]
    unsigned = await sub(receiver.url("/ok"), secret=None)  # missing_signing_secret: held
    ids: dict[str, list[str]] = {"SUCCESS": [], "FAILED": [], "OK_SUBSCRIPTION": [ok]}
    ids["SUCCESS"] += [await admin.deliver(ok) for _ in range(5)]
    ids["SUCCESS"] += [await admin.deliver(flaky) for _ in range(2)]  # retried, then delivered
    ids["FAILED"] += [await admin.deliver(s) for s in failing]
    missing_event = {"event_id": "evt_0000000000000000", "event_type": "budget.exhausted"}
    ids["FAILED"].append(await admin.delivery(ok, missing_event))  # event_not_found
    admin_only = await admin.event(event_type="api_key.created", category="api_key")
    ids["FAILED"].append(await admin.delivery(ok, admin_only))  # ownership boundary
    ids["HELD"] = [await admin.deliver(unsigned)]
    await redis.set("delivery:del_corrupt000000000", "{not json")  # quarantined
    await redis.lpush("dispatch:pending", "del_corrupt000000000", "del_gone00000000000")
    # outbox: one task whose save fails (its tenant's event index is not a ZSET): deferred;
    # one that is not JSON: a dead letter at once
    await redis.set("events:blocked", "not a zset")
    event = {
        "event_id": "evt_1111111111111111",
        "event_type": "system.webhook_test",
        "category": "system",
        "tenant_id": "blocked",
        "timestamp": format_instant(now_ms()),
    }
    task = {"task_id": "t-deferred", "created_at": format_instant(now_ms()), "event": event}
    await stage_task(redis, "t-deferred", dumps(task))
    await stage_task(redis, "t-garbage", "{not json")
    return ids


def multi_value(values: list[str]) -> str:
    """A multi-value variable as Grafana writes it into a Prometheus query: (a|b), escaped."""
    escaped = [re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", v) for v in values]
    return "(" + "|".join(escaped) + ")"


def variable_values(prom: PrometheusServer) -> dict[str, str]:
    """Each query variable's values from its own label_values() query, all of them selected."""
    chosen = dict(BUILTINS)
    for name, var in variables().items():
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), *(\w+)\)", var["query"]["query"])
        assert match, var["query"]
        selector, label = substitute(match.group(1), chosen), match.group(2)
        values = prom.label_values(label, selector)
        assert values, f"variable {name}: {var['query']['query']} found nothing"
        chosen[name] = multi_value(values)
    return chosen


def by_legend(series: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in series}


async def test_every_panel_returns_series_and_the_alerts_fire(
    daemon_factory: Callable[..., Daemon], admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security(SECURITY)
    tagged, untagged = daemon_factory(), daemon_factory(CYCLES_METRICS_TENANT_TAG_ENABLED="false")
    targets = [f"127.0.0.1:{d.port}" for d in (tagged, untagged)]
    prom = PrometheusServer(targets, labels={"namespace": NAMESPACE}, rules=RULES.read_text())
    tagged.start()
    prom.start()
    try:
        await tagged.wait_ready()
        # the stale delivery goes to the tagged instance alone: without the tenant label a
        # stale delivery is not counted (see test_a_stale_delivery_is_counted_without_...)
        stale = await admin.delivery(
            await admin.subscription(receiver.url("/ok")),
            await admin.event(),
            created_ms=now_ms() - 2 * 86_400_000,
        )
        await admin.wait_status([stale], {"FAILED"})
        untagged.start()
        await untagged.wait_ready()
        await eventually(prom.ready, 20, "prometheus never became ready")
        up = 'sum(up{job="cycles-events"})'
        await eventually(lambda: _value(prom, up) == 2, 20, "the daemons were never scraped")

        ids = await workload(admin, redis, receiver)
        await admin.wait_status(ids["SUCCESS"], {"SUCCESS"})
        await admin.wait_status(ids["FAILED"], {"FAILED"})
        # A counter's first sample is already its value: more successes make the rates and
        # quantiles numbers (until both instances have delivered once, some may be new series)
        rising = "sum(rate(cycles_webhook_delivery_success_total[1m])) > 0"
        ok = ids["OK_SUBSCRIPTION"][0]
        for _ in range(10):
            more = [await admin.deliver(ok) for _ in range(3)]
            # a budget event without a ledger id: a payload problem, delivered all the same
            more.append(await admin.deliver(ok, data={"remaining": 0}))
            await admin.wait_status(more, {"SUCCESS"})
            await asyncio.sleep(1.5)  # a scrape
            if await _query(prom, rising):
                break
        failed = 'max(cycles_webhook_dispatch_queue_depth{queue="failed"})'
        await eventually(lambda: _value(prom, failed) == 1, 20, "quarantine depth never sampled")
        try:
            await eventually(lambda: _firing(prom) >= FIRING, 20, "")
        except AssertionError:
            rules = prom.api("rules")
            raise AssertionError(f"firing {_firing(prom)}, not {FIRING}: {rules}") from None
        assert _firing(prom) == FIRING  # the others have a `for:` or nothing to fire on

        chosen = variable_values(prom)
        assert chosen["namespace"] == f"({NAMESPACE})"
        assert chosen["job"] == "(cycles-events)"
        results: dict[str, list[dict[str, Any]]] = {}
        for panel in query_panels():
            for target in panel["targets"]:
                expr = substitute(target["expr"], chosen)
                where = f"panel {panel['id']} {panel['title']!r} {target['refId']}: {expr}"
                # a few seconds' grace: a scrape missed on a busy machine leaves a new series
                # one sample short of a rate
                series = await eventually(partial(prom.query, expr), 10, f"no series for {where}")
                for s in series:
                    missing = legend_labels(target) - set(s["metric"])
                    assert not missing, f"{where}: no {missing} on {s['metric']}"
                results[f"{panel['title']}/{target['refId']}"] = series

        # what the workload did shows where it should
        assert _value_of(results["Ready instances/A"]) == 2
        assert _value_of(results["Deliveries / s/A"]) > 0
        assert 0 <= _value_of(results["Attempt failure ratio/A"]) <= 1
        assert 0 < _value_of(results["p99 round trip/A"]) < 10  # seconds, not NaN
        reasons = by_legend(results["Failure reasons (range)/A"], "reason")
        assert set(reasons) >= FAILURE_REASONS, reasons
        terminal = {r: v for r, v in reasons.items() if r != "missing_signing_secret"}
        assert min(terminal.values()) >= 1, reasons  # a new series' first failure counts
        outcomes = by_legend(results["HTTP attempts by outcome/B"], "outcome")
        assert {"success", "http_4xx", "http_5xx", "transport_error"} <= set(outcomes)
        assert outcomes["success"] > 0
        assert set(by_legend(results["Queue depths/A"], "queue")) == {
            "pending",
            "retry",
            "processing",
            "failed",
            "outbox",
        }
        assert _value_of(results["Auto-disabled (range)/A"]) >= 1
        assert _value_of(results["Quarantined records/A"]) == 1
        assert "invalid_task" in by_legend(results["Outbox dead letters/A"], "reason")
        deferred = results["Meta-events published and deferred/B"]
        assert "save_failed" in by_legend(deferred, "reason")
        published = by_legend(results["Meta-events published and deferred/A"], "event_type")
        assert {"webhook.disabled", "system.webhook_delivery_failed"} <= set(published)
        assert len(results["In flight/A"]) == 2  # one series per instance
    finally:
        prom_log = prom.log()
        prom.stop()
    assert "level=error" not in prom_log, prom_log


async def _query(prom: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    return await asyncio.to_thread(prom.query, expr)


def _value(prom: PrometheusServer, expr: str) -> float | None:
    series = prom.query(expr)
    return _value_of(series) if series else None


def _value_of(series: list[dict[str, Any]]) -> float:
    assert len(series) == 1, json.dumps(series)
    return float(series[0]["value"][1])


def _firing(prom: PrometheusServer) -> set[str]:
    return {s["metric"]["alertname"] for s in prom.query('ALERTS{alertstate="firing"}')}


async def test_a_stale_delivery_is_counted_without_the_tenant_label(
    daemon_factory: Callable[..., Daemon], admin: Admin, receiver: Receiver
) -> None:
    await admin.security()
    daemon = daemon_factory(CYCLES_METRICS_TENANT_TAG_ENABLED="false")
    daemon.start()
    await daemon.wait_ready()
    sub = await admin.subscription(receiver.url("/ok"))
    stale = await admin.delivery(sub, await admin.event(), created_ms=now_ms() - 2 * 86_400_000)
    await admin.wait_status([stale], {"FAILED"})
    url = f"http://127.0.0.1:{daemon.port}/actuator/prometheus"
    body = (await asyncio.to_thread(_get, url)).splitlines()
    assert "cycles_webhook_delivery_stale_total 1.0" in body
    assert not daemon.actions("unexpected_error")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())
