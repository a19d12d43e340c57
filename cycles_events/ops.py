"""Operator operations on the shared Redis: inspection, replay, quarantine, re-enabling."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.lifecycle import SOURCE
from cycles_events.models import (
    JsonObject,
    RecordError,
    dumps,
    format_instant,
    integer,
    loads_object,
    parse_instant_ms,
    text,
)
from cycles_events.opsutil import failure_reason, mask_headers
from cycles_events.store import Store
from cycles_events.urlguard import redact_url

CHUNK = 500
MAX_CAS_ROUNDS = 20
DELIVERY_STATUSES = ("PENDING", "RETRYING", "SUCCESS", "FAILED")
REPLAY_FIELD = "replay_of"


class OpsError(Exception):
    """An operation cannot be done; the message is one line for the operator, with no secret."""


def now_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return int(time.time() * 1000)


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _load(raw: Any) -> JsonObject | None:
    if raw is None:
        return None
    try:
        return loads_object(raw)
    except RecordError:
        return None


# --- stats -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stats:
    """Queue depths for `cycles-events stats`."""

    pending: int
    retry: int
    retry_due: int
    retry_due_next_minute: int
    processing: int
    quarantine: int
    oldest_pending_age_s: float | None

    def as_json(self) -> JsonObject:
        """The JSON form (stable field names for scripts)."""
        return {
            "pending": self.pending,
            "retry": self.retry,
            "retry_due": self.retry_due,
            "retry_due_next_minute": self.retry_due_next_minute,
            "processing": self.processing,
            "quarantine": self.quarantine,
            "oldest_pending_age_s": self.oldest_pending_age_s,
        }


async def stats(redis: Redis, at_ms: int) -> Stats:
    """Depths of dispatch:pending, :retry (due now / within a minute), :processing and :failed."""
    depths = await Store(redis).depths(at_ms)
    soon = int(await redis.zcount(keys.RETRY, f"({at_ms}", at_ms + 60_000))
    return Stats(
        pending=depths.pending,
        retry=depths.retry,
        retry_due=depths.retry_due,
        retry_due_next_minute=soon,
        processing=depths.processing,
        quarantine=depths.failed,
        oldest_pending_age_s=depths.oldest_pending_age_s,
    )


# --- deliveries --------------------------------------------------------------------------------


def subscription_summary(sub: JsonObject, secret: bytes | None) -> JsonObject:
    """What an operator needs of a subscription; header values and the secret are masked."""
    out: JsonObject = {}
    for name in (
        "subscription_id",
        "tenant_id",
        "name",
        "status",
        "event_types",
        "event_categories",
        "consecutive_failures",
        "disable_after_failures",
        "retry_policy",
        "created_at",
        "updated_at",
        "last_success_at",
        "last_failure_at",
    ):
        if name in sub:
            out[name] = sub[name]
    url = sub.get("url")
    out["url"] = redact_url(url) if isinstance(url, str) else None
    if "headers" in sub:
        out["headers"] = mask_headers(sub.get("headers"))
    if secret is None:
        out["secret"] = "none"
    else:
        out["secret"] = "set (encrypted)" if secret.startswith(b"enc:") else "set (plaintext)"
    return out


def event_summary(event: JsonObject) -> JsonObject:
    """An event's identifying fields (its data is left out)."""
    out: JsonObject = {}
    for name in (
        "event_id",
        "event_type",
        "category",
        "tenant_id",
        "timestamp",
        "source",
        "scope",
        "correlation_id",
        "request_id",
        "trace_id",
    ):
        if name in event:
            out[name] = event[name]
    actor = event.get("actor")
    if isinstance(actor, dict) and "type" in actor:
        out["actor_type"] = actor["type"]
    return out


async def show_delivery(redis: Redis, delivery_id: str) -> JsonObject:
    """A delivery with its failure reason, queue position, event and subscription summaries."""
    raw = await redis.get(keys.delivery(delivery_id))
    if raw is None:
        raise OpsError(f"delivery {delivery_id} not found")
    doc = _load(raw)
    if doc is None:
        raise OpsError(f"delivery {delivery_id} is not a valid JSON record")
    sub_id = text(doc, "subscription_id") or ""
    event_id = text(doc, "event_id") or ""
    pipe = redis.pipeline(transaction=False)
    pipe.get(keys.event(event_id))
    pipe.get(keys.subscription(sub_id))
    pipe.get(keys.secret(sub_id))
    pipe.zscore(keys.RETRY, delivery_id)
    pipe.lpos(keys.PENDING, delivery_id)
    pipe.lpos(keys.PROCESSING, delivery_id)
    pipe.pttl(keys.delivery(delivery_id))
    ev_raw, sub_raw, secret, retry_at, in_pending, in_processing, pttl = await pipe.execute()
    queue: JsonObject | None = None
    if in_processing is not None:
        queue = {"queue": keys.PROCESSING}
    elif in_pending is not None:
        queue = {"queue": keys.PENDING}
    elif retry_at is not None:
        queue = {"queue": keys.RETRY, "due_at": format_instant(int(float(retry_at)))}
    report: JsonObject = {
        "delivery": doc,
        "failure_reason": failure_reason(doc.get("error_message"))
        if doc.get("status") in ("FAILED", "RETRYING")
        else None,
        "queue": queue,
        "expires_in_s": int(pttl) // 1000 if int(pttl) >= 0 else None,
    }
    event = _load(ev_raw)
    report["event"] = event_summary(event) if event is not None else None
    sub = _load(sub_raw)
    report["subscription"] = subscription_summary(sub, secret) if sub is not None else None
    return report


async def _index(
    redis: Redis,
    subscription_id: str,
    since_ms: int | None,
    until_ms: int | None,
    *,
    newest_first: bool = False,
) -> AsyncIterator[list[tuple[str, int, bytes | None]]]:
    """Chunks of (id, created ms, record) from deliveries:{sub} within [since, until]."""
    low: Any = since_ms if since_ms is not None else "-inf"
    high: Any = until_ms if until_ms is not None else "+inf"
    offset = 0
    name = keys.deliveries(subscription_id)
    while True:
        page: Any
        if newest_first:
            page = await redis.zrevrangebyscore(
                name, high, low, start=offset, num=CHUNK, withscores=True
            )
        else:
            page = await redis.zrangebyscore(
                name, low, high, start=offset, num=CHUNK, withscores=True
            )
        if not page:
            return
        offset += len(page)
        ids = [_s(member) for member, _ in page]
        raws: list[Any] = await redis.mget([keys.delivery(i) for i in ids])
        yield [(i, int(score), raw) for i, (_, score), raw in zip(ids, page, raws, strict=True)]
        if len(page) < CHUNK:
            return


async def _require_subscription(redis: Redis, subscription_id: str) -> JsonObject:
    raw = await redis.get(keys.subscription(subscription_id))
    if raw is None:
        if await redis.exists(keys.deliveries(subscription_id)):
            return {}
        raise OpsError(f"subscription {subscription_id} not found")
    doc = _load(raw)
    if doc is None:
        raise OpsError(f"subscription {subscription_id} is not a valid JSON record")
    return doc


@dataclass(slots=True)
class Listing:
    """The result of `deliveries list`."""

    deliveries: list[JsonObject]
    expired: int = 0
    scanned: int = 0


async def list_deliveries(
    redis: Redis,
    subscription_id: str,
    *,
    statuses: Sequence[str] = (),
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int = 50,
) -> Listing:
    """A subscription's deliveries, newest first, filtered by status and creation time."""
    await _require_subscription(redis, subscription_id)
    out = Listing([])
    wanted = set(statuses)
    async for chunk in _index(redis, subscription_id, since_ms, until_ms, newest_first=True):
        for _, _, raw in chunk:
            out.scanned += 1
            doc = _load(raw)
            if doc is None:
                out.expired += raw is None
                continue
            if wanted and doc.get("status") not in wanted:
                continue
            out.deliveries.append(doc)
            if len(out.deliveries) >= limit:
                return out
    return out


# --- replay ------------------------------------------------------------------------------------


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

    def matches(self, doc: JsonObject) -> bool:
        """Whether a delivery record passes every filter."""
        if self.statuses and doc.get("status") not in self.statuses:
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


async def _check_active(redis: Redis, subscription_ids: Sequence[str]) -> None:
    names = list(dict.fromkeys(subscription_ids))
    if not names:
        return
    raws = await redis.mget([keys.subscription(s) for s in names])
    for sub_id, raw in zip(names, raws, strict=True):
        if raw is None:
            raise OpsError(f"subscription {sub_id} not found: nothing replayed")
        doc = _load(raw)
        status = doc.get("status") if doc is not None else "(unreadable record)"
        if status != "ACTIVE":
            raise OpsError(
                f"subscription {sub_id} is {status}, not ACTIVE: nothing replayed "
                f"(re-enable it first: cycles-events subscriptions enable {sub_id})"
            )


async def _replayed_sources(
    redis: Redis, subscription_id: str, since_ms: int, wanted: set[str]
) -> dict[str, str]:
    """Source id -> id of an existing replay, among deliveries created since `since_ms`."""
    found: dict[str, str] = {}
    async for chunk in _index(redis, subscription_id, since_ms, None):
        for delivery_id, _, raw in chunk:
            doc = _load(raw)
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
                event = _load(raw) or {}
                c = Source(
                    c.delivery_id,
                    c.subscription_id,
                    c.event_id,
                    text(event, "event_type") or "",
                    c.trace_id,
                    c.created_ms,
                )
            sel.sources.append(c)


async def select_by_ids(redis: Redis, delivery_ids: Sequence[str], *, again: bool) -> Selection:
    """Validate explicit delivery ids for replay; any unknown id fails the whole command."""
    ids = list(dict.fromkeys(delivery_ids))
    raws = await redis.mget([keys.delivery(i) for i in ids])
    candidates: list[Source] = []
    for delivery_id, raw in zip(ids, raws, strict=True):
        if raw is None:
            raise OpsError(f"delivery {delivery_id} not found: nothing replayed")
        doc = _load(raw)
        if doc is None or text(doc, "subscription_id") is None or text(doc, "event_id") is None:
            raise OpsError(f"delivery {delivery_id} is not a valid record: nothing replayed")
        candidates.append(_source(delivery_id, doc, None))
    await _check_active(redis, [c.subscription_id for c in candidates])
    sel = Selection(matched=len(candidates), scanned=len(candidates))
    await _finish_selection(redis, sel, candidates, again=again, explicit=True)
    return sel


async def select_by_subscription(
    redis: Redis,
    subscription_id: str,
    flt: ReplayFilter,
    *,
    again: bool = False,
) -> Selection:
    """The deliveries of a subscription matching `flt`, oldest first, not yet replayed."""
    await _check_active(redis, [subscription_id])
    sel = Selection()
    candidates: list[Source] = []
    until = flt.until_ms if flt.until_ms is not None else now_ms()  # not what arrives meanwhile
    async for chunk in _index(redis, subscription_id, flt.since_ms, until):
        for delivery_id, created, raw in chunk:
            sel.scanned += 1
            doc = _load(raw)
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
    stop: asyncio.Event | None = None,
    on_progress: Callable[[int], None] | None = None,
    clock: Callable[[], int] = now_ms,
) -> ReplayResult:
    """Create one new PENDING delivery per source, in small pipelined batches, paced by `rate`."""
    script = redis.register_script(keys.REPLAY_DELIVERY)
    batch_size = 100 if rate is None else max(1, min(100, int(rate / 10)))
    result = ReplayResult()
    started = time.monotonic()
    for start in range(0, len(sources), batch_size):
        if stop is not None and stop.is_set():
            result.interrupted = True
            break
        batch = sources[start : start + batch_size]
        pipe = redis.pipeline(transaction=False)
        planned: list[tuple[str, str]] = []
        for src in batch:
            new_id = new_delivery_id()
            created = clock()
            record = replay_record(src, new_id, created)
            await script(
                keys=[keys.delivery(new_id), keys.deliveries(src.subscription_id), keys.PENDING],
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
        if rate is not None:
            delay = started + (start + len(batch)) / rate - time.monotonic()
            if delay > 0:
                if stop is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
    return result


# --- quarantine --------------------------------------------------------------------------------


async def quarantine_list(redis: Redis, limit: int) -> tuple[int, list[JsonObject]]:
    """The total length of dispatch:failed and its newest `limit` entries (parsed when valid)."""
    pipe = redis.pipeline(transaction=False)
    pipe.llen(keys.FAILED)
    pipe.lrange(keys.FAILED, 0, max(0, limit - 1))
    total, raws = await pipe.execute()
    entries: list[JsonObject] = []
    for index, raw in enumerate(raws if limit > 0 else []):
        doc = _load(raw)
        if doc is None:
            doc = {"delivery_id": None, "reason": "unreadable_entry", "payload": _s(raw)}
        entries.append({"index": index, **doc})
    return int(total), entries


async def quarantine_take(redis: Redis, delivery_id: str, *, requeue: bool) -> int:
    """Remove a delivery's quarantine entries (and requeue its id) atomically; count removed."""
    script = redis.register_script(keys.QUARANTINE_TAKE)
    removed = int(
        await script(keys=[keys.FAILED, keys.PENDING], args=[delivery_id, "1" if requeue else "0"])
    )
    if removed == 0:
        raise OpsError(f"delivery {delivery_id} is not in quarantine ({keys.FAILED})")
    return removed


# --- subscriptions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enabled:
    """The outcome of `subscriptions enable`."""

    subscription_id: str
    previous_status: str
    previous_failures: int
    changed: bool
    event_id: str | None


def resumed_event(sub: JsonObject, subscription_id: str, previous: str, at_ms: int) -> JsonObject:
    """The webhook.resumed event an admin PATCH to ACTIVE saves."""
    tenant = text(sub, "tenant_id") or "__system__"
    return {
        "event_id": "evt_" + secrets.token_hex(8),
        "event_type": "webhook.resumed",
        "category": "webhook",
        "timestamp": format_instant(at_ms),
        "tenant_id": tenant,
        "actor": {"type": "admin"},
        "source": SOURCE,
        "data": {
            "subscription_id": subscription_id,
            "tenant_id": tenant,
            "previous_status": previous,
            "new_status": "ACTIVE",
            "changed_fields": ["status"],
        },
    }


async def enable_subscription(
    redis: Redis, subscription_id: str, *, event_ttl_s: int, clock: Callable[[], int] = now_ms
) -> Enabled:
    """Set status ACTIVE and reset consecutive_failures (compare-and-set), then save the event."""
    store = Store(redis)
    raw = await store.get_subscription(subscription_id)
    for _ in range(MAX_CAS_ROUNDS):
        if raw is None:
            raise OpsError(f"subscription {subscription_id} not found")
        expected = raw.decode("utf-8", "replace")
        doc = _load(expected)
        if doc is None:
            raise OpsError(f"subscription {subscription_id} is not a valid JSON record")
        previous = str(doc.get("status"))
        failures = integer(doc, "consecutive_failures", 0)
        if previous == "ACTIVE" and failures == 0:
            return Enabled(subscription_id, previous, failures, False, None)
        at = clock()
        doc["status"] = "ACTIVE"
        doc["consecutive_failures"] = 0
        doc["updated_at"] = format_instant(at)
        status, current = await store.cas_subscription(subscription_id, expected, dumps(doc))
        if status == "ok":
            event_id: str | None = None
            if previous != "ACTIVE":
                event = resumed_event(doc, subscription_id, previous, at)
                await store.save_event(event, event_ttl_s)
                event_id = str(event["event_id"])
            return Enabled(subscription_id, previous, failures, True, event_id)
        raw = current
    raise OpsError(f"subscription {subscription_id} kept changing; nothing written, try again")
