"""One run of the demo: start everything, push the events, wait for the outcome, report."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.crypto import new_key
from cycles_events.demo.common import Options, free_port, hex16, say
from cycles_events.demo.processes import Processes, daemon_env, start_redis, wait_ready
from cycles_events.demo.receiver import DemoReceiver
from cycles_events.demo.records import EVENT_TYPES, SECURITY, Sub, push_events, write_subscription
from cycles_events.demo.summary import Outcome, build_summary, saved_meta_events, scrape
from cycles_events.models import dumps
from cycles_events.opsutil import Progress

BROKEN_EVERY = 25  # every 25th event also goes to the subscription whose receiver answers 503


async def pump(
    redis: Redis,
    subs: Sequence[Sub],
    opts: Options,
    pushed_ms: dict[tuple[str, str], int],
    ids: list[str],
) -> None:
    """Push the events at `opts.rate` per second, in small batches, appending delivery ids."""
    started = time.monotonic()
    batch = 5
    for first in range(0, opts.events, batch):
        delay = started + first / opts.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        ids += await push_events(redis, subs, first, min(batch, opts.events - first), pushed_ms)


async def wait_done(
    redis: Redis,
    ids: list[str],
    pushing: asyncio.Task[None],
    progress: Progress,
    timeout_s: float,
    started: float,
) -> Outcome:
    """Poll the delivery records until every one is SUCCESS or FAILED (or time runs out)."""
    deadline: float | None = None
    while True:
        snapshot = list(ids)
        raws = await redis.mget([keys.delivery(i) for i in snapshot]) if snapshot else []
        records = [json.loads(r) if r is not None else {} for r in raws]
        done = sum(1 for r in records if r.get("status") in ("SUCCESS", "FAILED"))
        progress.update(done)
        if pushing.done():
            pushing.result()
            if deadline is None:
                deadline = time.monotonic() + timeout_s
            if done == len(snapshot) or time.monotonic() > deadline:
                progress.update(done, force=True)
                return Outcome(records, time.monotonic() - started, done == len(snapshot))
        await asyncio.sleep(0.1)


async def run_demo(opts: Options, procs: Processes, receiver: DemoReceiver) -> int:
    """Start everything, push the events, wait for the outcome and print the summary."""
    workdir = tempfile.mkdtemp(prefix="cycles-demo-")
    procs.dirs.append(workdir)
    redis, redis_url = await start_redis(procs, workdir)
    key_b64 = new_key()
    key = base64.b64decode(key_b64)
    subs = [
        Sub(
            f"whsub_{hex16()}",
            "orders-plaintext-secret",
            "/orders",
            f"whsec_{secrets.token_urlsafe(24)}",
            False,
            lambda n, t: True,
        ),
        Sub(
            f"whsub_{hex16()}",
            "alerts-encrypted-secret",
            "/alerts",
            f"whsec_{secrets.token_urlsafe(24)}",
            True,
            lambda n, t: t.startswith("budget."),
        ),
        Sub(
            f"whsub_{hex16()}",
            "broken-receiver-503",
            "/down",
            f"whsec_{secrets.token_urlsafe(24)}",
            False,
            lambda n, t: n % BROKEN_EVERY == 0,
            retry_policy={
                "max_retries": 2,
                "initial_delay_ms": 200,
                "backoff_multiplier": 2.0,
                "max_delay_ms": 1000,
            },
            disable_after_failures=3,
        ),
    ]
    receiver.secrets_by_path = {s.path: s.secret for s in subs}
    await receiver.start()
    try:
        await redis.set(keys.SECURITY_CONFIG, dumps(SECURITY))
        for sub in subs:
            await write_subscription(redis, sub, receiver.url(sub.path), key)
        management_port = free_port()
        log = Path(workdir) / "daemon.log"
        say(
            f"redis-server on {redis_url}, receiver on 127.0.0.1:{receiver.port}; "
            f"starting the daemon (management port {management_port})"
        )
        with log.open("wb") as log_file:
            daemon = procs.start(
                "cycles-events",
                [sys.executable, "-m", "cycles_events.cli", "run"],
                env=daemon_env(redis_url, management_port, key_b64),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, management_port, daemon, log)
            say(
                f"daemon ready (metrics: http://127.0.0.1:{management_port}/actuator/prometheus "
                f"while the demo runs); pushing {opts.events} events as the admin server would"
            )
            pushed_ms: dict[tuple[str, str], int] = {}
            ids: list[str] = []
            expected = sum(
                1
                for n in range(opts.events)
                for sub in subs
                if sub.wants(n, EVENT_TYPES[n % len(EVENT_TYPES)][0])
            )
            progress = Progress(expected, sys.stderr, "deliveries", enabled=opts.interactive)
            started = time.monotonic()
            pushing = asyncio.create_task(pump(redis, subs, opts, pushed_ms, ids))
            try:
                outcome = await wait_done(redis, ids, pushing, progress, opts.timeout_s, started)
            finally:
                pushing.cancel()
                progress.close()
            if not opts.interactive:
                say(f"pushed {len(ids)} deliveries, {len(outcome.records)} followed")
            statuses: dict[str, str] = {}
            for sub in subs:
                doc = json.loads(await redis.get(keys.subscription(sub.subscription_id)) or "{}")
                statuses[sub.subscription_id] = str(doc.get("status", "?"))
            summary = build_summary(
                opts=opts,
                subs=subs,
                outcome=outcome,
                receiver=receiver,
                pushed_ms=pushed_ms,
                statuses=statuses,
                saved_events=await saved_meta_events(redis),
                metrics=await scrape(http, management_port),
                management_port=management_port,
                redis_url=redis_url,
            )
            print(summary, flush=True)
            if opts.hold:
                say("holding: everything stays up until Ctrl-C")
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()
        return 0 if outcome.complete else 1
    finally:
        await redis.aclose()
