"""`subscriptions list` and `show` through the real CLI (issue 13, item 8), and the runbook's
warning checked against the running daemon: a PAUSED subscription's deliveries end FAILED and
come through after `subscriptions enable` and a replay."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from tests.clitools import cli, seed_deliveries, snapshot
from tests.integration.conftest import StartApp
from tests.support import Admin, Receiver, RedisServer, now_ms

SECRET_URL = "https://user:pw@hooks.example.com/orders?token=t0k"


async def _waiting(redis: Redis, admin: Admin, sub: str) -> list[str]:
    """Four RETRYING deliveries: due on dispatch:retry (2), claimed, and in no queue."""
    ids = await seed_deliveries(redis, sub, 4, status="RETRYING", error="HTTP 502", attempts=2)
    await redis.zadd("dispatch:retry", {ids[0]: now_ms() + 60_000, ids[1]: now_ms() + 60_000})
    await redis.lpush("dispatch:processing", ids[2])
    return ids


async def test_list_and_show_a_subscription_and_its_backlog(
    redis: Redis, admin: Admin, redis_server: RedisServer
) -> None:
    sub = await admin.subscription(
        SECRET_URL,
        headers={"Authorization": "Bearer s3cret-value"},
        secret="whsec_very_secret",
        encrypt=True,
        consecutive_failures=3,
        last_success_at="2026-11-30T10:00:00Z",
        last_failure_at="2026-11-30T11:00:00Z",
    )
    paused = await admin.subscription("https://hooks.example.com/p", status="PAUSED", tenant="zeta")
    system = await admin.subscription("https://ops.example.com/x", tenant="__system__")
    await redis.sadd("webhooks:_all", "whsub_00000000000000ff")  # its record is gone
    await seed_deliveries(redis, sub, 30)
    refused = await seed_deliveries(redis, sub, 5, error="Connection refused")
    await seed_deliveries(redis, sub, 6, status="SUCCESS", error=None)
    await seed_deliveries(redis, sub, 2, created_ms=now_ms() - 3 * 86_400_000)  # before 24h
    waiting = await _waiting(redis, admin, sub)
    pending = await admin.deliver(sub)
    await seed_deliveries(redis, paused, 3, error="Subscription not active: PAUSED")
    before = await snapshot(redis)
    url = redis_server.url
    runs = await asyncio.gather(
        cli(url, "subscriptions", "list"),
        cli(url, "subscriptions", "list", "--json"),
        cli(url, "subscriptions", "list", "--status", "paused", "--json"),
        cli(url, "subscriptions", "list", "--tenant", "acme", "--limit", "1", "--json"),
        cli(url, "subscriptions", "show", sub),
        cli(url, "subscriptions", "show", sub, "--json"),
        cli(url, "subscriptions", "show", sub, "--since", "7d", "--json"),
        cli(url, "subscriptions", "show", paused),
        cli(url, "subscriptions", "show", "whsub_0000000000000000"),
    )
    assert await snapshot(redis) == before  # read-only
    for run in runs[:-1]:
        assert run.code == 0, run.err
        for secret in ("s3cret-value", "whsec_very_secret", "pw@", "t0k", "enc:"):
            assert secret not in run.out
    text, js, only_paused, acme, show, show_js, week, paused_show, unknown = runs

    listed = json.loads(js.out)
    assert (listed["count"], listed["total"], listed["missing_records"]) == (3, 3, 1)
    by_id = {r["subscription_id"]: r for r in listed["subscriptions"]}
    assert [r["tenant_id"] for r in listed["subscriptions"]] == ["__system__", "acme", "zeta"]
    assert by_id[sub] == {
        "subscription_id": sub,
        "tenant_id": "acme",
        "name": "test",
        "status": "ACTIVE",
        "consecutive_failures": 3,
        "disable_after_failures": 10,
        "last_success_at": "2026-11-30T10:00:00Z",
        "last_failure_at": "2026-11-30T11:00:00Z",
        "url": "https://hooks.example.com/orders",
    }
    assert system in by_id
    assert [r["subscription_id"] for r in json.loads(only_paused.out)["subscriptions"]] == [paused]
    one = json.loads(acme.out)
    assert (one["count"], one["total"]) == (1, 1)
    lines = text.out.splitlines()
    assert lines[0].split() == [
        "SUBSCRIPTION",
        "TENANT",
        "STATUS",
        "FAILURES",
        "SUCCEEDED",
        "FAILED",
        "URL",
    ]
    row = next(line for line in lines if line.startswith(sub)).split()
    assert row[1:4] == ["acme", "ACTIVE", "3/10"] and row[-1] == "https://hooks.example.com/orders"
    assert row[5] == "ago" and row[7] == "ago"  # the last success and failure, as ages
    assert "showing 3 of 3 subscriptions" in text.out
    assert "(1 indexed subscription ids have no webhook:{id} record)" in text.out

    report = json.loads(show_js.out)
    summary = report["subscription"]
    assert summary["headers"] == {"Authorization": "***"}
    assert summary["secret"] == "set (encrypted)"
    assert summary["url"] == "https://hooks.example.com/orders"
    d = report["deliveries"]
    assert (d["indexed_total"], d["in_window"], d["expired_records"]) == (48, 46, 0)
    assert d["by_status"] == {"PENDING": 1, "RETRYING": 4, "SUCCESS": 6, "FAILED": 35}
    assert d["failures_by_reason"] == {
        "http_5xx": {"FAILED": 30, "RETRYING": 4},
        "transport_error": {"FAILED": 5},
    }
    assert d["queued"] == {"pending": 1, "retry": 2, "processing": 1, "not_queued": 1}
    assert d["last_failure"]["delivery_id"] in (*waiting, *refused)
    assert json.loads(week.out)["deliveries"]["in_window"] == 48
    assert pending not in json.dumps(d)  # only counted

    assert "consecutive_failures   3" in show.out
    assert "last_success_at        2026-11-30T10:00:00Z (" in show.out
    assert "by status              PENDING 1, RETRYING 4, SUCCESS 6, FAILED 35" in show.out
    assert "http_5xx 34 (FAILED 30, RETRYING 4), transport_error 5 (FAILED 5)" in show.out
    assert (
        "dispatch:pending 1, dispatch:retry 2, dispatch:processing 1 (in flight), in no queue 1"
    ) in show.out
    assert "warning:" not in show.out
    warning = paused_show.out.splitlines()[-1]
    assert warning.startswith("warning: PAUSED: its deliveries end FAILED (Subscription not ")
    assert f"cycles-events replay --subscription {paused} --reason subscription_inactive" in warning
    assert "subscription_inactive 3 (FAILED 3)" in paused_show.out
    assert unknown.code == 1 and unknown.out == ""
    assert unknown.err == "cycles-events: subscription whsub_0000000000000000 not found\n"


async def test_a_paused_subscription_fails_its_deliveries_until_enabled_and_replayed(
    start_app: StartApp,
    admin: Admin,
    receiver: Receiver,
    redis: Redis,
    redis_server: RedisServer,
) -> None:
    await admin.security()
    sub = await admin.subscription(receiver.url(), status="PAUSED")
    ids = [await admin.deliver(sub) for _ in range(5)]
    await start_app()
    docs = await admin.wait_status(ids, {"FAILED"}, timeout=20)
    assert {d["error_message"] for d in docs} == {"Subscription not active: PAUSED"}
    assert not receiver.requests  # nothing held, nothing sent: they failed
    url = redis_server.url
    shown = await cli(url, "subscriptions", "show", sub, "--json")
    assert json.loads(shown.out)["deliveries"]["failures_by_reason"] == {
        "subscription_inactive": {"FAILED": 5}
    }
    refused = await cli(url, "replay", "--subscription", sub, "--reason", "subscription_inactive")
    assert refused.code == 1 and "subscriptions enable" in refused.err
    assert (await cli(url, "subscriptions", "enable", sub)).code == 0
    replay = await cli(
        url, "replay", "--subscription", sub, "--reason", "subscription_inactive", "--json"
    )
    assert replay.code == 0, replay.err
    new_ids = [p["delivery_id"] for p in json.loads(replay.out)["replayed"]]
    assert len(new_ids) == 5
    await admin.wait_status(new_ids, {"SUCCESS"}, timeout=20)
    await receiver.wait_count(5)
