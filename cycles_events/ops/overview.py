"""`subscriptions list` and `show`: each subscription's state and what its deliveries are doing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.models import JsonObject, format_instant, text
from cycles_events.ops.common import CHUNK, OpsError, decode, index_chunks, load_record
from cycles_events.ops.deliveries import DELIVERY_STATUSES, subscription_summary
from cycles_events.opsutil import delivery_reason
from cycles_events.urlguard import redact_url

SUBSCRIPTION_STATUSES = ("ACTIVE", "PAUSED", "DISABLED")
# The admin's indexes of subscription ids (contract section 1); read here, never written.
ALL_INDEX = "webhooks:_all"
SYSTEM_INDEX = "webhooks:__system__"
# A queue longer than this is not read whole: the answer would cost more than it is worth.
QUEUE_SCAN_MAX = 20_000
BACKLOG = ("PENDING", "RETRYING")
LIST_FIELDS = (
    "tenant_id",
    "name",
    "status",
    "consecutive_failures",
    "disable_after_failures",
    "last_success_at",
    "last_failure_at",
)


def tenant_index(tenant_id: str) -> str:
    """The admin's SET of a tenant's subscription ids."""
    return f"webhooks:{tenant_id}"


@dataclass(slots=True)
class SubscriptionList:
    """The result of `subscriptions list`."""

    rows: list[JsonObject] = field(default_factory=list)
    total: int = 0  # matching the filters; rows holds at most the limit
    missing: int = 0  # indexed ids whose webhook:{id} record is gone


def list_row(subscription_id: str, doc: JsonObject) -> JsonObject:
    """One subscription as `subscriptions list` shows it (the URL redacted)."""
    row: JsonObject = {"subscription_id": subscription_id}
    for name in LIST_FIELDS:
        row[name] = doc.get(name)
    url = doc.get("url")
    row["url"] = redact_url(url) if isinstance(url, str) else None
    return row


async def list_subscriptions(
    redis: Redis,
    *,
    tenant: str | None = None,
    statuses: Sequence[str] = (),
    limit: int = 100,
) -> SubscriptionList:
    """The indexed subscriptions, by tenant then id, filtered by tenant and status."""
    if tenant is not None:
        members: Any = await redis.smembers(tenant_index(tenant))
    else:
        members = await redis.sunion([ALL_INDEX, SYSTEM_INDEX])
    ids = sorted(decode(m) for m in members)
    found: list[tuple[str, str, JsonObject]] = []
    out = SubscriptionList()
    for start in range(0, len(ids), CHUNK):
        group = ids[start : start + CHUNK]
        raws = await redis.mget([keys.subscription(i) for i in group])
        for sub_id, raw in zip(group, raws, strict=True):
            doc = load_record(raw)
            if doc is None:
                out.missing += 1
                continue
            if statuses and doc.get("status") not in statuses:
                continue
            found.append((text(doc, "tenant_id") or "", sub_id, doc))
    found.sort(key=lambda t: (t[0], t[1]))
    out.total = len(found)
    out.rows = [list_row(sub_id, doc) for _, sub_id, doc in found[:limit]]
    return out


@dataclass(slots=True)
class Backlog:
    """What the deliveries created in a window are doing."""

    indexed_total: int = 0
    scanned: int = 0
    expired: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_reason: dict[str, Counter[str]] = field(default_factory=dict)
    last_failure: JsonObject | None = None
    waiting: list[str] = field(default_factory=list)  # PENDING or RETRYING ids

    def add(self, delivery_id: str, created_ms: int, doc: JsonObject) -> None:
        """Count one delivery record."""
        status = str(doc.get("status"))
        self.by_status[status] += 1
        reason = delivery_reason(doc)
        if reason is not None:
            self.by_reason.setdefault(reason, Counter())[status] += 1
            if self.last_failure is None or created_ms >= self.last_failure["created_ms"]:
                self.last_failure = {
                    "delivery_id": delivery_id,
                    "created_ms": created_ms,
                    "status": status,
                    "reason": reason,
                    "response_status": doc.get("response_status"),
                    "error_message": doc.get("error_message"),
                    "completed_at": doc.get("completed_at"),
                }
        if status in BACKLOG:
            self.waiting.append(delivery_id)


async def _queues(redis: Redis, waiting: list[str]) -> JsonObject | None:
    """Where the waiting deliveries are queued, from one atomic snapshot; None when too big."""
    if len(waiting) > QUEUE_SCAN_MAX:
        return None
    pipe = redis.pipeline(transaction=False)
    pipe.llen(keys.PENDING)
    pipe.llen(keys.PROCESSING)
    pending_len, processing_len = await pipe.execute()
    if max(int(pending_len), int(processing_len)) > QUEUE_SCAN_MAX:
        return None
    if not waiting:
        return {"pending": 0, "retry": 0, "processing": 0, "not_queued": 0}
    # MULTI: a delivery moving from one queue to the next is seen in exactly one of them
    async with redis.pipeline(transaction=True) as multi:
        multi.lrange(keys.PENDING, 0, -1)
        multi.lrange(keys.PROCESSING, 0, -1)
        multi.zmscore(keys.RETRY, waiting)
        multi.mget([keys.delivery(i) for i in waiting])
        pending, processing, retry_scores, raws = await multi.execute()
    in_pending = {decode(i) for i in pending}
    in_processing = {decode(i) for i in processing}
    counts = {"pending": 0, "retry": 0, "processing": 0, "not_queued": 0}
    for delivery_id, score, raw in zip(waiting, retry_scores, raws, strict=True):
        doc = load_record(raw)
        if doc is None or doc.get("status") not in BACKLOG:
            continue  # finished since the scan
        if delivery_id in in_processing:
            counts["processing"] += 1
        elif delivery_id in in_pending:
            counts["pending"] += 1
        elif score is not None:
            counts["retry"] += 1
        else:
            counts["not_queued"] += 1
    return counts


async def show_subscription(
    redis: Redis, subscription_id: str, *, since_ms: int, until_ms: int
) -> JsonObject:
    """A subscription's state and the deliveries created in [since, until], by status."""
    pipe = redis.pipeline(transaction=False)
    pipe.get(keys.subscription(subscription_id))
    pipe.get(keys.secret(subscription_id))
    pipe.zcard(keys.deliveries(subscription_id))
    pipe.hget(keys.CONCURRENCY_LIMITS, subscription_id)
    raw, secret, indexed, limit = await pipe.execute()
    if raw is None and not indexed:
        raise OpsError(f"subscription {subscription_id} not found")
    doc = load_record(raw)
    if raw is not None and doc is None:
        raise OpsError(f"subscription {subscription_id} is not a valid JSON record")
    backlog = Backlog(indexed_total=int(indexed))
    async for chunk in index_chunks(redis, subscription_id, since_ms, until_ms):
        for delivery_id, created, record_raw in chunk:
            backlog.scanned += 1
            record = load_record(record_raw)
            if record is None:
                backlog.expired += record_raw is None
                continue
            backlog.add(delivery_id, created, record)
    unknown = sorted(set(backlog.by_status) - set(DELIVERY_STATUSES))
    statuses = (*DELIVERY_STATUSES, *unknown)
    last = backlog.last_failure
    if last is not None:
        last["created_at"] = format_instant(int(last.pop("created_ms")))
    return {
        "subscription_id": subscription_id,
        "subscription": subscription_summary(doc, secret) if doc is not None else None,
        "window": {"since": format_instant(since_ms), "until": format_instant(until_ms)},
        # held below the maximum by the adaptive limit of an instance, when one is (limit/max)
        "concurrency_limit": limit.decode() if limit is not None else None,
        "deliveries": {
            "indexed_total": backlog.indexed_total,
            "in_window": backlog.scanned,
            "expired_records": backlog.expired,
            "by_status": {s: backlog.by_status[s] for s in statuses},
            "failures_by_reason": {
                r: dict(sorted(c.items())) for r, c in sorted(backlog.by_reason.items())
            },
            "queued": await _queues(redis, backlog.waiting),
            "last_failure": last,
        },
    }
