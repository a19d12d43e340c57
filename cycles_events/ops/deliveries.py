"""Delivery inspection: one delivery with its event and subscription, or a subscription's list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.models import JsonObject, format_instant, text
from cycles_events.ops.common import OpsError, index_chunks, load_record
from cycles_events.ops.selection import ReplayFilter
from cycles_events.opsutil import delivery_reason, mask_headers
from cycles_events.urlguard import redact_url

DELIVERY_STATUSES = ("PENDING", "RETRYING", "SUCCESS", "FAILED")


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
    doc = load_record(raw)
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
        "failure_reason": delivery_reason(doc),
        "queue": queue,
        "expires_in_s": int(pttl) // 1000 if int(pttl) >= 0 else None,
    }
    event = load_record(ev_raw)
    report["event"] = event_summary(event) if event is not None else None
    sub = load_record(sub_raw)
    report["subscription"] = subscription_summary(sub, secret) if sub is not None else None
    return report


async def _require_subscription(redis: Redis, subscription_id: str) -> JsonObject:
    raw = await redis.get(keys.subscription(subscription_id))
    if raw is None:
        if await redis.exists(keys.deliveries(subscription_id)):
            return {}
        raise OpsError(f"subscription {subscription_id} not found")
    doc = load_record(raw)
    if doc is None:
        raise OpsError(f"subscription {subscription_id} is not a valid JSON record")
    return doc


@dataclass(slots=True)
class Listing:
    """The result of `deliveries list`: the newest `limit` matches and how many matched."""

    deliveries: list[JsonObject]
    expired: int = 0
    scanned: int = 0
    total: int = 0


async def list_deliveries(
    redis: Redis,
    subscription_id: str,
    *,
    statuses: Sequence[str] = (),
    since_ms: int | None = None,
    until_ms: int | None = None,
    reasons: Sequence[str] = (),
    event_types: Sequence[str] = (),
    limit: int = 50,
) -> Listing:
    """A subscription's deliveries, newest first, filtered as a bulk replay filters them."""
    await _require_subscription(redis, subscription_id)
    flt = ReplayFilter(
        statuses=frozenset(statuses),
        since_ms=since_ms,
        until_ms=until_ms,
        event_types=tuple(event_types),
        reasons=frozenset(reasons),
    )
    out = Listing([])
    async for chunk in index_chunks(redis, subscription_id, since_ms, until_ms, newest_first=True):
        for _, _, raw in chunk:
            out.scanned += 1
            doc = load_record(raw)
            if doc is None:
                out.expired += raw is None
                continue
            if not flt.matches(doc):
                continue
            out.total += 1  # the whole window is read, so that the total is known
            if len(out.deliveries) < limit:
                out.deliveries.append(doc)
    return out
