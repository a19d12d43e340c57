"""The Grafana dashboard's panels and queries, and a throwaway real Prometheus server."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "cycles-events.json"
CHART_DASHBOARD = ROOT / "helm" / "cycles-events" / "files" / "cycles-events.json"
RULES = ROOT / "deploy" / "prometheus" / "cycles-events.rules.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def exposed_metrics() -> set[str]:
    """Every sample name the daemon's registry can expose (a counter's `_total`, a
    histogram's `_bucket`, `_count` and `_sum`)."""
    from prometheus_client import CollectorRegistry

    from cycles_events.metrics import Metrics

    names: set[str] = set()
    for family in Metrics(tenant_tag=True, registry=CollectorRegistry()).registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_count", "_sum")}
        else:
            names.add(family.name)
    return names


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included (rows themselves too)."""
    for panel in (doc or dashboard())["panels"]:
        yield panel
        yield from panel.get("panels", [])


def query_panels(doc: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The panels that query something (not rows)."""
    return [p for p in panels(doc) if p["type"] != "row"]


def legend_labels(target: dict[str, Any]) -> set[str]:
    """The labels a target's legend shows ({{reason}} and the like)."""
    return set(LEGEND_LABEL.findall(target.get("legendFormat") or ""))


def variables(doc: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in (doc or dashboard())["templating"]["list"]}


def substitute(expr: str, values: dict[str, str]) -> str:
    """An expression with its template variables replaced, longest name first, as Grafana does
    for `$name` and `${name}`."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


class PrometheusServer:
    """A real `prometheus` (Debian's package) on a free port, in a temporary directory."""

    def __init__(self, targets: list[str], *, labels: dict[str, str], rules: str | None) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="cycles-prometheus-"))
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "scrape_configs": [
                {
                    "job_name": "cycles-events",
                    "metrics_path": "/actuator/prometheus",
                    "static_configs": [{"targets": targets, "labels": labels}],
                }
            ],
        }
        if rules is not None:
            (self.dir / "rules.yml").write_text(rules)
            config["rule_files"] = [str(self.dir / "rules.yml")]
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("prometheus")
        if exe is None:
            raise RuntimeError("prometheus is missing: Debian's prometheus package brings it")
        log = open(self.dir / "prometheus.log", "wb")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{path} {params}: {err.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's series ([] when there are none); a bad query fails the test."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = self.api(f"label/{label}/values", **{"match[]": match})
        return values

    def log(self) -> str:
        path = self.dir / "prometheus.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
        shutil.rmtree(self.dir, ignore_errors=True)


async def eventually(check: Callable[[], Any], timeout: float, message: str) -> Any:
    """Poll a blocking check (run in a thread: the test's loop serves the receiver) until it
    returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(0.2)
