"""docker-compose.yml, checked without a Docker engine.

The structure is checked against what the deployment needs, Redis is started with the
compose file's own command-line flags (a real redis-server) to show they produce the
production configuration, and the service's environment (with compose's ``${VAR:-x}``
defaults applied) is loaded by the daemon's own settings class.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR} with an empty shell environment."""
    return re.sub(r"\$\{[A-Z_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"redis", "cycles-events"}
    assert compose["services"]["redis"]["image"].startswith("redis:7")
    assert "redis-data" in compose["volumes"]


def test_redis_healthcheck_and_persistence_volume(compose: dict[str, Any]) -> None:
    svc = compose["services"]["redis"]
    assert svc["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "redis-data:/data" in svc["volumes"]
    assert "ports" not in svc


@pytest.fixture(scope="module")
def compose_redis(
    compose: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[redis.Redis]:
    """redis-server started with the compose file's command (plus a local port and dir)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is missing: `make setup` (scripts/ensure-tools.sh) installs it")
    command = compose["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    port = free_port()
    data_dir = tmp_path_factory.mktemp("compose-redis")
    proc = subprocess.Popen(
        [exe, *command[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=2, decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_flags_give_the_production_configuration(compose_redis: redis.Redis) -> None:
    config = compose_redis.config_get("*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["save"] == "900 1 300 10"
    assert config["maxmemory-policy"] == "noeviction"


def test_cycles_events_service(compose: dict[str, Any]) -> None:
    svc = compose["services"]["cycles-events"]
    assert svc["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert (ROOT / svc["build"]["dockerfile"]).is_file()
    assert "ports" not in svc, "nothing is published on the host"
    assert svc["expose"] == ["9980"]
    assert svc["healthcheck"]["test"] == ["CMD", "cycles-events", "healthcheck"]
    assert seconds(svc["healthcheck"]["start_period"]) == 30
    assert svc["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert svc["stop_signal"] == "SIGTERM"
    # more than SHUTDOWN_GRACE_SECONDS (25) + the blocking pop timeout (5)
    assert seconds(svc["stop_grace_period"]) > 30
    assert svc["read_only"] is True and svc["tmpfs"] == ["/tmp"]
    assert svc["cap_drop"] == ["ALL"]


def test_environment_is_read_by_the_daemon(compose: dict[str, Any]) -> None:
    from cycles_events.config import Settings

    environment = {
        k: interpolate(str(v))
        for k, v in compose["services"]["cycles-events"]["environment"].items()
    }
    assert environment["REDIS_HOST"] == "redis"
    known = {
        choice
        for field in Settings.model_fields.values()
        for choice in getattr(field.validation_alias, "choices", [])
    }
    assert set(environment) <= known, set(environment) - known
    settings = Settings(**environment)
    assert settings.redis_host == "redis"
    assert settings.redis_port == 6379
    assert settings.management_port == 9980
    assert settings.shutdown_grace_seconds == 25
