"""What an operator sees when something is wrong (issue 13, items 1, 2 and 4): one line naming
the setting, exit 2; Redis errors that say what failed; an outage logged once each way."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from tests.clitools import cli
from tests.e2e.conftest import Daemon, daemon_exe, wait_for
from tests.support import Admin, Receiver, RedisServer, free_port

pytestmark = pytest.mark.e2e


def run_daemon(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "MANAGEMENT_"))}
    return subprocess.run(
        daemon_exe(), env={**clean, **env}, capture_output=True, text=True, timeout=timeout
    )


def test_a_management_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_daemon({"MANAGEMENT_PORT": str(port), "MANAGEMENT_ADDRESS": "127.0.0.1"})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert (
        "invalid setting MANAGEMENT_PORT" in done.stderr and "address already in use" in done.stderr
    )


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"MANAGEMENT_ADDRESS": "999.1.1.1"}, "invalid setting MANAGEMENT_ADDRESS"),
        ({"REDIS_URL": "garbage"}, "invalid setting REDIS_URL"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(env: dict[str, str], fragment: str) -> None:
    done = run_daemon(env)
    assert done.returncode == 2 and fragment in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr


async def test_stats_with_a_garbage_redis_url_is_one_line_and_exit_2() -> None:
    run = await cli("garbage", "stats")
    assert run.code == 2 and "invalid setting REDIS_URL" in run.err
    assert run.err.strip().count("\n") == 0 and "garbage" not in run.err


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"REDIS_HOST": "no-such-host.invalid", "REDIS_PORT": "6379"}, "unknown host"),
        ({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(free_port())}, "connection refused"),
    ],
)
async def test_redis_errors_say_what_failed(
    daemon_factory: Callable[..., Daemon], env: dict[str, str], said: str
) -> None:
    daemon = daemon_factory(REDIS_URL="", **env)
    daemon.start()
    await wait_for(lambda: bool(daemon.actions("redis_unavailable")), 20, "no outage logged")
    assert daemon.actions("redis_unavailable")[0]["error"] == said
    code, body = daemon.health()
    assert code == 503 and body["components"]["redis"]["details"]["error"] == said


async def test_an_outage_is_logged_once_each_way(
    daemon_factory: Callable[..., Daemon], persistent_redis: RedisServer, receiver: Receiver
) -> None:
    client = Redis.from_url(persistent_redis.url)
    admin = Admin(client)
    await admin.security()
    sub = await admin.subscription(receiver.url())
    daemon = daemon_factory(persistent_redis)
    daemon.start()
    await daemon.wait_ready()
    persistent_redis.stop()
    await asyncio.sleep(8)  # every loop has failed several times, some steps never touch Redis
    assert len(daemon.actions("redis_unavailable")) == 1
    assert daemon.actions("redis_reconnected") == []  # nothing reported the state as good
    persistent_redis.start()
    await client.aclose()
    client = Redis.from_url(persistent_redis.url)
    delivery_id = await Admin(client).deliver(sub)
    await Admin(client).wait_status([delivery_id], {"SUCCESS"})
    await asyncio.sleep(1)
    assert len(daemon.actions("redis_unavailable")) == 1
    (back,) = daemon.actions("redis_reconnected")
    assert back["down_seconds"] >= 7
    await client.aclose()
