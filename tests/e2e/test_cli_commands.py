"""The operator CLI as a subprocess against a real redis-server: exit codes, dry runs, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from redis.asyncio import Redis

from tests.clitools import cli, cli_env, cli_progress, seed_deliveries, snapshot
from tests.support import Admin, RedisServer, free_port, now_ms


async def _dataset(redis: Redis, admin: Admin) -> tuple[str, list[str], list[str]]:
    """A subscription with failed, pending and retrying deliveries and a quarantine entry."""
    sub = await admin.subscription(
        "http://127.0.0.1:1/hook", headers={"Authorization": "Bearer top-secret"}
    )
    failed = await seed_deliveries(redis, sub, 30)
    timeouts = await seed_deliveries(redis, sub, 10, error="Timeout: no response within 30s")
    pending = [await admin.deliver(sub) for _ in range(3)]
    await redis.zadd("dispatch:retry", {pending[0]: now_ms() + 30_000})
    entry = {"delivery_id": "del_00000000000000aa", "reason": "corrupt_record"}
    await redis.lpush("dispatch:failed", json.dumps({**entry, "quarantined_at_ms": 1}))
    return sub, failed, timeouts


async def test_dry_runs_and_read_only_commands_change_nothing(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub, failed, timeouts = await _dataset(redis, admin)
    before = await snapshot(redis)
    url = redis_server.url
    runs = await asyncio.gather(
        cli(url, "replay", "--subscription", sub, "--reason", "http_5xx", "--dry-run", "--json"),
        cli(url, "replay", failed[0], timeouts[0], "--dry-run"),
        cli(url, "replay", "--subscription", sub, "--status", "ANY", "--since", "1h", "--dry-run"),
        cli(url, "stats", "--json"),
        cli(url, "deliveries", "list", "--subscription", sub, "--status", "FAILED", "--json"),
        cli(url, "deliveries", "show", failed[0]),
        cli(url, "quarantine", "list", "--json"),
    )
    for run in runs:
        assert run.code == 0, run.err
        assert "\r" not in run.err  # no progress bar when stderr is not a terminal
    assert await snapshot(redis) == before
    dry = json.loads(runs[0].out)
    assert dry["would_replay"] == failed and dry["dry_run"] is True
    assert runs[1].out.splitlines()[-1] == "dry run: would replay 2 deliveries; nothing changed"
    assert "would replay 43 deliveries" in runs[2].out
    stats = json.loads(runs[3].out)
    assert (stats["pending"], stats["retry"], stats["quarantine"]) == (3, 1, 1)
    assert stats["retry_due_next_minute"] == 1
    listed = json.loads(runs[4].out)
    assert listed["count"] == 40 and {d["status"] for d in listed["deliveries"]} == {"FAILED"}
    assert "failure_reason" in runs[5].out and "http_5xx" in runs[5].out
    assert "top-secret" not in runs[5].out and '"Authorization": "***"' in runs[5].out
    assert json.loads(runs[6].out)["entries"][0]["delivery_id"] == "del_00000000000000aa"


async def test_failures_exit_1_with_one_line_and_bad_arguments_exit_2(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub, failed, _ = await _dataset(redis, admin)
    disabled = await admin.subscription("http://127.0.0.1:1/x", status="DISABLED")
    blocked = await seed_deliveries(redis, disabled, 2)
    before = await snapshot(redis)
    url = redis_server.url
    unknown = "del_0000000000000000"
    down = f"redis://127.0.0.1:{free_port()}/0"
    runs = await asyncio.gather(
        cli(url, "deliveries", "show", unknown),
        cli(url, "replay", failed[0], unknown),
        cli(url, "replay", "--subscription", disabled),
        cli(url, "replay", blocked[0]),
        cli(url, "quarantine", "requeue", unknown),
        cli(url, "subscriptions", "enable", "whsub_0000000000000000"),
        cli(down, "stats"),
        cli(url, "replay", "--subscription", sub, "--limit", "zero"),
    )
    expected = [
        (1, f"delivery {unknown} not found"),
        (1, f"delivery {unknown} not found: nothing replayed"),
        (1, f"subscription {disabled} is DISABLED, not ACTIVE: nothing replayed"),
        (1, f"subscription {disabled} is DISABLED, not ACTIVE"),
        (1, f"delivery {unknown} is not in quarantine"),
        (1, "subscription whsub_0000000000000000 not found"),
        (1, f"cannot reach Redis at 127.0.0.1:{down.split(':')[2].split('/')[0]}"),
        (2, "argument --limit: not a whole number"),
    ]
    for run, (code, message) in zip(runs, expected, strict=True):
        assert run.code == code, (run.err, message)
        assert message in run.err
        assert "Traceback" not in run.err and run.out == ""
        if code == 1:
            assert len(run.err.strip().splitlines()) == 1
            assert run.err.startswith("cycles-events: ")
    assert await snapshot(redis) == before


async def test_ctrl_c_stops_a_bulk_replay_that_a_rerun_completes(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook")
    sources = await seed_deliveries(redis, sub, 400)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "cycles_events.cli", "replay", "--subscription", sub, "--rate", "200/s", "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(redis_server.url),
    )
    for _ in range(200):  # wait until replays are being written
        if await redis.llen("dispatch:pending") >= 20:
            break
        await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, err
    report = json.loads(out)
    done = len(report["replayed"])
    assert report["interrupted"] is True and 20 <= done < 400
    assert f"interrupted after {done} of 400 replays" in err.decode()
    assert await redis.llen("dispatch:pending") == done  # exactly what it reported

    rerun = await cli(redis_server.url, "replay", "--subscription", sub, "--json")
    assert rerun.code == 0, rerun.err
    second = json.loads(rerun.out)
    assert len(second["replayed"]) == 400 - done
    assert second["skipped"] == {"already_replayed": done}
    new_ids = [i.decode() for i in await redis.lrange("dispatch:pending", 0, -1)]
    origins = [json.loads(await redis.get(f"delivery:{i}"))["replay_of"] for i in new_ids]
    assert sorted(origins) == sorted(sources)  # every source replayed exactly once


async def test_progress_bar_on_a_terminal(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook")
    await seed_deliveries(redis, sub, 50)
    code, out, tty = await cli_progress(
        redis_server.url, "replay", "--subscription", sub, "--rate", "100/s"
    )
    assert code == 0
    assert b"\rreplay [" in tty and b"50/50 100%" in tty
    assert out.splitlines()[-1] == "replayed 50 of 50 deliveries"


async def test_quarantine_and_enable_through_the_cli(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook", status="DISABLED")
    entry = {"delivery_id": "del_00000000000000bb", "reason": "corrupt_record", "payload": "{"}
    await redis.lpush("dispatch:failed", json.dumps(entry))
    url = redis_server.url
    requeue, enable = await asyncio.gather(
        cli(url, "quarantine", "requeue", "del_00000000000000bb", "--json"),
        cli(url, "subscriptions", "enable", sub),
    )
    assert requeue.code == 0 and json.loads(requeue.out)["entries_removed"] == 1
    assert await redis.lrange("dispatch:pending", 0, -1) == [b"del_00000000000000bb"]
    assert await redis.llen("dispatch:failed") == 0
    assert enable.code == 0 and f"{sub}: DISABLED -> ACTIVE" in enable.out
    assert json.loads(await redis.get(f"webhook:{sub}"))["status"] == "ACTIVE"


async def test_stats_shows_claims_by_owner_and_the_outbox(
    redis: Redis, redis_server: RedisServer
) -> None:
    seconds, _ = await redis.time()
    now = int(seconds) * 1000
    claims = {
        "del_00000000000000b1": ("0123456789abcdef:7", now - 2_000),  # ours, live
        "del_00000000000000b2": ("7c9e6679-7425-40de-944b-e07fc1f90ae7", now - 400_000),  # Java
        "del_00000000000000b3": ("__orphan__", now - 1_000),  # dated by Java's recovery
    }
    for delivery_id, (owner, at) in claims.items():
        await redis.lpush("dispatch:processing", delivery_id)
        await redis.hset("dispatch:processing:claim_owner", delivery_id, owner)
        await redis.zadd("dispatch:processing:claimed_at", {delivery_id: at})
    await redis.lpush("dispatch:processing", "del_00000000000000b4")  # a BLMOVE that died
    await redis.zadd(
        "dispatcher:event-outbox:pending", {"delivery-failed:whsub_1:del_1": now - 5000}
    )
    await redis.lpush("dispatcher:event-outbox:failed", '{"task_id":"x","payload":"{}"}')
    text, js = await asyncio.gather(
        cli(redis_server.url, "stats"), cli(redis_server.url, "stats", "--json")
    )
    assert text.code == js.code == 0, text.err + js.err
    data = json.loads(js.out)
    assert {k: v["count"] for k, v in data["claims"].items()} == {
        "ours": 1,
        "java": 1,
        "orphan": 1,
        "unowned": 1,
        "other": 0,
    }
    assert data["claims"]["java"]["idle"] == 1 and data["claims"]["ours"]["idle"] == 0
    assert 399 < data["claims"]["java"]["oldest_age_s"] < 420
    assert data["outbox"] == {
        "pending": 1,
        "due": 1,
        "oldest_age_s": data["outbox"]["oldest_age_s"],
        "dead_letters": 1,
    }
    assert 4 < data["outbox"]["oldest_age_s"] < 30
    assert "Java service" in text.out and "__orphan__" in text.out and "no owner yet" in text.out
    assert "outbox" in text.out and "dead letters 1" in text.out


async def test_receiver_secret_prints_the_standard_webhooks_form(redis_server: RedisServer) -> None:
    from cycles_events.crypto import encrypt_secret
    from tests.support import KEY

    secret = "whsec_Jm2cQy8lVb3sTqXo0rP1aK7eZ4uNw9dH5fGiLcRtYvE"
    plain = await cli(redis_server.url, "receiver-secret", stdin=secret.encode())
    stored = encrypt_secret(secret, KEY).encode()
    encrypted = await cli(
        redis_server.url,
        "receiver-secret",
        "--json",
        stdin=stored,
        WEBHOOK_SECRET_ENCRYPTION_KEY="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    )
    assert plain.code == encrypted.code == 0, plain.err + encrypted.err
    assert plain.out.strip() == secret + "="
    assert json.loads(encrypted.out) == {"standard_webhooks_secret": secret + "="}
