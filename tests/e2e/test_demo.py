"""`make demo`'s script, run non-interactively as a subprocess to its summary."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
    return body


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "DEMO_"))}
    env["DEMO_FAST"] = "1"
    return env


async def test_demo_runs_to_its_summary_and_stops_everything() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "cycles_events.demo", "--no-tty", "--events", "100"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 60)
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, out + err
    assert "demo summary: 100 events, 164 deliveries to 3 subscriptions" in out
    assert re.search(
        r"^delivered: 160 +\(signatures verified by the receiver: (\d+)/\1\)", out, re.M
    )
    failed = re.search(
        r"^failed: +4 +\(http_5xx (\d)(?:, subscription_inactive (\d))?\)", out, re.M
    )
    assert failed is not None and int(failed.group(1)) >= 3
    retried = re.search(
        r"^retried: +[1-9]\d* deliveries needed more than one attempt; (\d+) retries scheduled "
        r"\(= cycles_webhook_delivery_retried_total (\d+)\)",
        out,
        re.M,
    )
    assert retried is not None and retried.group(1) == retried.group(2)
    counted = re.search(r"^  cycles_webhook_delivery_retried_total (\d+)$", out, re.M)
    assert counted is not None and counted.group(1) == retried.group(1)
    assert re.search(r"^disabled: +1 +broken-receiver-503$", out, re.M)
    latency = re.search(r"^latency push->receipt: p50 (\d+) ms, p99 (\d+) ms over 160", out, re.M)
    assert latency is not None and int(latency.group(1)) <= int(latency.group(2))
    assert "webhook.disabled 1" in out
    prom = re.search(
        r"^metrics scraped from http://127\.0\.0\.1:(\d+)/actuator/prometheus:", out, re.M
    )
    assert prom is not None
    assert (
        f"daemon ready (metrics: http://127.0.0.1:{prom.group(1)}/actuator/prometheus while" in err
    )
    hint = re.search(
        r"^the demo now stops everything, that URL included; to keep it all up and look: "
        r"make demo ARGS=--hold  \(or: (\S+) -m cycles_events\.demo --hold\)$",
        out,
        re.M,
    )
    assert hint is not None and hint.group(1) != "python"
    outside_venv = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    works = await asyncio.to_thread(
        subprocess.run,
        [hint.group(1), "-m", "cycles_events.demo", "--help"],
        cwd=ROOT,
        env=outside_venv,
        capture_output=True,
    )
    assert works.returncode == 0  # the printed command needs no activated venv
    assert re.search(r"^  cycles_webhook_delivery_success_total 160$", out, re.M)
    redis_port = re.search(r"redis-server on redis://127\.0\.0\.1:(\d+)/0", err)
    receiver_port = re.search(r"receiver on 127\.0\.0\.1:(\d+)", err)
    assert redis_port is not None and receiver_port is not None
    assert "stopped: cycles-events, redis-server" in err
    for port in (prom.group(1), redis_port.group(1), receiver_port.group(1)):
        assert not _listening(int(port)), f"port {port} still open after the demo"
    assert "\r" not in err


async def test_demo_stops_everything_on_ctrl_c() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "cycles_events.demo", "--no-tty", "--events", "5000", "--rate", "200"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    assert proc.stderr is not None
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert line, "".join(lines)
        lines.append(line)
        if line.startswith("daemon ready"):
            break
    await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rest = await asyncio.wait_for(proc.stderr.read(), 30)
    await asyncio.wait_for(proc.wait(), 30)
    err = "".join(lines) + rest.decode()
    assert proc.returncode == 130, err
    assert "interrupted: stopping the demo" in err
    assert "stopped: cycles-events, redis-server" in err
    ports = re.findall(r"(?:redis://127\.0\.0\.1:|127\.0\.0\.1:|management port )(\d+)", err)
    assert len(ports) >= 3
    for port in ports:
        assert not _listening(int(port)), f"port {port} still open after Ctrl-C"


async def test_demo_hold_keeps_the_metrics_url_and_prints_commands_that_work() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "cycles_events.demo", "--no-tty", "--events", "20", "--hold"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None
    out = ""
    while "\ntry: " not in out:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line, out
        out += line
    prom = re.search(r"^where to look, until Ctrl-C: (http://127\.0\.0\.1:(\d+)\S+)", out, re.M)
    assert prom is not None
    scraped = await asyncio.to_thread(_get, prom.group(1))  # still up: useful
    assert b"cycles_webhook_delivery_success_total" in scraped
    tried = re.search(r"^try: REDIS_URL=(\S+) (\S+) stats$", out, re.M)
    assert tried is not None and tried.group(2) != "cycles-events"
    stats = await asyncio.to_thread(
        subprocess.run,
        [tried.group(2), "stats", "--json"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": tried.group(1)},
        capture_output=True,
        text=True,
    )
    assert stats.returncode == 0, stats.stderr
    assert "pending" in json.loads(stats.stdout)
    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode in (0, 130)
    assert not _listening(int(prom.group(2)))


def test_make_demo_passes_args_to_the_demo() -> None:
    dry = subprocess.run(
        ["make", "-n", "demo", "ARGS=--hold --events 50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0, dry.stderr
    assert ".venv/bin/python -m cycles_events.demo --hold --events 50" in dry.stdout
