"""The operator CLI as on-call uses it (issue 13, items 3, 6, 7, 13, 16): a subprocess against
a real redis-server, and a real daemon for the health check."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from tests.clitools import cli, cli_env, cli_tty, seed_deliveries, snapshot
from tests.e2e.conftest import Daemon, wait_for
from tests.support import Admin, RedisServer, now_ms

pytestmark = pytest.mark.e2e

LONG_ERROR = "Connection refused: hooks.example.com:443 " + "after a long transport story " * 4


async def test_redis_dying_mid_replay_is_one_line_and_exit_1() -> None:
    server = RedisServer()
    server.start()
    try:
        client = Redis.from_url(server.url)
        sub = await Admin(client).subscription("http://127.0.0.1:1/hook")
        await seed_deliveries(client, sub, 3000)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "cycles_events.cli", "replay", "--subscription", sub, "--rate", "500/s"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=cli_env(server.url),
        )
        for _ in range(300):  # until the replay is well under way
            if await client.llen("dispatch:pending") >= 200:
                break
            await asyncio.sleep(0.02)
        await client.aclose()
        server.stop()
        out_b, err_b = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        server.cleanup()
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 1, err
    assert "Unclosed" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("cycles-events: Redis failed after ")
    assert "possibly written: del_" in err
    pairs = [line for line in out.splitlines() if " -> " in line]
    assert out.splitlines()[-1] == f"replayed {len(pairs)} of 3000 deliveries"
    assert 200 <= len(pairs) < 3000
    assert f"Redis failed after {len(pairs)} of 3000 replays" in err


async def test_deliveries_list_says_n_of_total_filters_by_reason_and_cuts_errors(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook")
    base = now_ms() - 10_000
    await seed_deliveries(redis, sub, 393, created_ms=base)
    refused = await seed_deliveries(redis, sub, 20, error=LONG_ERROR, created_ms=base + 1000)
    await seed_deliveries(redis, sub, 7, status="SUCCESS", error=None, created_ms=base + 2000)
    url = redis_server.url
    base = ("deliveries", "list", "--subscription", sub)
    text, js, by_reason, by_reason_js, everything = await asyncio.gather(
        cli(url, *base),
        cli(url, *base, "--json"),
        cli(url, *base, "--reason", "transport_error", "--limit", "5"),
        cli(url, *base, "--reason", "transport_error", "--status", "FAILED", "--json"),
        cli(url, *base, "--limit", "1000"),
    )
    for run in (text, js, by_reason, by_reason_js, everything):
        assert run.code == 0, run.err
    lines = text.out.splitlines()
    assert lines[-1] == (
        "showing 50 of 420 matching deliveries, newest first (--limit 420 shows them all)"
    )
    assert len(lines) == 52  # header, 50 rows, the count
    data = json.loads(js.out)
    assert (data["count"], data["total"], len(data["deliveries"])) == (50, 420, 50)
    reasons = Counter(d["failure_reason"] for d in data["deliveries"])
    assert reasons == {None: 7, "transport_error": 20, "http_5xx": 23}  # the newest 50
    assert everything.out.splitlines()[-1] == "showing 420 of 420 matching deliveries, newest first"

    rows = by_reason.out.splitlines()
    assert rows[-1].startswith("showing 5 of 20 matching deliveries")
    for row in rows[1:-1]:
        assert "transport_error" in row and row.endswith("\u2026")
        error = row[row.index("Connection refused") :]
        assert len(error) == 60 and LONG_ERROR.startswith(error[:-1])
    filtered = json.loads(by_reason_js.out)
    assert filtered["total"] == 20 and filtered["count"] == 20
    assert [d["delivery_id"] for d in filtered["deliveries"]] == refused[::-1]
    assert all(d["failure_reason"] == "transport_error" for d in filtered["deliveries"])
    assert all(d["error_message"] == LONG_ERROR for d in filtered["deliveries"])  # JSON: whole


async def test_tables_fit_the_terminal_and_stay_whole_in_a_pipe(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub = await admin.subscription("https://user:pw@hooks.example.com/a/very/long/path?token=t0k")
    ids = await seed_deliveries(redis, sub, 3, error=LONG_ERROR)
    args = ("deliveries", "list", "--subscription", sub)
    code, tty, err = await cli_tty(redis_server.url, *args, columns=120)
    assert code == 0, err
    lines = tty.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 120, lines
    assert all(any(i in line for line in lines) for i in ids)  # ids are never cut
    assert lines[1].endswith("Connection re\u2026")  # the error gives way
    piped = await cli(redis_server.url, *args)
    assert max(len(line) for line in piped.out.splitlines()) > 160  # a pipe gets it whole
    code, tty, _ = await cli_tty(redis_server.url, "subscriptions", "list", columns=80)
    assert code == 0 and max(len(line) for line in tty.splitlines()) <= 80
    assert "t0k" not in tty and "pw@" not in tty
    payload = '{"delivery_id": "del_00000000000000aa", ' + '"pad": "x", ' * 20 + "}"
    entry = {"delivery_id": "del_00000000000000aa", "reason": "corrupt_record", "payload": payload}
    await redis.lpush("dispatch:failed", json.dumps({**entry, "quarantined_at_ms": 1}))
    quarantined, quarantined_js = await asyncio.gather(
        cli(redis_server.url, "quarantine", "list"),
        cli(redis_server.url, "quarantine", "list", "--json"),
    )
    row = quarantined.out.splitlines()[-1]
    assert row.endswith(payload[:49] + "\u2026")
    assert json.loads(quarantined_js.out)["entries"][0]["payload"] == payload
    closed = await asyncio.create_subprocess_shell(
        f"{sys.executable} -m cycles_events.cli deliveries list --subscription {sub} --json "
        "| head -c 10 >/dev/null; echo ${PIPESTATUS[0]}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(redis_server.url),
        executable="/bin/bash",
    )
    out, err_b = await closed.communicate()
    assert out.decode().strip() == "0" and err_b.decode() == ""  # `| head`: no Redis error


async def test_dry_run_previews_an_inactive_subscription_and_replays_say_what_was_skipped(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    disabled = await admin.subscription("http://127.0.0.1:1/x", status="DISABLED")
    blocked = await seed_deliveries(redis, disabled, 4)
    before = await snapshot(redis)
    url = redis_server.url
    dry, dry_js, by_id, real = await asyncio.gather(
        cli(url, "replay", "--subscription", disabled, "--dry-run"),
        cli(url, "replay", "--subscription", disabled, "--dry-run", "--json"),
        cli(url, "replay", blocked[0], "--dry-run"),
        cli(url, "replay", "--subscription", disabled),
    )
    assert await snapshot(redis) == before
    assert dry.code == 0 and by_id.code == 0, dry.err + by_id.err
    assert "dry run: would replay 4 deliveries; nothing changed" in dry.out
    note = (
        f"note: subscription {disabled} is DISABLED: the replay itself is refused until it is "
        f"ACTIVE again (cycles-events subscriptions enable {disabled})"
    )
    assert dry.out.splitlines()[-1] == note and by_id.out.splitlines()[-1] == note
    data = json.loads(dry_js.out)
    assert data["would_replay"] == blocked and data["inactive_subscriptions"] == {
        disabled: "DISABLED"
    }
    assert real.code == 1 and real.out == ""
    assert f"subscription {disabled} is DISABLED, not ACTIVE: nothing replayed" in real.err
    assert f"cycles-events subscriptions enable {disabled}" in real.err

    sub = await admin.subscription("http://127.0.0.1:1/hook")
    sources = await seed_deliveries(redis, sub, 8)
    first = await cli(url, "replay", "--subscription", sub, "--json")
    assert first.code == 0, first.err
    earlier = {p["source"]: p["delivery_id"] for p in json.loads(first.out)["replayed"]}
    again, again_js, by_ids = await asyncio.gather(
        cli(url, "replay", "--subscription", sub),
        cli(url, "replay", "--subscription", sub, "--dry-run", "--json"),
        cli(url, "replay", sources[0], sources[1]),
    )
    lines = again.out.splitlines()
    assert lines[0] == "replayed 0 of 0 deliveries (skipped: already_replayed 8)"
    assert lines[1] == (
        "8 sources were already replayed; --again replays them anyway. Earlier replays "
        "(their replay_of field names the source):"
    )
    shown = [line.split() for line in lines[2:7]]
    assert all(earlier[src] == new for src, _, _, new in shown)
    assert lines[7] == "  \u2026 and 3 more (--json lists every pair)"
    assert json.loads(again_js.out)["already_replayed"] == earlier
    assert by_ids.out.splitlines()[1].startswith("2 sources were already replayed; --again")
    forced = await cli(url, "replay", "--subscription", sub, "--again", "--json")
    assert len(json.loads(forced.out)["replayed"]) == 8


async def test_healthcheck_json_up_and_down(daemon_factory: Callable[..., Daemon]) -> None:
    server = RedisServer()
    server.start()
    try:
        daemon = daemon_factory(server)
        daemon.start()
        await daemon.wait_ready()
        port = str(daemon.port)
        up_js, up_text, by_env = await asyncio.gather(
            cli(server.url, "healthcheck", "--port", port, "--json"),
            cli(server.url, "healthcheck", "--port", port),
            cli(server.url, "healthcheck", "--json", MANAGEMENT_PORT=port),
        )
        assert up_js.code == 0 and up_text.code == 0 and by_env.code == 0, up_js.err + by_env.err
        body = json.loads(up_js.out)
        assert body["status"] == "UP" and set(body["components"]) == {"redis", "dispatcher"}
        assert body["components"]["redis"]["details"]["ping"] == "PONG"
        assert json.loads(by_env.out)["status"] == "UP"
        assert up_text.out == up_text.err == ""

        server.stop()
        await wait_for(lambda: daemon.health()[0] == 503, 20, "readiness never went DOWN")
        down_js, down_text = await asyncio.gather(
            cli(server.url, "healthcheck", "--port", port, "--json"),
            cli(server.url, "healthcheck", "--port", port),
        )
    finally:
        server.cleanup()
    assert down_js.code == 1 and down_text.code == 1
    body = json.loads(down_js.out)
    assert body["status"] == "DOWN" and body["components"]["redis"]["status"] == "DOWN"
    assert down_text.out == "" and len(down_text.err.strip().splitlines()) == 1
    assert down_text.err.startswith("cycles-events: readiness is DOWN: redis DOWN (")
    daemon.stop()
    unreachable = await cli(server.url, "healthcheck", "--port", port, "--json", "--timeout", "1")
    assert unreachable.code == 1 and unreachable.out == ""
    assert unreachable.err.startswith("cycles-events: readiness check failed: http://127.0.0.1:")
    assert len(unreachable.err.strip().splitlines()) == 1
