"""The Helm chart's probes against a real daemon.

The Deployment is rendered by the embedded Helm engine with values adapted to this machine
(Redis = the test redis-server, free ports, loopback bind). The container's whole
environment is taken from the rendered manifests (plain values and the rendered Secret),
``cycles-events run`` is started as a subprocess with it, and every probe of the rendered
container is requested on the port its named port resolves to, within the probe's own
timeout, as the kubelet would. The ServiceMonitor's scrape path is checked the same way,
for the gauges the alert rules use. Finally SIGTERM must stop the daemon with exit code 0
within the rendered terminationGracePeriodSeconds.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.support import RedisServer, free_port

pytestmark = pytest.mark.e2e

CHART = Path(__file__).resolve().parents[2] / "helm" / "cycles-events"
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def rendered(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="e2e", namespace="cycles")
    docs: list[dict[str, Any]] = []
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def container_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment as the kubelet would build it."""
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    secret = {k: base64.b64decode(v).decode() for k, v in one(docs, "Secret")["data"].items()}
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == one(docs, "Secret")["metadata"]["name"]
            if ref["key"] in secret:
                env[item["name"]] = secret[ref["key"]]
    return env


def get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def daemon_command(entrypoint_args: list[str]) -> list[str]:
    exe = shutil.which("cycles-events", path=str(Path(sys.executable).parent))
    assert exe, "the package is not installed in this environment (pip install -e .)"
    return [exe, *entrypoint_args]


@pytest.fixture
def chart_values(redis_server: RedisServer) -> dict[str, Any]:
    return {
        "redis": {"host": "127.0.0.1", "port": redis_server.port},
        "management": {"port": free_port(), "address": "127.0.0.1"},
        "trafficPort": free_port(),
    }


@pytest.fixture
def daemon(chart_values: dict[str, Any]) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    docs = rendered(chart_values)
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}
    env.update(container_env(docs))
    log_dir = Path(tempfile.mkdtemp(prefix="cycles-probe-"))
    log_path = log_dir / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            daemon_command(container["args"]), env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield proc, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(log_dir, ignore_errors=True)


def test_rendered_probes_answer_200(
    chart_values: dict[str, Any], daemon: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, log_path = daemon
    docs = rendered(chart_values)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["management"] == chart_values["management"]["port"]

    def url(probe: dict[str, Any]) -> str:
        target = probe["httpGet"]
        port = ports[target["port"]] if isinstance(target["port"], str) else target["port"]
        return f"http://127.0.0.1:{port}{target['path']}"

    # startup: the kubelet polls every periodSeconds, at most failureThreshold times
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    deadline = time.monotonic() + budget
    status = 0
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            status, _ = get(url(startup), timeout=startup["timeoutSeconds"])
        except OSError:
            status = 0
        if status == 200:
            break
        time.sleep(0.2)
    assert status == 200, f"startup probe never passed in {budget}s: {log_path.read_text()[-3000:]}"

    for name in PROBES:
        probe = container[name]
        started = time.monotonic()
        status, body = get(url(probe), timeout=probe["timeoutSeconds"])
        assert status == 200, (name, body)
        assert json.loads(body)["status"] == "UP", (name, body)
        assert time.monotonic() - started < probe["timeoutSeconds"]

    # the other actuator paths the docs and the alerts rely on
    management = f"http://127.0.0.1:{ports['management']}"
    status, body = get(f"{management}/actuator/health", timeout=3)
    assert status == 200 and json.loads(body)["status"] == "UP"
    status, body = get(f"{management}/actuator/info", timeout=3)
    assert status == 200 and "build" in json.loads(body)

    # the ServiceMonitor's scrape path, with the gauges the alert rules use
    monitor_values = dict(chart_values, serviceMonitor={"enabled": True})
    endpoint = one(rendered(monitor_values), "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["port"] == "management"
    status, body = get(f"{management}{endpoint['path']}", timeout=3)
    assert status == 200
    exposition = body.decode()
    assert "cycles_webhook_dispatcher_ready 1.0" in exposition
    assert "cycles_webhook_dispatch_oldest_pending_age_seconds" in exposition
    assert 'cycles_webhook_dispatch_queue_depth{queue="pending"}' in exposition

    # the traffic port is declared but nothing listens on it
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", ports["traffic"]), 1):
        pass

    # SIGTERM: graceful stop, well within the rendered grace period
    grace = pod["terminationGracePeriodSeconds"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=grace) == 0, log_path.read_text()[-3000:]
