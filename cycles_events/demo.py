"""`make demo`: a throwaway Redis, a local receiver and the daemon, fed in the admin's format."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.crypto import encrypt_secret, new_key
from cycles_events.models import dumps, format_instant
from cycles_events.opsutil import Progress, failure_reason, percentile
from cycles_events.signing import verify

TENANT = "acme"
DELIVERY_TTL_S = 14 * 86400
EVENT_TTL_S = 90 * 86400
SECURITY = {"allow_http": True, "blocked_cidr_ranges": ["192.0.2.0/24"], "allowed_url_patterns": []}
EVENT_TYPES = (
    ("budget.threshold_crossed", "budget"),
    ("budget.exhausted", "budget"),
    ("reservation.denied", "reservation"),
    ("budget.debited", "budget"),
    ("tenant.updated", "tenant"),
)
BROKEN_EVERY = 25  # every 25th event also goes to the subscription whose receiver answers 503
METRICS = (
    "cycles_webhook_delivery_attempts_total",
    "cycles_webhook_delivery_success_total",
    "cycles_webhook_delivery_retried_total",
    "cycles_webhook_delivery_failed_total",
    "cycles_webhook_subscription_auto_disabled_total",
)


class DemoError(Exception):
    """The demo cannot go on; the message says why in one line."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook that makes a child get SIGTERM when the demo dies, however it dies.

    The libc function is looked up here, in the parent, so that the hook itself only makes one
    C call between fork and exec (no import, no Python locks). Linux only; None elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return hook


def hex16() -> str:
    """16 lower-case hex characters."""
    return secrets.token_hex(8)


@dataclass
class Processes:
    """Every process and directory the demo started, stopped in reverse order."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a child in its own session (Ctrl-C reaches only the demo, which stops it)."""
        proc = subprocess.Popen(
            argv, start_new_session=True, preexec_fn=_parent_death_signal(), **kwargs
        )
        self.procs.append((name, proc))
        return proc

    def stop_all(self, grace_s: float = 8.0) -> list[str]:
        """SIGTERM each child, SIGKILL it after `grace_s`; remove temp dirs. Returns names."""
        stopped = []
        while self.procs:
            name, proc = self.procs.pop()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            stopped.append(name)
        while self.dirs:
            shutil.rmtree(self.dirs.pop(), ignore_errors=True)
        return stopped


@dataclass
class DemoReceiver:
    """The local webhook receiver: /orders and /alerts answer 200, /down always 503."""

    secrets_by_path: dict[str, str]
    port: int = 0
    runner: web.AppRunner | None = None
    requests: Counter[str] = field(default_factory=Counter)
    first_receipt_ms: dict[tuple[str, str], int] = field(default_factory=dict)
    signatures_ok: int = 0
    signatures_bad: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Record the request, check its signature, answer by path."""
        at = int(time.time() * 1000)
        body = await request.read()
        path = request.path
        self.requests[path] += 1
        event_id = request.headers.get("X-Cycles-Event-Id", "")
        self.first_receipt_ms.setdefault((path, event_id), at)
        secret = self.secrets_by_path.get(path)
        signature = request.headers.get("X-Cycles-Signature", "")
        if secret is not None and verify(secret, body, signature):
            self.signatures_ok += 1
        else:
            self.signatures_bad += 1
        if path == "/down":
            return web.Response(status=503, text="unavailable")
        return web.Response(status=200, text="ok")

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, shutdown_timeout=0.5).start()

    async def stop(self) -> None:
        """Stop listening."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def url(self, path: str) -> str:
        """The receiver URL of `path`."""
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class Sub:
    """A demo subscription."""

    subscription_id: str
    name: str
    path: str
    secret: str
    encrypted: bool
    wants: Callable[[int, str], bool]
    retry_policy: dict[str, Any] | None = None
    disable_after_failures: int = 10


@dataclass
class Options:
    """Command-line options of the demo."""

    events: int
    interactive: bool
    timeout_s: float
    hold: bool
    rate: float


# --- admin-format writes -----------------------------------------------------------------------


async def write_subscription(redis: Redis, sub: Sub, url: str, key: bytes) -> None:
    """A subscription and its secret, as the admin API writes them."""
    doc: dict[str, Any] = {
        "subscription_id": sub.subscription_id,
        "tenant_id": TENANT,
        "name": sub.name,
        "url": url,
        "event_types": [t for t, _ in EVENT_TYPES],
        "headers": {"X-Demo": "cycles-events"},
        "status": "ACTIVE",
        "retry_policy": sub.retry_policy
        or {
            "max_retries": 5,
            "initial_delay_ms": 1000,
            "backoff_multiplier": 2.0,
            "max_delay_ms": 60000,
        },
        "disable_after_failures": sub.disable_after_failures,
        "consecutive_failures": 0,
        "created_at": format_instant(int(time.time() * 1000)),
    }
    stored = encrypt_secret(sub.secret, key) if sub.encrypted else sub.secret
    pipe = redis.pipeline(transaction=True)
    pipe.set(keys.subscription(sub.subscription_id), dumps(doc))
    pipe.set(keys.secret(sub.subscription_id), stored)
    pipe.sadd(f"webhooks:{TENANT}", sub.subscription_id)
    pipe.sadd("webhooks:_all", sub.subscription_id)
    await pipe.execute()


def event_doc(n: int, at_ms: int) -> dict[str, Any]:
    """The n-th demo event, in the producers' shape."""
    event_type, category = EVENT_TYPES[n % len(EVENT_TYPES)]
    request_id = f"req_{hex16()[:8]}"
    return {
        "event_id": f"evt_{hex16()}",
        "event_type": event_type,
        "category": category,
        "timestamp": format_instant(at_ms),
        "tenant_id": TENANT,
        "scope": f"tenant:{TENANT}/workspace:demo",
        "actor": {"type": "api_key", "key_id": "key_demo"},
        "source": "cycles-server",
        "data": {"scope": f"tenant:{TENANT}/workspace:demo", "unit": "USD_MICROCENTS", "n": n},
        "correlation_id": request_id,
        "request_id": request_id,
        "trace_id": secrets.token_hex(16),
    }


async def push_events(
    redis: Redis,
    subs: Sequence[Sub],
    first: int,
    count: int,
    pushed_ms: dict[tuple[str, str], int],
) -> list[str]:
    """Save `count` events and their deliveries the way the producers do; returns delivery ids."""
    producer = redis.register_script(keys.REPLAY_DELIVERY)
    pipe = redis.pipeline(transaction=False)
    created: list[str] = []
    at = int(time.time() * 1000)
    for n in range(first, first + count):
        event = event_doc(n, at)
        event_id = event["event_id"]
        pipe.set(keys.event(event_id), dumps(event), ex=EVENT_TTL_S)
        pipe.zadd(keys.tenant_events(TENANT), {event_id: at})
        pipe.zadd(keys.EVENTS_ALL, {event_id: at})
        pipe.sadd(keys.correlation(event["correlation_id"]), event_id)
        pipe.expire(keys.correlation(event["correlation_id"]), EVENT_TTL_S)
        for sub in subs:
            if not sub.wants(n, event["event_type"]):
                continue
            delivery_id = f"del_{hex16()}"
            record = {
                "delivery_id": delivery_id,
                "subscription_id": sub.subscription_id,
                "event_id": event_id,
                "event_type": event["event_type"],
                "status": "PENDING",
                "attempted_at": format_instant(at),
                "attempts": 0,
                "trace_id": event["trace_id"],
            }
            await producer(
                keys=[
                    keys.delivery(delivery_id),
                    keys.deliveries(sub.subscription_id),
                    keys.PENDING,
                ],
                args=[dumps(record), DELIVERY_TTL_S, at, delivery_id],
                client=pipe,
            )
            created.append(delivery_id)
            pushed_ms[(sub.path, event_id)] = at
    await pipe.execute()
    return created


# --- processes ---------------------------------------------------------------------------------


async def start_redis(procs: Processes, workdir: str) -> tuple[Redis, str]:
    """A throwaway redis-server on a free port; returns a client and its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise DemoError("redis-server not found (Debian: apt-get install redis-server)")
    port = free_port()
    procs.start(
        "redis-server",
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            workdir,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            await client.ping()
            return client, url
        except Exception:  # refused while it starts, or loading
            if time.monotonic() > deadline:
                raise DemoError("redis-server did not start") from None
            await asyncio.sleep(0.05)


def daemon_env(redis_url: str, management_port: int, key_b64: str) -> dict[str, str]:
    """The daemon's environment: ours, without any inherited Redis or dispatch settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("REDIS_", "DISPATCH", "WEBHOOK_", "MANAGEMENT_"))
    }
    env.update(
        REDIS_URL=redis_url,
        MANAGEMENT_PORT=str(management_port),
        MANAGEMENT_ADDRESS="127.0.0.1",
        WEBHOOK_URL_GUARD_ALLOW_PRIVATE_NETWORKS="true",
        WEBHOOK_SECRET_ENCRYPTION_KEY=key_b64,
        DISPATCH_PENDING_TIMEOUT_SECONDS="1",
        SHUTDOWN_GRACE_SECONDS="3",
        LOG_LEVEL="INFO",
    )
    return env


def _tail(log: Path, lines: int = 5) -> str:
    """The last lines of the daemon's log, on one line."""
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def wait_ready(
    http: aiohttp.ClientSession, port: int, daemon: subprocess.Popen[bytes], log: Path
) -> None:
    """Wait until the daemon's readiness is UP."""
    url = f"http://127.0.0.1:{port}/actuator/health/readiness"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise DemoError(f"the daemon exited ({daemon.returncode}): {_tail(log)}")
        with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise DemoError("the daemon did not become ready within 30 s")


async def scrape(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """Totals of the demo's metrics from /actuator/prometheus (summed over labels)."""
    url = f"http://127.0.0.1:{port}/actuator/prometheus"
    totals: dict[str, float] = dict.fromkeys(METRICS, 0.0)
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as resp:
            body = await resp.text()
    except (TimeoutError, aiohttp.ClientError, OSError):
        return {}
    for line in body.splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) in totals:
            with contextlib.suppress(ValueError):
                totals[m.group(1)] += float(m.group(2))
    return totals


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the demo observed."""

    records: list[dict[str, Any]]
    elapsed_s: float
    complete: bool


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


def build_summary(
    *,
    opts: Options,
    subs: Sequence[Sub],
    outcome: Outcome,
    receiver: DemoReceiver,
    pushed_ms: dict[tuple[str, str], int],
    statuses: dict[str, str],
    saved_events: Counter[str],
    metrics: dict[str, float],
    management_port: int,
    redis_url: str,
) -> str:
    """The closing report."""
    records = outcome.records
    by_status = Counter(str(r.get("status")) for r in records)
    failed = [r for r in records if r.get("status") == "FAILED"]
    reasons = Counter(failure_reason(r.get("error_message")) for r in failed)
    retried = [r for r in records if int(r.get("attempts") or 0) > 1]
    retries = sum(max(0, int(r.get("attempts") or 0) - 1) for r in records)
    latencies = [
        float(at - pushed_ms[k])
        for k, at in receiver.first_receipt_ms.items()
        if k in pushed_ms and k[0] != "/down"
    ]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    disabled = [s.name for s in subs if statuses.get(s.subscription_id) == "DISABLED"]
    signed = receiver.signatures_ok + receiver.signatures_bad
    reason_text = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"
    prom = f"http://127.0.0.1:{management_port}/actuator/prometheus"
    lines = [
        "",
        f"== cycles-events demo summary: {opts.events} events, {len(records)} deliveries to "
        f"{len(subs)} subscriptions in {outcome.elapsed_s:.1f} s",
        f"delivered: {by_status['SUCCESS']}  (signatures verified by the receiver: "
        f"{receiver.signatures_ok}/{signed})",
        f"retried:   {len(retried)} deliveries needed more than one attempt "
        f"({retries} retry attempts)",
        f"failed:    {len(failed)}  ({reason_text})",
        f"disabled:  {len(disabled)}  {', '.join(disabled)}".rstrip(),
        "latency push->receipt: "
        + (f"p50 {p50:.0f} ms, p99 {p99:.0f} ms" if p50 is not None and p99 is not None else "-")
        + f" over {len(latencies)} first receipts",
        "events saved by the service: "
        + (", ".join(f"{k} {v}" for k, v in sorted(saved_events.items())) or "none"),
    ]
    if not outcome.complete:
        pending = len(records) - by_status["SUCCESS"] - by_status["FAILED"]
        lines.append(f"INCOMPLETE: {pending} deliveries were not finished after the timeout")
    if metrics:
        lines.append(f"metrics at {prom}:")
        lines.extend(f"  {name} {value:g}" for name, value in metrics.items())
    lines.append(f"where to look: {prom}  (health: /actuator/health)")
    if opts.hold:
        lines.append(f"try: REDIS_URL={redis_url} cycles-events stats")
    else:
        lines.append("run `python -m cycles_events.demo --hold` to keep everything up and look")
    return "\n".join(lines)


async def saved_meta_events(redis: Redis) -> Counter[str]:
    """Event types saved by cycles-events itself (source cycles-events)."""
    members: list[Any] = await redis.zrange(keys.EVENTS_ALL, 0, -1)
    ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
    out: Counter[str] = Counter()
    for start in range(0, len(ids), 500):
        for raw in await redis.mget([keys.event(i) for i in ids[start : start + 500]]):
            doc = json.loads(raw) if raw is not None else {}
            if doc.get("source") == "cycles-events":
                out[str(doc.get("event_type"))] += 1
    return out


def say(message: str) -> None:
    """A progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


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
            say(f"daemon ready; pushing {opts.events} events as the admin server would")
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


async def main_async(opts: Options, procs: Processes) -> int:
    """Run the demo; Ctrl-C or SIGTERM cancels it, and every process is stopped either way."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopping = False

    def on_signal() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    receiver = DemoReceiver({})
    try:
        return await run_demo(opts, procs, receiver)
    except asyncio.CancelledError:
        if not stopping:
            raise
        say("interrupted: stopping the demo")
        return 130
    except DemoError as exc:
        say(f"demo failed: {exc}")
        return 1
    finally:
        await receiver.stop()
        stopped = procs.stop_all()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        say(f"stopped: {', '.join(stopped) or 'nothing'}, local receiver; temp files removed")


def parse_args(argv: Sequence[str] | None) -> Options:
    """Options from the command line and DEMO_* variables."""
    fast = os.environ.get("DEMO_FAST", "").lower() in ("1", "true", "yes")
    parser = argparse.ArgumentParser(
        prog="python -m cycles_events.demo",
        description="Start a throwaway redis-server, a local receiver and the daemon, push "
        "events the way the admin server does and summarise what happened.",
        epilog="example: make demo   (or: python -m cycles_events.demo --no-tty --events 100)",
    )
    parser.add_argument(
        "--events", type=int, default=int(os.environ.get("DEMO_EVENTS", 120 if fast else 300))
    )
    parser.add_argument("--no-tty", action="store_true", help="plain output, no progress bar")
    parser.add_argument("--timeout", type=float, default=25.0, help="seconds to wait for results")
    parser.add_argument("--hold", action="store_true", help="keep everything up until Ctrl-C")
    parser.add_argument("--rate", type=float, default=100.0, help="events pushed per second")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error("--events must be at least 1")
    if not args.rate > 0:
        parser.error("--rate must be positive")
    interactive = not (args.no_tty or fast) and sys.stderr.isatty()
    return Options(args.events, interactive, args.timeout, args.hold, args.rate)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m cycles_events.demo`."""
    opts = parse_args(argv)
    procs = Processes()
    try:
        return asyncio.run(main_async(opts, procs))
    except KeyboardInterrupt:
        return 130
    finally:
        procs.stop_all(grace_s=3.0)


if __name__ == "__main__":
    raise SystemExit(main())
