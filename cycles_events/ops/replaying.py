"""Replay writing: one new PENDING delivery per selected source, paced and interruptible."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.models import JsonObject, dumps, format_instant
from cycles_events.ops.common import REPLAY_FIELD, now_ms
from cycles_events.ops.selection import Source
from cycles_events.opsutil import Pace


def new_delivery_id() -> str:
    """A fresh producer-style delivery id: del_<16 hex>."""
    return "del_" + secrets.token_hex(8)


def replay_record(source: Source, delivery_id: str, created_ms: int) -> JsonObject:
    """The new PENDING delivery of a replay, as the admin server writes it (plus replay_of)."""
    doc: JsonObject = {
        "delivery_id": delivery_id,
        "subscription_id": source.subscription_id,
        "event_id": source.event_id,
        "event_type": source.event_type,
        "status": "PENDING",
        "attempted_at": format_instant(created_ms),
        "attempts": 0,
    }
    if source.trace_id:
        doc["trace_id"] = source.trace_id
    doc[REPLAY_FIELD] = source.delivery_id
    return doc


@dataclass(slots=True)
class ReplayResult:
    """What a replay run changed: (source id, new id) pairs, and why it stopped early if it did."""

    replayed: list[tuple[str, str]] = field(default_factory=list)
    in_doubt: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    error: str | None = None


async def replay(
    redis: Redis,
    sources: Sequence[Source],
    *,
    ttl_s: int,
    rate: float | None = None,
    pace: Pace | None = None,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[int], None] | None = None,
    clock: Callable[[], int] = now_ms,
) -> ReplayResult:
    """Create one new PENDING delivery per source, in order, in pipelined batches, paced."""
    script = redis.register_script(keys.REPLAY_DELIVERY)
    if pace is None and rate is not None:
        pace = Pace(rate)
    result = ReplayResult()
    started = time.monotonic()
    start = 0
    while start < len(sources):
        if stop is not None and stop.is_set():
            result.interrupted = True
            break
        # about a tenth of a second of writes per batch, at the rate the schedule is at now
        batch_size = 100
        if pace is not None:
            batch_size = max(1, min(100, int(pace.rate_at(time.monotonic() - started) / 10)))
        batch = sources[start : start + batch_size]
        planned: list[tuple[str, str]] = []
        # the context resets the pipeline whatever happens, so a dead connection is closed
        # here and not reported by the garbage collector as an unclosed pipeline
        async with redis.pipeline(transaction=False) as pipe:
            for src in batch:
                new_id = new_delivery_id()
                created = clock()
                record = replay_record(src, new_id, created)
                await script(
                    keys=[
                        keys.delivery(new_id),
                        keys.deliveries(src.subscription_id),
                        keys.PENDING,
                    ],
                    args=[dumps(record), ttl_s, created, new_id],
                    client=pipe,
                )
                planned.append((src.delivery_id, new_id))
            try:
                written = await pipe.execute()
            except asyncio.CancelledError:
                result.in_doubt.extend(planned)
                result.interrupted = True
                break
            except Exception as exc:
                result.in_doubt.extend(planned)
                result.error = f"{type(exc).__name__}: {exc}"
                break
        result.replayed.extend(p for p, ok in zip(planned, written, strict=True) if int(ok) == 1)
        if on_progress is not None:
            on_progress(len(result.replayed))
        start += len(batch)
        if pace is not None:
            delay = started + pace.time_for(start) - time.monotonic()
            if delay > 0:
                if stop is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
    return result
