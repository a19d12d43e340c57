"""The Prometheus alert rules in deploy/prometheus, checked with promtool.

promtool comes from Debian's ``prometheus`` package (scripts/ensure-tools.sh installs it).
Besides ``promtool check rules`` and ``promtool test rules``, the rules are mutated in a
few ways that matter (threshold, divide-by-zero guard, new-series arm, ``for``) to show
that the unit tests catch such changes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "cycles-events.rules.yml"
RULES_TEST = RULES_DIR / "cycles-events.rules.test.yml"
CHART_COPY = ROOT / "helm" / "cycles-events" / "files" / "cycles-events.rules.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

# Metric names the daemon exposes (docs/operations.md, contract section 8).
KNOWN_METRICS = {
    "cycles_webhook_delivery_attempts_total",
    "cycles_webhook_delivery_success_total",
    "cycles_webhook_delivery_failed_total",
    "cycles_webhook_delivery_retried_total",
    "cycles_webhook_delivery_stale_total",
    "cycles_webhook_subscription_auto_disabled_total",
    "cycles_webhook_delivery_latency_seconds",
    "cycles_webhook_events_payload_invalid_total",
    "cycles_webhook_dispatch_queue_depth",
    "cycles_webhook_dispatch_oldest_pending_age_seconds",
    "cycles_webhook_dispatch_in_flight",
    "cycles_webhook_dispatcher_ready",
    "cycles_webhook_delivery_dead_lettered_total",
    "cycles_webhook_dispatcher_event_dead_lettered_total",
    "cycles_webhook_redis_errors_total",
    "cycles_webhook_security_config_indeterminate_total",
    "cycles_webhook_security_config_invalid_total",
}
REQUIRED_ALERTS = {
    "CyclesEventsDeliveryFailureRateHigh",
    "CyclesWebhookAutoDisabled",
    "CyclesEventsStaleDeliveries",
    "CyclesEventsDispatchBacklog",
    "CyclesEventsDispatcherNotReady",
    "CyclesEventsTargetDown",
    "CyclesEventsQuarantineGrowing",
    "CyclesEventsOutboxDeadLetters",
    "CyclesEventsDispatchStuck",
    "CyclesEventsRedisErrors",
    "CyclesEventsSecurityConfigIndeterminate",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is missing: `make setup` (scripts/ensure-tools.sh) installs Debian's "
            "prometheus package, which provides it"
        )
    return found


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def operation_anchors() -> set[str]:
    anchors = set()
    for line in OPERATIONS.read_text().splitlines():
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            anchors.add(github_anchor(match.group(1)))
    return anchors


def test_promtool_check_rules() -> None:
    for path in (RULES, CHART_COPY):
        result = run_promtool("check", "rules", str(path), cwd=RULES_DIR)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", RULES_TEST.name, cwd=RULES_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_chart_copy_is_identical() -> None:
    assert CHART_COPY.read_bytes() == RULES.read_bytes(), (
        "helm/cycles-events/files/cycles-events.rules.yml must be a copy of "
        "deploy/prometheus/cycles-events.rules.yml"
    )


def test_required_alerts_exist() -> None:
    assert {a["alert"] for a in alerts()} >= REQUIRED_ALERTS


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    suite = yaml.safe_load(RULES_TEST.read_text())
    assert suite["rule_files"] == [RULES.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested not firing"


def test_alert_metadata_and_runbooks() -> None:
    anchors = operation_anchors()
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        annotations = alert["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        url = annotations["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "docs/operations.md", url
        assert anchor in anchors, f"{name}: no heading for #{anchor} in docs/operations.md"


def test_alerts_use_only_exposed_metrics() -> None:
    for alert in alerts():
        used = set(re.findall(r"\bcycles_[a-z_]+\b", alert["expr"]))
        if alert["alert"] != "CyclesEventsTargetDown":  # that one is about `up`
            assert used, alert["alert"]
        assert used <= KNOWN_METRICS, used - KNOWN_METRICS


def test_failure_rate_has_a_divide_by_zero_guard() -> None:
    (rule,) = [a for a in alerts() if a["alert"] == "CyclesEventsDeliveryFailureRateHigh"]
    expr = " ".join(rule["expr"].split())
    assert "[10m]" in expr
    guard = "and sum by (namespace, job) (rate(cycles_webhook_delivery_attempts_total[10m])) > 0"
    assert expr.endswith(guard)


def test_target_down_covers_absent_and_down() -> None:
    (rule,) = [a for a in alerts() if a["alert"] == "CyclesEventsTargetDown"]
    expr = " ".join(rule["expr"].split())
    assert 'absent(up{job=~".*cycles-events.*"})' in expr
    assert 'up{job=~".*cycles-events.*"} == 0' in expr


MUTATIONS = [
    pytest.param("> 0.1\n", "> 0.5\n", id="failure-threshold"),
    pytest.param(
        "          and\n          sum by (namespace, job) "
        "(rate(cycles_webhook_delivery_attempts_total[10m])) > 0\n",
        "\n",
        id="no-divide-by-zero-guard",
    ),
    pytest.param(
        "            cycles_webhook_subscription_auto_disabled_total\n"
        "            unless cycles_webhook_subscription_auto_disabled_total offset 15m\n",
        "            cycles_webhook_subscription_auto_disabled_total - 1\n",
        id="auto-disabled-misses-new-series",
    ),
    pytest.param(
        "sum by (namespace, job) (increase(cycles_webhook_delivery_stale_total[15m])) > 0",
        "sum by (namespace, job) (increase(cycles_webhook_delivery_stale_total[15m])) > 5",
        id="stale-threshold",
    ),
    pytest.param(
        "(cycles_webhook_dispatch_oldest_pending_age_seconds) > 300",
        "(cycles_webhook_dispatch_oldest_pending_age_seconds) > 400",
        id="backlog-threshold",
    ),
    pytest.param(
        "          cycles_webhook_dispatcher_ready == 0\n        for: 5m\n",
        "          cycles_webhook_dispatcher_ready == 0\n        for: 1m\n",
        id="readiness-for",
    ),
    pytest.param('absent(up{job=~".*cycles-events.*"})\n          or\n', "", id="no-absent"),
    pytest.param("severity: critical", "severity: page", id="severity-label"),
    pytest.param(
        "          or\n          max by (namespace, job) (\n"
        '            delta(cycles_webhook_dispatch_queue_depth{queue="failed"}[15m])\n'
        "          ) > 0\n",
        "",
        id="quarantine-misses-a-growing-list",
    ),
    pytest.param(
        "            cycles_webhook_delivery_dead_lettered_total\n"
        "            unless cycles_webhook_delivery_dead_lettered_total offset 15m\n",
        "            cycles_webhook_delivery_dead_lettered_total - 1\n",
        id="quarantine-misses-new-series",
    ),
    pytest.param(
        "            unless cycles_webhook_dispatcher_event_dead_lettered_total offset 15m\n",
        "            unless cycles_webhook_dispatcher_event_dead_lettered_total offset 1m\n",
        id="outbox-dead-letters-short-window",
    ),
    pytest.param("[5m])\n          ) > 0.9\n", "[5m])\n          ) > 0.4\n", id="stuck-slope"),
    pytest.param(
        "          ) > 0.9\n        for: 5m\n",
        "          ) > 0.9\n        for: 10m\n",
        id="stuck-for",
    ),
    pytest.param(
        "(rate(cycles_webhook_redis_errors_total[5m])) > 0\n        for: 10m\n",
        "(rate(cycles_webhook_redis_errors_total[5m])) > 0\n        for: 2m\n",
        id="redis-errors-for",
    ),
    pytest.param(
        "          or\n          sum by (namespace, job) (\n"
        "            increase(cycles_webhook_security_config_invalid_total[5m])\n"
        "          ) > 0\n",
        "",
        id="security-config-without-unusable-reads",
    ),
]


def run_mutant(directory: Path, old: str, new: str) -> tuple[int, int]:
    """(promtool check rules, promtool test rules) exit codes of the mutated rule file."""
    text = RULES.read_text()
    assert old in text, "the mutation no longer applies: update it with the rules"
    directory.mkdir()
    (directory / RULES.name).write_text(text.replace(old, new, 1))
    shutil.copy(RULES_TEST, directory / RULES_TEST.name)
    checked = run_promtool("check", "rules", RULES.name, cwd=directory)
    tested = run_promtool("test", "rules", RULES_TEST.name, cwd=directory)
    return checked.returncode, tested.returncode


@pytest.fixture(scope="module")
def mutant_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, int]]:
    """All mutants run concurrently (promtool test takes most of a second each)."""
    base = tmp_path_factory.mktemp("mutants")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            p.id: pool.submit(run_mutant, base / str(p.id), *p.values)
            for p in MUTATIONS
            if p.id is not None
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("mutant", [p.id for p in MUTATIONS])
def test_unit_tests_catch_a_broken_rule(
    mutant_results: dict[str, tuple[int, int]], mutant: str
) -> None:
    checked, tested = mutant_results[mutant]
    assert checked == 0, "the mutant must still be a valid rule file"
    assert tested != 0, f"promtool test rules did not notice the mutation {mutant}"
