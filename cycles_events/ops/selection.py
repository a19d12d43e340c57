"""Replay selection: which deliveries a replay takes, and what it skips and why."""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.models import JsonObject, parse_instant_ms, text
from cycles_events.ops.common import (
    CHUNK,
    REPLAY_FIELD,
    OpsError,
    index_chunks,
    load_record,
    now_ms,
)
from cycles_events.opsutil import failure_reason


@dataclass(frozen=True, slots=True)
class Source:
    """A delivery chosen for replay."""

    delivery_id: str
    subscription_id: str
    event_id: str
    event_type: str
    trace_id: str | None
    created_ms: int


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    """Which deliveries of a subscription a bulk replay takes."""

    statuses: frozenset[str] = frozenset({"FAILED"})
    since_ms: int | None = None
    until_ms: int | None = None
    event_types: tuple[str, ...] = ()
    reasons: frozenset[str] = frozenset()
    ended_since_ms: int | None = None  # completed_at (else attempted_at) at or after

    def matches(self, doc: JsonObject) -> bool:
        """Whether a delivery record passes every filter."""
        if self.statuses and doc.get("status") not in self.statuses:
            return False
        if self.ended_since_ms is not None:
            ended = parse_instant_ms(doc.get("completed_at"))
            if ended is None:
                ended = parse_instant_ms(doc.get("attempted_at"))
            if ended is not None and ended < self.ended_since_ms:
                return False
        if self.event_types:
            event_type = text(doc, "event_type") or ""
            if not any(fnmatch.fnmatchcase(event_type, p) for p in self.event_types):
                return False
        return not self.reasons or failure_reason(doc.get("error_message")) in self.reasons


@dataclass(slots=True)
class Selection:
    """What a replay would do: the sources, what was skipped and why."""

    sources: list[Source] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    already: dict[str, str] = field(default_factory=dict)
    inactive: dict[str, str] = field(default_factory=dict)  # only a dry run gets this far
    matched: int = 0
    scanned: int = 0


def _source(delivery_id: str, doc: JsonObject, created_ms: int | None) -> Source:
    created = created_ms
    if created is None:
        created = parse_instant_ms(doc.get("attempted_at")) or 0
    return Source(
        delivery_id=delivery_id,
        subscription_id=text(doc, "subscription_id") or "",
        event_id=text(doc, "event_id") or "",
        event_type=text(doc, "event_type") or "",
        trace_id=text(doc, "trace_id"),
        created_ms=created,
    )


def inactive_message(subscription_id: str, status: str) -> str:
    """Why a replay to a subscription that is not ACTIVE is refused, and what to do."""
    return (
        f"subscription {subscription_id} is {status}, not ACTIVE: nothing replayed "
        f"(re-enable it first: cycles-events subscriptions enable {subscription_id})"
    )


async def _check_active(
    redis: Redis, subscription_ids: Sequence[str], *, refuse: bool
) -> dict[str, str]:
    """Subscription id -> status of those not ACTIVE; with `refuse`, the first one fails."""
    names = list(dict.fromkeys(subscription_ids))
    if not names:
        return {}
    inactive: dict[str, str] = {}
    raws = await redis.mget([keys.subscription(s) for s in names])
    for sub_id, raw in zip(names, raws, strict=True):
        if raw is None:
            raise OpsError(f"subscription {sub_id} not found: nothing replayed")
        doc = load_record(raw)
        status = str(doc.get("status")) if doc is not None else "(unreadable record)"
        if status != "ACTIVE":
            if refuse:
                raise OpsError(inactive_message(sub_id, status))
            inactive[sub_id] = status
    return inactive


async def _replayed_sources(
    redis: Redis, subscription_id: str, since_ms: int, wanted: set[str]
) -> dict[str, str]:
    """Source id -> id of an existing replay, among deliveries created since `since_ms`."""
    found: dict[str, str] = {}
    async for chunk in index_chunks(redis, subscription_id, since_ms, None):
        for delivery_id, _, raw in chunk:
            doc = load_record(raw)
            origin = text(doc, REPLAY_FIELD) if doc is not None else None
            if origin is not None and origin in wanted and origin not in found:
                found[origin] = delivery_id
    return found


async def _finish_selection(
    redis: Redis, sel: Selection, candidates: list[Source], *, again: bool, explicit: bool
) -> None:
    """Drop candidates already replayed (unless `again`) or whose event is gone."""
    by_sub: dict[str, list[Source]] = {}
    for c in candidates:
        by_sub.setdefault(c.subscription_id, []).append(c)
    if not again:
        for sub_id, group in by_sub.items():
            since = min(c.created_ms for c in group)
            sel.already.update(
                await _replayed_sources(redis, sub_id, since, {c.delivery_id for c in group})
            )
    remaining = [c for c in candidates if again or c.delivery_id not in sel.already]
    if len(remaining) < len(candidates):
        sel.skipped["already_replayed"] += len(candidates) - len(remaining)
    for start in range(0, len(remaining), CHUNK):
        group = remaining[start : start + CHUNK]
        raws = await redis.mget([keys.event(c.event_id) for c in group])
        for c, raw in zip(group, raws, strict=True):
            if raw is None:
                if explicit:
                    raise OpsError(
                        f"event {c.event_id} of delivery {c.delivery_id} no longer exists: "
                        "nothing replayed"
                    )
                sel.skipped["event_missing"] += 1
                continue
            if not c.event_type:
                event = load_record(raw) or {}
                c = Source(
                    c.delivery_id,
                    c.subscription_id,
                    c.event_id,
                    text(event, "event_type") or "",
                    c.trace_id,
                    c.created_ms,
                )
            sel.sources.append(c)


async def _created_ms(redis: Redis, docs: Sequence[tuple[str, JsonObject]]) -> list[int | None]:
    """Each delivery's creation time: its score in deliveries:{sub}, None when not indexed."""
    async with redis.pipeline(transaction=False) as pipe:
        for delivery_id, doc in docs:
            pipe.zscore(keys.deliveries(text(doc, "subscription_id") or ""), delivery_id)
        scores: list[float | None] = await pipe.execute()
    return [None if s is None else int(s) for s in scores]


async def select_by_ids(
    redis: Redis,
    delivery_ids: Sequence[str],
    *,
    again: bool,
    dry_run: bool = False,
    oldest_first: bool = False,
) -> Selection:
    """Explicit ids for replay (one unknown fails all), as given or `oldest_first` by creation."""
    ids = list(dict.fromkeys(delivery_ids))
    raws = await redis.mget([keys.delivery(i) for i in ids])
    docs: list[tuple[str, JsonObject]] = []
    for delivery_id, raw in zip(ids, raws, strict=True):
        if raw is None:
            raise OpsError(f"delivery {delivery_id} not found: nothing replayed")
        doc = load_record(raw)
        if doc is None or text(doc, "subscription_id") is None or text(doc, "event_id") is None:
            raise OpsError(f"delivery {delivery_id} is not a valid record: nothing replayed")
        docs.append((delivery_id, doc))
    created: list[int | None] = [None] * len(docs)
    if oldest_first:
        created = await _created_ms(redis, docs)
    candidates = [_source(i, doc, c) for (i, doc), c in zip(docs, created, strict=True)]
    if oldest_first:
        candidates.sort(key=lambda c: c.created_ms)  # stable: equal times keep the order given
    inactive = await _check_active(
        redis, [c.subscription_id for c in candidates], refuse=not dry_run
    )
    sel = Selection(matched=len(candidates), scanned=len(candidates), inactive=inactive)
    await _finish_selection(redis, sel, candidates, again=again, explicit=True)
    return sel


async def select_by_subscription(
    redis: Redis,
    subscription_id: str,
    flt: ReplayFilter,
    *,
    again: bool = False,
    dry_run: bool = False,
) -> Selection:
    """The deliveries of a subscription matching `flt`, oldest first, not yet replayed."""
    sel = Selection(inactive=await _check_active(redis, [subscription_id], refuse=not dry_run))
    candidates: list[Source] = []
    until = flt.until_ms if flt.until_ms is not None else now_ms()  # not what arrives meanwhile
    async for chunk in index_chunks(redis, subscription_id, flt.since_ms, until):
        for delivery_id, created, raw in chunk:
            sel.scanned += 1
            doc = load_record(raw)
            if doc is None:
                sel.skipped["record_expired" if raw is None else "record_invalid"] += 1
                continue
            if text(doc, "event_id") is None or not flt.matches(doc):
                continue
            candidates.append(_source(delivery_id, doc, created))
    sel.matched = len(candidates)
    await _finish_selection(redis, sel, candidates, again=again, explicit=False)
    return sel


def limit_selection(sel: Selection, limit: int | None) -> None:
    """Keep the first `limit` sources, counting the rest as skipped over_limit."""
    if limit is not None and len(sel.sources) > limit:
        sel.skipped["over_limit"] += len(sel.sources) - limit
        del sel.sources[limit:]
