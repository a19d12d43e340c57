"""The controlled recovery drain (issue 14, item 5) through the real CLI, a subprocess against a
real redis-server: `replay --ramp` and `subscriptions enable --replay`."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from redis.asyncio import Redis

from cycles_events.models import format_instant
from tests.clitools import cli, cli_env, cli_progress, seed_deliveries, snapshot
from tests.integration.conftest import StartApp
from tests.support import Admin, Receiver, RedisServer, now_ms

INACTIVE = "Subscription not active: PAUSED"


async def _created(redis: Redis, sub: str, ids: list[str]) -> list[float]:
    """The creation times (ms) of deliveries, from the deliveries:{sub} index."""
    scores = [await redis.zscore(f"deliveries:{sub}", i) for i in ids]
    assert all(s is not None for s in scores)
    return [float(s) for s in scores if s is not None]


async def _pending_oldest_first(redis: Redis) -> list[str]:
    """dispatch:pending in the order the dispatcher takes it (LPUSH, then BLMOVE RIGHT)."""
    return [i.decode() for i in reversed(await redis.lrange("dispatch:pending", 0, -1))]


async def _interrupt(redis: Redis, url: str, *args: str, after: int) -> tuple[int, str, str]:
    """Run the CLI, send SIGINT once `after` replays are pushed: (code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "cycles_events.cli", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(url),
    )
    for _ in range(500):
        if await redis.llen("dispatch:pending") >= after:
            break
        await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_ramped_replay_rises_in_pace_oldest_first(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook")
    base = now_ms() - 60_000
    newer = await seed_deliveries(redis, sub, 75, created_ms=base + 30_000)  # written first
    older = await seed_deliveries(redis, sub, 75, created_ms=base)
    run = await cli(
        redis_server.url,
        *("replay", "--subscription", sub, "--rate", "100/s", "--ramp", "3s", "--json"),
    )
    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert [p["source"] for p in report["replayed"]] == older + newer  # oldest first
    assert (report["rate_per_s"], report["ramp_s"], report["ramp_start_per_s"]) == (100, 3, 10)
    new_ids = [p["delivery_id"] for p in report["replayed"]]
    assert await _pending_oldest_first(redis) == new_ids
    times = await _created(redis, sub, new_ids)
    assert times == sorted(times)
    half = len(times) // 2
    first, last = times[half] - times[0], times[-1] - times[half]
    # the schedule gives about 1.9 s to the first half and 0.9 s to the second
    assert first > 1.3 * last, (first, last)
    assert times[-1] - times[0] > 1500  # slower than 150 at a flat 100/s


async def test_explicit_ids_are_replayed_oldest_first_with_a_ramp(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook")
    ids = await seed_deliveries(redis, sub, 5, created_ms=now_ms() - 10_000, step_ms=100)
    given = [ids[3], ids[0], ids[4], ids[1], ids[2]]
    url = redis_server.url
    as_given, ramped = await asyncio.gather(
        cli(url, "replay", *given, "--dry-run", "--json"),
        cli(url, "replay", *given, "--rate", "50/s", "--ramp", "1s", "--dry-run", "--json"),
    )
    assert json.loads(as_given.out)["would_replay"] == given
    assert json.loads(ramped.out)["would_replay"] == ids
    run = await cli(url, "replay", *given, "--rate", "50/s", "--ramp", "1s", "--json")
    assert run.code == 0, run.err
    assert [p["source"] for p in json.loads(run.out)["replayed"]] == ids


async def test_a_ramped_dry_run_prints_the_plan_and_changes_nothing(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook")
    await seed_deliveries(redis, sub, 150)
    before = await snapshot(redis)
    url = redis_server.url
    args = ("replay", "--subscription", sub, "--rate", "100/s", "--ramp", "3s", "--dry-run")
    text, js, no_rate = await asyncio.gather(
        cli(url, *args),
        cli(url, *args, "--json"),
        cli(url, "replay", "--subscription", sub, "--ramp", "3s"),
    )
    assert await snapshot(redis) == before
    assert text.code == 0 and js.code == 0, text.err + js.err
    lines = text.out.splitlines()
    assert lines[-2] == "dry run: would replay 150 deliveries; nothing changed"
    assert lines[-1] == "plan: 150 replays at 100/s, ramping from 10/s over 3s: about 3s"
    data = json.loads(js.out)
    assert len(data["would_replay"]) == 150 and data["planned_duration_s"] == 2.85
    assert no_rate.code == 2 and "--ramp needs --rate" in no_rate.err


async def test_ctrl_c_mid_ramp_exits_130_with_what_was_written(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook")
    await seed_deliveries(redis, sub, 400)
    args = ("replay", "--subscription", sub, "--rate", "200/s", "--ramp", "30s", "--json")
    code, out, err = await _interrupt(redis, redis_server.url, *args, after=10)
    assert code == 130, err
    report = json.loads(out)
    done = len(report["replayed"])
    assert report["interrupted"] is True and 10 <= done < 400
    assert f"interrupted after {done} of 400 replays; run the same command again" in err
    assert await redis.llen("dispatch:pending") == done


async def test_the_progress_line_shows_the_ramp(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub = await admin.subscription("http://127.0.0.1:1/hook")
    await seed_deliveries(redis, sub, 30)
    code, out, tty = await cli_progress(
        redis_server.url, "replay", "--subscription", sub, "--rate", "40/s", "--ramp", "1s"
    )
    assert code == 0
    assert b"\rreplay [" in tty and b"/30 " in tty
    assert b"/s ramping to 40/s eta " in tty and b"30/30 100%" in tty
    assert out.splitlines()[-1] == "replayed 30 of 30 deliveries"


async def _paused_with_a_backlog(
    redis: Redis, admin: Admin
) -> tuple[str, int, list[str], list[str], list[str]]:
    """A PAUSED subscription and its deliveries: (id, T, inactive, http_5xx, all three merged)."""
    now = now_ms()
    since = now - 15 * 60_000
    sub = await admin.subscription(
        "http://127.0.0.1:1/hook",
        status="PAUSED",
        consecutive_failures=3,
        updated_at=format_instant(now - 10 * 60_000),  # paused then
        last_failure_at=format_instant(since),  # the failure before: the earlier bound
    )
    # created before the bound, ended FAILED after it: part of the backlog
    straddling = await seed_deliveries(
        redis,
        sub,
        3,
        error=INACTIVE,
        created_ms=now - 30 * 60_000,
        completed_at=format_instant(now - 5 * 60_000),
    )
    http5 = await seed_deliveries(redis, sub, 4, created_ms=now - 12 * 60_000)
    inactive = await seed_deliveries(redis, sub, 5, error=INACTIVE, created_ms=now - 8 * 60_000)
    await seed_deliveries(redis, sub, 2, error=INACTIVE, created_ms=now - 3 * 3_600_000)  # before
    await seed_deliveries(redis, sub, 3, status="SUCCESS", error=None)
    return sub, since, straddling + inactive, http5, straddling + http5 + inactive


async def test_enable_replay_dry_run_changes_nothing_and_says_what_it_would_do(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub, since, backlog, _, widened = await _paused_with_a_backlog(redis, admin)
    before = await snapshot(redis)
    url = redis_server.url
    base = ("subscriptions", "enable", sub, "--replay", "--rate", "100/s", "--ramp", "1s")
    text, js, wide, plain = await asyncio.gather(
        cli(url, *base, "--dry-run"),
        cli(url, *base, "--dry-run", "--json"),
        cli(url, *base, "--dry-run", "--json", "--reason", "http_5xx"),
        cli(url, "subscriptions", "enable", sub, "--dry-run"),
    )
    assert await snapshot(redis) == before  # neither enabled nor replayed
    for run in (text, js, wide, plain):
        assert run.code == 0, run.err
    data = json.loads(js.out)
    assert data["dry_run"] is True and data["changed"] is False and data["would_change"] is True
    assert data["previous_status"] == "PAUSED" and data["event_id"] is None
    replay = data["replay"]
    assert replay["would_replay"] == backlog  # oldest first, only subscription_inactive
    assert replay["since"] == format_instant(since)
    assert replay["since_source"] == "last_failure_at"
    assert replay["reasons"] == ["subscription_inactive"]
    assert replay["inactive_subscriptions"] == {}
    assert replay["planned_duration_s"] is not None and replay["ramp_s"] == 1
    widened_data = json.loads(wide.out)["replay"]
    assert widened_data["would_replay"] == widened
    assert widened_data["reasons"] == ["http_5xx", "subscription_inactive"]
    lines = text.out.splitlines()
    assert lines[-4] == (
        f"dry run: would enable {sub}: PAUSED -> ACTIVE, consecutive_failures 3 -> 0, and save "
        "a webhook.resumed event"
    )
    assert lines[-3] == (
        "dry run: would replay 8 deliveries that ended FAILED (subscription_inactive) since "
        f"{format_instant(since)} (last_failure_at), oldest first"
    )
    assert lines[-2].startswith("plan: 8 replays at 100/s, ramping from 10/s over 1s: about ")
    assert lines[-1] == "dry run: nothing changed"
    assert plain.out.splitlines() == [
        f"dry run: would enable {sub}: PAUSED -> ACTIVE, consecutive_failures 3 -> 0, and save "
        "a webhook.resumed event",
        "dry run: nothing changed",
    ]


async def test_enable_replay_enables_and_replays_only_the_inactive_failures(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub, since, backlog, _, _ = await _paused_with_a_backlog(redis, admin)
    url = redis_server.url
    run = await cli(
        url, "subscriptions", "enable", sub, "--replay", "--rate", "100/s", "--ramp", "1s", "--json"
    )
    assert run.code == 0, run.err
    data = json.loads(run.out)
    assert data["changed"] is True and data["previous_status"] == "PAUSED"
    record = json.loads(await redis.get(f"webhook:{sub}"))
    assert record["status"] == "ACTIVE" and record["consecutive_failures"] == 0
    event = json.loads(await redis.get(f"event:{data['event_id']}"))
    assert event["event_type"] == "webhook.resumed"
    assert event["data"]["previous_status"] == "PAUSED"
    replay = data["replay"]
    assert [p["source"] for p in replay["replayed"]] == backlog
    assert replay["interrupted"] is False and replay["since_source"] == "last_failure_at"
    new_ids = [p["delivery_id"] for p in replay["replayed"]]
    assert await _pending_oldest_first(redis) == new_ids
    for new_id, source in zip(new_ids, backlog, strict=True):
        doc = json.loads(await redis.get(f"delivery:{new_id}"))
        assert doc["status"] == "PENDING" and doc["replay_of"] == source

    again = await cli(
        url, "subscriptions", "enable", sub, "--replay", "--since", format_instant(since)
    )
    assert again.code == 0, again.err
    lines = again.out.splitlines()
    assert lines[:3] == [
        f"{sub} is already ACTIVE with no consecutive failures",
        "replaying 0 deliveries that ended FAILED (subscription_inactive) since "
        f"{format_instant(since)} (--since), oldest first (skipped: already_replayed 8)",
        "replayed 0 of 0 deliveries (skipped: already_replayed 8)",
    ]
    assert lines[3].startswith("8 sources were already replayed")
    assert await redis.llen("dispatch:pending") == 8


async def test_ctrl_c_stops_an_enable_drain_that_the_printed_command_resumes(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub = await admin.subscription(
        "http://127.0.0.1:1/hook", status="DISABLED", updated_at=format_instant(now_ms() - 60_000)
    )
    sources = await seed_deliveries(redis, sub, 300, error="Subscription not active: DISABLED")
    url = redis_server.url
    args = ("subscriptions", "enable", sub, "--replay", "--rate", "100/s", "--ramp", "20s")
    code, out, err = await _interrupt(redis, url, *args, "--json", after=5)
    assert code == 130, err
    data = json.loads(out)
    assert data["changed"] is True
    assert json.loads(await redis.get(f"webhook:{sub}"))["status"] == "ACTIVE"
    done = len(data["replay"]["replayed"])
    assert data["replay"]["interrupted"] is True and 5 <= done < 300
    assert await redis.llen("dispatch:pending") == done
    since = data["replay"]["since"]
    assert (
        f"interrupted after {done} of 300 replays; run the same command with --since {since}" in err
    )

    rest = await cli(url, "subscriptions", "enable", sub, "--replay", "--since", since, "--json")
    assert rest.code == 0, rest.err
    second = json.loads(rest.out)["replay"]
    assert len(second["replayed"]) == 300 - done
    assert second["skipped"] == {"already_replayed": done}
    new_ids = await _pending_oldest_first(redis)
    origins = [json.loads(await redis.get(f"delivery:{i}"))["replay_of"] for i in new_ids]
    assert origins == sources  # every source once, oldest first across both runs


async def test_enable_replay_delivers_the_backlog_through_the_daemon(
    start_app: StartApp,
    admin: Admin,
    receiver: Receiver,
    redis: Redis,
    redis_server: RedisServer,
) -> None:
    await admin.security()
    paused_at = format_instant(now_ms() - 1000)
    sub = await admin.subscription(receiver.url(), status="PAUSED", updated_at=paused_at)
    ids = [await admin.deliver(sub) for _ in range(6)]
    await start_app()
    docs = await admin.wait_status(ids, {"FAILED"}, timeout=20)
    assert {d["error_message"] for d in docs} == {INACTIVE}
    assert not receiver.requests
    url = redis_server.url
    run = await cli(
        url, "subscriptions", "enable", sub, "--replay", "--rate", "20/s", "--ramp", "1s", "--json"
    )
    assert run.code == 0, run.err
    replay = json.loads(run.out)["replay"]
    assert replay["since"] == paused_at and replay["since_source"] == "updated_at"
    assert sorted(p["source"] for p in replay["replayed"]) == sorted(ids)
    new_ids = [p["delivery_id"] for p in replay["replayed"]]
    await admin.wait_status(new_ids, {"SUCCESS"}, timeout=20)
    await receiver.wait_count(6)
