"""Chaos: several daemons on one AOF Redis, misbehaving receivers, SIGKILLs and a Redis outage
longer than the recovery idle, under a steady push of deliveries. Nothing may be lost or stuck,
nothing answered 2xx may end FAILED, nothing is sent unsigned, and sends after a success stay
under the goal. Not part of `make test`: run it with `make chaos` (CHAOS_SECONDS=600 for longer;
every knob is in `Params`)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.e2e.chaos_support import (
    KINDS,
    ChaosReceiver,
    Figures,
    Hit,
    LostWatch,
    Params,
    Planned,
    Pusher,
    Snapshot,
    Sub,
    analyse,
    artifacts_dir,
    evidence,
    hits_by_delivery,
    iso,
    plan,
    retrying,
    sleep_or_stop,
)
from tests.e2e.conftest import Daemon
from tests.support import Admin, Receiver, RedisServer, hex16

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

P = Params()
RECOVERY_IDLE_MS = 4000
RECOVERY_INTERVAL_MS = 1000
EVIDENCE_SHOWN = 8  # problem deliveries printed in full (all are in the artifacts)


@dataclass
class Fleet:
    """The daemons, and a loop that SIGKILLs a random one every few seconds and restarts it."""

    daemons: list[Daemon]
    rng: random.Random
    kills: list[tuple[float, int]] = field(default_factory=list)
    unexpected_exits: list[tuple[float, int, int]] = field(default_factory=list)

    async def start_all(self) -> None:
        for d in self.daemons:
            await asyncio.to_thread(d.start)
        for d in self.daemons:
            await d.wait_ready(timeout=30)

    def _check_exits(self) -> list[int]:
        """Daemons that exited by themselves (we did not kill them)."""
        dead = []
        for n, d in enumerate(self.daemons):
            if d.proc is not None and d.proc.poll() is not None:
                self.unexpected_exits.append((time.time(), n, d.proc.returncode))
                dead.append(n)
        return dead

    async def restart_dead(self) -> None:
        for n in self._check_exits():
            await asyncio.to_thread(self.daemons[n].start)

    async def kill_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await sleep_or_stop(stop, self.rng.uniform(0.6, 1.4) * P.kill_every)
            if stop.is_set():
                return
            await self.restart_dead()
            n = self.rng.randrange(len(self.daemons))
            d = self.daemons[n]
            d.signal(signal.SIGKILL)
            await asyncio.to_thread(d.wait, 10)
            self.kills.append((time.time(), n))
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * P.restart_after)
            await asyncio.to_thread(d.start)

    async def stop_all(self) -> list[int | None]:
        """SIGTERM every daemon and wait for it (keeping its log, unlike `Daemon.stop`)."""
        for d in self.daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.signal(signal.SIGTERM)
        codes: list[int | None] = []
        for d in self.daemons:
            try:
                codes.append(await asyncio.to_thread(d.wait, 40))
            except Exception:
                codes.append(None)
        return codes

    def log_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for d in self.daemons:
            for line in d.logs():
                action = str(line.get("action"))
                counts[action] += 1
                if action == "claims_recovered":
                    counts["claims_recovered (ids)"] += int(line.get("count") or 0)
        return dict(counts)


async def redis_outage(server: RedisServer, at: float, down: float) -> tuple[float, float]:
    """Stop Redis at `at` s for `down` s, then start it on the same port and dir (AOF)."""
    await asyncio.sleep(at)
    stopped = time.time()
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(down)
    await asyncio.to_thread(server.start)
    return stopped, time.time() - stopped


async def make_subscriptions(
    admin: Admin, receiver: Receiver, chaos_rx: ChaosReceiver, rng: random.Random
) -> list[Sub]:
    subs = []
    for n, kind in enumerate(KINDS):
        path = f"/{kind}/{n}"
        secret = f"whsec_chaos_{hex16()}"
        max_retries = rng.randint(3, 5)
        sub_id = await admin.subscription(
            receiver.url(path),
            secret=secret,
            encrypt=n % 2 == 1,  # half the secrets are stored `enc:`
            retry_policy={
                "max_retries": max_retries,
                "initial_delay_ms": 200,
                "backoff_multiplier": 2.0,
                "max_delay_ms": 2000,
            },
            disable_after_failures=1000,  # an auto-disable would drown the figures
        )
        chaos_rx.add(path, kind, secret)
        subs.append(Sub(sub_id, kind, path, secret, max_retries))
    return subs


async def settle(redis: Redis, ids: list[str], timeout: float) -> tuple[Snapshot, float]:
    """Wait until every delivery is final and the three queues are empty."""
    start = time.monotonic()
    while True:
        snap: Snapshot = await retrying(lambda: Snapshot.take(redis, ids))
        if not snap.not_final() and not any(snap.queue_sizes().values()):
            return snap, time.monotonic() - start
        if time.monotonic() - start > timeout:
            return snap, time.monotonic() - start
        await asyncio.sleep(1)


def report(
    fig: Figures,
    *,
    pusher: Pusher,
    fleet: Fleet,
    outage: tuple[float, float],
    settle_s: float,
    chaos_s: float,
    codes: list[int | None],
    log_counts: dict[str, int],
    watch_samples: int,
    per_sub: dict[str, Counter[str]],
    artifacts: Path,
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "seed": P.seed,
        "chaos_seconds": round(chaos_s, 1),
        "settle_seconds": round(settle_s, 1),
        "deliveries": fig.deliveries,
        "requests": fig.requests,
        "stray_requests": fig.stray_requests,
        "attempts_recorded": fig.attempts_recorded,
        "requests_minus_attempts_per_delivery": dict(fig.req_vs_attempts.most_common()),
        "answers": dict(fig.answers.most_common()),
        "sigkills": len(fleet.kills),
        "kills_per_daemon": dict(Counter(n for _, n in fleet.kills)),
        "unexpected_exits": fleet.unexpected_exits,
        "redis_outage_seconds": round(outage[1], 2),
        "push_retries": pusher.retries,
        "push_max_lag_seconds": round(pusher.max_lag_s, 2),
        "lost": len(fig.lost),
        "stuck": len(fig.stuck),
        "lost_seen_during_run": f"{len(fig.lost_during_run)} in {watch_samples} samples",
        "duplicate_sends": fig.dup_count,
        "duplicate_2xx": fig.dup_ok,
        "duplicate_after_success_non_2xx": fig.dup_after_success,
        "deliveries_with_duplicates": len(fig.duplicates),
        "duplicate_rate_percent": round(100 * fig.dup_rate, 3),
        "answered_2xx_but_failed": len(fig.ok_then_failed),
        "success_without_2xx": len(fig.success_without_ok),
        "unsigned_requests": fig.unsigned,
        "bad_signatures": fig.bad_signature,
        "failed_by_error": dict(fig.failed_by_error.most_common()),
        "final_by_subscription": {k: dict(v) for k, v in per_sub.items()},
        "claims_recovered_lines": log_counts.get("claims_recovered", 0),
        "claims_recovered_ids": log_counts.get("claims_recovered (ids)", 0),
        "claim_lost_lines": log_counts.get("claim_lost", 0),
        "redis_unavailable_lines": log_counts.get("redis_unavailable", 0),
        "redis_reconnected_lines": log_counts.get("redis_reconnected", 0),
        "claims_refreshed_after_outage_lines": log_counts.get("claims_refreshed_after_outage", 0),
        "graceful_exit_codes": codes,
        "artifacts": str(artifacts),
    }
    print("\n==== chaos summary ====")
    for key, value in summary.items():
        print(f"{key:>40}: {value}")
    return summary


async def test_chaos(
    daemon_factory: Callable[..., Daemon], persistent_redis: RedisServer, receiver: Receiver
) -> None:
    rng = random.Random(P.seed)
    artifacts = artifacts_dir(P.artifacts)
    print(f"\nchaos: seed={P.seed} params={asdict(P)}")
    client = Redis.from_url(persistent_redis.url, socket_timeout=2, socket_connect_timeout=1)
    admin = Admin(client)
    await admin.security()
    chaos_rx = ChaosReceiver(receiver, random.Random(P.seed + 1), hang_s=P.http_timeout + 2)
    subs = await make_subscriptions(admin, receiver, chaos_rx, rng)
    planned = plan(subs, int(P.seconds * P.rate), rng)
    ids = [p.delivery_id for p in planned]
    env: dict[str, Any] = {
        "DISPATCH_PROCESSING_RECOVERY_IDLE_MS": RECOVERY_IDLE_MS,
        "DISPATCH_PROCESSING_RECOVERY_INTERVAL_MS": RECOVERY_INTERVAL_MS,
        "dispatch.http.timeout-seconds": P.http_timeout,
        "LOG_LEVEL": os.environ.get("CHAOS_LOG_LEVEL", "DEBUG"),
    }
    fleet = Fleet([daemon_factory(persistent_redis, **env) for _ in range(P.daemons)], rng)
    await fleet.start_all()

    # chaos: steady pushes, SIGKILLs, one Redis outage longer than the recovery idle
    pusher = Pusher(admin, planned, P.rate)
    stop = asyncio.Event()
    began = time.monotonic()
    killer = asyncio.create_task(fleet.kill_loop(stop))
    watch = LostWatch(client, planned, pusher)
    watch_stop = asyncio.Event()
    watcher = asyncio.create_task(watch.run(watch_stop))
    outage_task = asyncio.create_task(
        redis_outage(persistent_redis, P.redis_down_at * P.seconds, P.redis_down)
    )
    try:
        await pusher.run()
        outage = await outage_task
    finally:
        stop.set()
        await killer
    chaos_s = time.monotonic() - began
    print(f"chaos over after {chaos_s:.1f}s: {pusher.pushed} pushed, {len(fleet.kills)} kills")

    # settle: every daemon up, then everything final and the queues empty
    await fleet.restart_dead()
    for d in fleet.daemons:
        await d.wait_ready(timeout=60)
    snap, settle_s = await settle(client, ids, P.settle_timeout)
    stuck = snap.not_final()
    watch_stop.set()
    await watcher
    await asyncio.sleep(P.http_timeout + 2.5)  # hanging handlers finish their records
    codes = await fleet.stop_all()
    logs: dict[str, Path] = {}
    for n, d in enumerate(fleet.daemons):
        logs[f"daemon{n}"] = artifacts / f"daemon{n}.log"
        shutil.copy(d.log_path, logs[f"daemon{n}"])
    final: Snapshot = await retrying(lambda: Snapshot.take(client, ids))
    hits: list[Hit] = list(chaos_rx.hits)
    fig = analyse(final, hits, planned, stuck)
    fig.lost_during_run = watch.seen
    per_sub: dict[str, Counter[str]] = {}
    for p in planned:
        per_sub.setdefault(p.sub.path, Counter())[final.status(p.delivery_id)] += 1
    summary = report(
        fig,
        pusher=pusher,
        fleet=fleet,
        outage=outage,
        settle_s=settle_s,
        chaos_s=chaos_s,
        codes=codes,
        log_counts=fleet.log_counts(),
        watch_samples=watch.samples,
        per_sub=per_sub,
        artifacts=artifacts,
    )
    failures = check(fig, codes)
    write_artifacts(artifacts, summary, fig, final, hits, planned, logs, fleet, outage)
    await client.aclose()
    assert not failures, "\n".join(failures)


def check(fig: Figures, codes: list[int | None]) -> list[str]:
    failures = []
    if fig.lost:
        failures.append(f"lost {len(fig.lost)}: {fig.lost[:10]}")
    if fig.lost_during_run:
        found = list(fig.lost_during_run.items())[:5]
        failures.append(f"neither final nor queued during the run {len(found)}: {found}")
    if fig.stuck:
        failures.append(f"stuck {len(fig.stuck)}: {fig.stuck[:10]}")
    if fig.dup_rate >= P.dup_goal:
        failures.append(
            f"duplicate sends {fig.dup_count}/{fig.deliveries} = {100 * fig.dup_rate:.3f}%"
            f" >= {100 * P.dup_goal}%: {fig.duplicates[:10]}"
        )
    if fig.ok_then_failed:
        failures.append(f"answered 2xx but FAILED {len(fig.ok_then_failed)}: {fig.ok_then_failed}")
    if fig.success_without_ok:
        failures.append(f"SUCCESS without a 2xx answer: {fig.success_without_ok[:10]}")
    if fig.unsigned or fig.bad_signature:
        failures.append(f"unsigned {fig.unsigned}, bad signatures {fig.bad_signature}")
    if any(code != 0 for code in codes):
        failures.append(f"graceful stop exit codes {codes}")
    return failures


def write_artifacts(
    artifacts: Path,
    summary: dict[str, Any],
    fig: Figures,
    final: Snapshot,
    hits: list[Hit],
    planned: list[Planned],
    logs: dict[str, Path],
    fleet: Fleet,
    outage: tuple[float, float],
) -> None:
    """The summary, every request, and the evidence for each problem delivery."""
    (artifacts / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    with (artifacts / "requests.jsonl").open("w") as out:
        for h in hits:
            out.write(json.dumps(asdict(h)) + "\n")
    timeline = {
        "kills": [(iso(t), f"daemon{n}") for t, n in fleet.kills],
        "redis_stopped_at": iso(outage[0]),
        "redis_down_seconds": round(outage[1], 3),
    }
    (artifacts / "timeline.json").write_text(json.dumps(timeline, indent=2))
    problems: dict[str, list[str]] = {
        "lost": fig.lost,
        "lost_during_run": list(fig.lost_during_run),
        "stuck": fig.stuck,
        "answered_2xx_but_failed": fig.ok_then_failed,
        "success_without_2xx": fig.success_without_ok,
        "duplicates": fig.duplicates,
    }
    per = hits_by_delivery(hits, planned)
    by_id = {p.delivery_id: p for p in planned}
    report_: dict[str, list[dict[str, Any]]] = {
        name: [evidence(i, final, per[i], by_id, logs, fleet.kills) for i in found]
        for name, found in problems.items()
    }
    (artifacts / "evidence.json").write_text(json.dumps(report_, indent=2, default=str))
    for name, items in report_.items():
        for item in items[:EVIDENCE_SHOWN]:
            print(f"\n---- {name}: {item['delivery_id']} ----")
            print(json.dumps(item, indent=1, default=str))
    print(f"\nkills (wall clock, daemon): {timeline['kills']}")
    print(f"redis stopped at {timeline['redis_stopped_at']} for {outage[1]:.2f}s (wall clock)")
    print(f"artifacts: {artifacts}")
