"""Quarantine: list, requeue and drop the entries of dispatch:failed."""

from __future__ import annotations

from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.models import JsonObject
from cycles_events.ops.common import OpsError, decode, load_record


async def quarantine_list(redis: Redis, limit: int) -> tuple[int, list[JsonObject]]:
    """The total length of dispatch:failed and its newest `limit` entries (parsed when valid)."""
    pipe = redis.pipeline(transaction=False)
    pipe.llen(keys.FAILED)
    pipe.lrange(keys.FAILED, 0, max(0, limit - 1))
    total, raws = await pipe.execute()
    entries: list[JsonObject] = []
    for index, raw in enumerate(raws if limit > 0 else []):
        doc = load_record(raw)
        if doc is None:
            doc = {"delivery_id": None, "reason": "unreadable_entry", "payload": decode(raw)}
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
