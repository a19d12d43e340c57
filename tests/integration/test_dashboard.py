"""The Grafana dashboard deploy/grafana/cycles-events.json, checked as a document.

Its queries are run against a real Prometheus scraping real daemons in
tests/e2e/test_dashboard.py; here: the datasource variable and every panel's use of it,
unique ids, units, the layout, the selectors, and that every metric it names is one the
daemon exposes.
"""

from __future__ import annotations

import re
from typing import Any

from tests.dashboard_support import (
    CHART_DASHBOARD,
    DASHBOARD,
    DATASOURCE,
    dashboard,
    exposed_metrics,
    legend_labels,
    panels,
    query_panels,
    variables,
)

SELECTOR = 'namespace=~"$namespace", job=~"$job", instance=~"$instance"'
UNITS = {"reqps", "ops", "s", "short", "percentunit", "bytes"}
BUILTIN_VARIABLES = {"__rate_interval", "__range", "__interval"}
METRIC = re.compile(r"\b((?:cycles|process)_[a-z_]+)\b")
# What the dashboard must show (issue 13, item 14).
REQUIRED_METRICS = {
    "cycles_webhook_delivery_attempts_total",
    "cycles_webhook_delivery_success_total",
    "cycles_webhook_delivery_failed_total",
    "cycles_webhook_delivery_retried_total",
    "cycles_webhook_delivery_stale_total",
    "cycles_webhook_delivery_boundary_skipped_total",
    "cycles_webhook_delivery_latency_seconds_bucket",
    "cycles_webhook_dispatch_queue_depth",
    "cycles_webhook_dispatch_oldest_pending_age_seconds",
    "cycles_webhook_dispatch_in_flight",
    "cycles_webhook_subscription_auto_disabled_total",
    "cycles_webhook_dispatch_quarantined_total",
    "cycles_webhook_delivery_dead_lettered_total",
    "cycles_webhook_dispatcher_event_published_total",
    "cycles_webhook_dispatcher_event_deferred_total",
    "cycles_webhook_dispatcher_event_dead_lettered_total",
    "cycles_webhook_redis_errors_total",
    "cycles_webhook_dispatcher_ready",
}


def exprs() -> list[str]:
    return [t["expr"] for p in query_panels() for t in p["targets"]]


def test_the_chart_ships_the_same_dashboard() -> None:
    assert CHART_DASHBOARD.read_bytes() == DASHBOARD.read_bytes(), (
        "helm/cycles-events/files/cycles-events.json must be a copy of "
        "deploy/grafana/cycles-events.json"
    )


def test_dashboard_identity() -> None:
    doc = dashboard()
    assert doc["uid"] == "cycles-events"
    assert doc["title"].strip()
    assert isinstance(doc["schemaVersion"], int) and doc["schemaVersion"] >= 36
    assert "id" not in doc or doc["id"] is None  # an id would clash on import


def test_datasource_variable_and_every_query_uses_it() -> None:
    found = variables()
    ds = found["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    for name, var in found.items():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, name
            assert var["query"]["query"].startswith("label_values("), name
    for panel in query_panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, (panel["title"], target["refId"])


def test_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in panels()]
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_every_panel_has_a_unit_a_title_and_targets() -> None:
    for panel in query_panels():
        title = panel["title"]
        assert title.strip() and panel.get("description", "").strip(), panel["id"]
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, title
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["expr"].strip(), (title, target["refId"])


def test_panels_do_not_overlap_and_fit_the_grid() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels():
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_queries_never_need_the_tenant_label() -> None:
    """CYCLES_METRICS_TENANT_TAG_ENABLED may be false (the Java service's default)."""
    for expr in exprs():
        assert "tenant" not in expr, expr


def test_every_selector_carries_the_template_variables() -> None:
    for expr in exprs():
        for match in METRIC.finditer(expr):
            after = expr[match.end() :]
            assert after.startswith("{" + SELECTOR), f"{match.group(1)} in {expr}"


def test_only_defined_variables_are_used() -> None:
    defined = set(variables()) | BUILTIN_VARIABLES
    texts = exprs() + [v["query"]["query"] for v in variables().values() if v["type"] == "query"]
    for text in texts:
        used = set(re.findall(r"\$\{?(\w+)", text))
        assert used <= defined, used - defined


def test_every_metric_is_exposed_by_the_daemon() -> None:
    exposed = exposed_metrics()
    used = {m for expr in exprs() for m in METRIC.findall(expr)}
    assert used <= exposed, used - exposed
    assert used >= REQUIRED_METRICS, REQUIRED_METRICS - used
    assert "cycles_webhook_dispatch_queue_depth" in exposed


def test_legends_name_only_grouped_labels() -> None:
    """A {{label}} in a legend must survive the query's aggregation."""
    for panel in query_panels():
        for target in panel["targets"]:
            grouped = {
                label.strip()
                for clause in re.findall(r"\bby \(([^)]*)\)", target["expr"])
                for label in clause.split(",")
            }
            missing = legend_labels(target) - grouped
            assert not missing, (panel["title"], target["refId"], missing)


def test_queue_panels_cover_every_queue() -> None:
    text = " ".join(exprs())
    assert 'queue="failed"' in text and 'queue="outbox"' in text
    assert "max by (queue) (cycles_webhook_dispatch_queue_depth" in text


def _panel(title: str) -> dict[str, Any]:
    (found,) = [p for p in query_panels() if p["title"] == title]
    return found


def test_latency_quantiles_use_the_histogram() -> None:
    for target in _panel("Receiver round trip")["targets"]:
        assert target["expr"].startswith("histogram_quantile(")
        assert (
            "sum by (le) (rate(cycles_webhook_delivery_latency_seconds_bucket" in (target["expr"])
        )
    assert _panel("Receiver round trip")["fieldConfig"]["defaults"]["unit"] == "s"
