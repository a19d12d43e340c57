"""Chaos test helpers: run parameters, a recording receiver with misbehaving paths, the pusher,
and the analysis of what the receiver saw against what Redis recorded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cycles_events.signing import verify
from tests.support import Admin, Behaviour, Receiver, hex16

FINAL = frozenset({"SUCCESS", "FAILED"})
QUEUES = ("dispatch:pending", "dispatch:processing", "dispatch:retry")
KINDS = ("fast", "fast", "slow", "flaky", "throttle", "reset", "hang", "mixed")


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@dataclass(frozen=True)
class Params:
    """The run's knobs; each has an env override (CHAOS_SECONDS=600 make chaos)."""

    seconds: float = env_float("CHAOS_SECONDS", 75)  # length of the chaos phase
    rate: float = env_float("CHAOS_RATE", 30)  # deliveries pushed per second
    daemons: int = int(env_float("CHAOS_DAEMONS", 3))
    kill_every: float = env_float("CHAOS_KILL_EVERY", 5)  # mean seconds between SIGKILLs
    restart_after: float = env_float("CHAOS_RESTART_AFTER", 1.0)  # mean seconds down
    redis_down: float = env_float("CHAOS_REDIS_DOWN", 6)  # > the recovery idle (4 s)
    redis_down_at: float = env_float("CHAOS_REDIS_DOWN_AT", 0.4)  # fraction of the run
    settle_timeout: float = env_float("CHAOS_SETTLE_TIMEOUT", 180)
    http_timeout: float = env_float("CHAOS_HTTP_TIMEOUT", 3)
    dup_goal: float = env_float("CHAOS_DUP_GOAL", 0.005)
    seed: int = int(env_float("CHAOS_SEED", random.SystemRandom().randrange(1 << 30)))
    artifacts: str = os.environ.get("CHAOS_ARTIFACTS", "")


@dataclass
class Hit:
    """One request the receiver got, and what it answered."""

    path: str
    kind: str
    event_id: str
    signature: str | None
    signed_ok: bool
    started: float  # wall clock, to compare with the daemons' log times
    nth: int = 1  # the how-many-th request for this event id (the receiver's attempt count)
    ended: float | None = None
    answer: str = "unfinished"  # "200", "503", "reset", "hang", "gone" (client left first)

    @property
    def ok(self) -> bool:
        return self.answer.startswith("2")


@dataclass
class Sub:
    sub_id: str
    kind: str
    path: str
    secret: str
    max_retries: int


class ChaosReceiver:
    """Paths `/<kind>/<n>` on one `Receiver`; every request is kept as a `Hit`."""

    def __init__(self, receiver: Receiver, rng: random.Random, hang_s: float) -> None:
        self.receiver = receiver
        self.rng = rng
        self.hang_s = hang_s
        self.hits: list[Hit] = []
        self.seen: Counter[str] = Counter()
        self.secrets: dict[str, str] = {}

    def add(self, path: str, kind: str, secret: str) -> None:
        self.secrets[path] = secret
        self.receiver.behaviours[path] = self._behaviour(path, kind)

    def _behaviour(self, path: str, kind: str) -> Behaviour:
        async def respond(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            sig = request.headers.get("X-Cycles-Signature")
            event_id = request.headers.get("X-Cycles-Event-Id", "")
            self.seen[event_id] += 1
            hit = Hit(
                path,
                kind,
                event_id,
                sig,
                sig is not None and verify(self.secrets[path], body, sig),
                time.time(),
                self.seen[event_id],
            )
            self.hits.append(hit)
            answer = await self._act(kind, request)
            hit.ended = time.time()
            if isinstance(answer, str):
                hit.answer = answer
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=200)  # never reaches the client
            if request.transport is None or request.transport.is_closing():
                hit.answer = "gone"  # the sender died or gave up while we worked
            else:
                hit.answer = str(answer.status)
            return answer

        return respond

    async def _act(self, kind: str, request: web.Request) -> web.Response | str:
        roll = self.rng.random()
        if kind == "mixed":
            kind = self.rng.choice(["fast", "slow", "flaky", "throttle", "reset", "hang"])
            roll = self.rng.random() * 0.5  # an unhealthy receiver misbehaves more often
        if kind == "slow":
            await asyncio.sleep(self.rng.uniform(0.2, 0.8))
        elif kind == "flaky" and roll < 0.3:
            return web.Response(status=self.rng.choice([500, 503]))
        elif kind == "throttle" and roll < 0.3:
            return web.Response(status=429, headers={"Retry-After": "1"})
        elif kind == "reset" and roll < 0.2:
            return "reset"
        elif kind == "hang" and roll < 0.1:
            await asyncio.sleep(self.hang_s)
            return "hang"
        return web.Response(status=200, text="ok")


@dataclass
class Planned:
    delivery_id: str
    event_id: str
    sub: Sub


def plan(subs: list[Sub], total: int, rng: random.Random) -> list[Planned]:
    """Every delivery the run will push, with its ids fixed in advance."""
    return [Planned(f"del_{hex16()}", f"evt_{hex16()}", rng.choice(subs)) for _ in range(total)]


@dataclass
class Pusher:
    """Pushes the planned deliveries at a steady rate; a push that fails is retried until it
    lands (the producer script is idempotent on the delivery id, so each lands once)."""

    admin: Admin
    planned: list[Planned]
    rate: float
    retries: int = 0
    pushed: int = 0
    max_lag_s: float = 0.0

    async def run(self) -> None:
        start = time.monotonic()
        for i, item in enumerate(self.planned):
            due = start + i / self.rate
            lag = time.monotonic() - due
            if lag < 0:
                await asyncio.sleep(-lag)
            self.max_lag_s = max(self.max_lag_s, lag)
            await self._push(item)
            self.pushed += 1

    async def _push(self, item: Planned) -> None:
        while True:
            try:
                event = await self.admin.event(event_id=item.event_id)
                await self.admin.delivery(item.sub.sub_id, event, delivery_id=item.delivery_id)
                return
            except (RedisError, OSError):
                self.retries += 1
                await asyncio.sleep(0.2)


async def retrying(call: Callable[[], Awaitable[Any]], timeout: float = 60) -> Any:
    """`call()` again until Redis answers (used for reads right after an outage)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except (RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@dataclass
class Snapshot:
    """Every planned record and the three queues, read in one MULTI/EXEC."""

    records: dict[str, dict[str, Any] | None]
    queued: dict[str, set[str]]

    @classmethod
    async def take(cls, redis: Redis, ids: list[str]) -> Snapshot:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.mget([f"delivery:{i}" for i in ids] or ["-"])
            pipe.lrange(QUEUES[0], 0, -1)
            pipe.lrange(QUEUES[1], 0, -1)
            pipe.zrange(QUEUES[2], 0, -1)
            raw, *queues = await pipe.execute()
        records = {
            i: (json.loads(r) if r is not None else None)
            for i, r in zip(ids, raw[: len(ids)], strict=True)
        }
        queued = {name: {m.decode() for m in q} for name, q in zip(QUEUES, queues, strict=True)}
        return cls(records, queued)

    def status(self, delivery_id: str) -> str:
        doc = self.records.get(delivery_id)
        return "MISSING" if doc is None else str(doc.get("status"))

    def not_final(self) -> list[str]:
        return [i for i in self.records if self.status(i) not in FINAL]

    def lost(self) -> list[str]:
        anywhere = set().union(*self.queued.values())
        return [i for i in self.not_final() if i not in anywhere]

    def queue_sizes(self) -> dict[str, int]:
        return {name: len(members) for name, members in self.queued.items()}

    def where(self, delivery_id: str) -> list[str]:
        return [name for name, members in self.queued.items() if delivery_id in members]


@dataclass
class LostWatch:
    """Samples, while the run goes on, deliveries that are neither final nor queued (one
    MULTI/EXEC each, so a move between queues is never seen half done)."""

    redis: Redis
    planned: list[Planned]
    pusher: Pusher
    samples: int = 0
    seen: dict[str, Any] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event, every_s: float = 1.0) -> None:
        while not stop.is_set():
            landed = [p.delivery_id for p in self.planned[: self.pusher.pushed]]
            try:
                snap = await Snapshot.take(self.redis, landed)
            except (RedisError, OSError):
                pass  # Redis is down: nothing to see
            else:
                self.samples += 1
                for i in snap.lost():
                    self.seen.setdefault(i, {"at": iso(time.time()), "record": snap.records[i]})
            await sleep_or_stop(stop, every_s)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


@dataclass
class Figures:
    """What the run's pass criteria are computed from."""

    deliveries: int
    requests: int
    stray_requests: int
    lost: list[str]
    stuck: list[str]
    unsigned: int
    bad_signature: int
    answers: Counter[str]
    lost_during_run: dict[str, Any] = field(default_factory=dict)  # id -> what was seen
    dup_ok: int = 0  # 2xx answers after the first one
    dup_after_success: int = 0  # other requests that started after a 2xx answer
    dup_count: int = 0
    duplicates: list[str] = field(default_factory=list)  # deliveries with a duplicate send
    ok_then_failed: list[str] = field(default_factory=list)
    success_without_ok: list[str] = field(default_factory=list)
    attempts_recorded: int = 0
    req_vs_attempts: Counter[str] = field(default_factory=Counter)
    failed_by_error: Counter[str] = field(default_factory=Counter)

    @property
    def dup_rate(self) -> float:
        return self.dup_count / max(1, self.deliveries)


def hits_by_delivery(hits: list[Hit], planned: list[Planned]) -> dict[str, list[Hit]]:
    by_event = {p.event_id: p.delivery_id for p in planned}
    out: dict[str, list[Hit]] = {p.delivery_id: [] for p in planned}
    for hit in hits:
        if hit.event_id in by_event:
            out[by_event[hit.event_id]].append(hit)
    return out


def duplicate_hits(hits: list[Hit]) -> tuple[int, int]:
    """(later 2xx answers, other requests started after the first 2xx answer) of one delivery."""
    oks = sorted((h for h in hits if h.ok), key=lambda h: h.ended or h.started)
    if not oks:
        return 0, 0
    first_end = oks[0].ended or oks[0].started
    later = [h for h in hits if not h.ok and h.started > first_end]
    return len(oks) - 1, len(later)


def analyse(snap: Snapshot, hits: list[Hit], planned: list[Planned], stuck: list[str]) -> Figures:
    per = hits_by_delivery(hits, planned)
    fig = Figures(
        deliveries=len(planned),
        requests=len(hits),
        stray_requests=len(hits) - sum(len(v) for v in per.values()),
        lost=snap.lost(),
        stuck=stuck,
        unsigned=sum(1 for h in hits if h.signature is None),
        bad_signature=sum(1 for h in hits if h.signature is not None and not h.signed_ok),
        answers=Counter(h.answer for h in hits),
    )
    for delivery_id, dhits in per.items():
        doc = snap.records.get(delivery_id) or {}
        attempts = int(doc.get("attempts") or 0)
        fig.attempts_recorded += attempts
        diff = len(dhits) - attempts
        fig.req_vs_attempts["requests == attempts" if diff == 0 else f"{diff:+d}"] += 1
        oks, later = duplicate_hits(dhits)
        fig.dup_ok += oks
        fig.dup_after_success += later
        if oks + later:
            fig.duplicates.append(delivery_id)
            fig.dup_count += oks + later
        got_ok = any(h.ok for h in dhits)
        if doc.get("status") == "FAILED":
            fig.failed_by_error[str(doc.get("error_message"))] += 1
            if got_ok:
                fig.ok_then_failed.append(delivery_id)
        if doc.get("status") == "SUCCESS" and not got_ok:
            fig.success_without_ok.append(delivery_id)
    return fig


def artifacts_dir(given: str) -> Path:
    """Where a run keeps its logs, requests and evidence (kept after the run)."""
    path = Path(given or tempfile.mkdtemp(prefix="cycles-chaos-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def evidence(
    delivery_id: str,
    snap: Snapshot,
    hits: list[Hit],
    planned: dict[str, Planned],
    logs: dict[str, Path],
    kills: list[tuple[float, int]],
) -> dict[str, Any]:
    """Everything known about one delivery: record, queues, requests and daemon log lines."""
    item = planned[delivery_id]
    lines: list[str] = []
    first = min((h.started for h in hits), default=0.0)
    last = max((h.ended or h.started for h in hits), default=0.0)
    for name, path in logs.items():
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if delivery_id in line or item.event_id in line:
                    lines.append(f"{name}: {line}")
    return {
        "delivery_id": delivery_id,
        "event_id": item.event_id,
        "subscription": asdict(item.sub) | {"secret": "(redacted)"},
        "record": snap.records.get(delivery_id),
        "queues": snap.where(delivery_id),
        "requests": [
            {**asdict(h), "started": iso(h.started), "ended": iso(h.ended)}
            for h in sorted(hits, key=lambda h: h.started)
        ],
        "kills_meanwhile": [(iso(t), f"daemon{n}") for t, n in kills if first <= t <= last + 1],
        "log_lines": lines,
    }
