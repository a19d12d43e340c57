"""What the operations share: their error, the clock, record decoding and the deliveries index."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.models import JsonObject, RecordError, loads_object

CHUNK = 500
REPLAY_FIELD = "replay_of"


class OpsError(Exception):
    """An operation cannot be done; the message is one line for the operator, with no secret."""


def now_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return int(time.time() * 1000)


def decode(value: Any) -> str:
    """A Redis reply as text (bytes decoded as UTF-8, bad bytes replaced)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def load_record(raw: Any) -> JsonObject | None:
    """The JSON object in `raw`, or None when it is missing or not one."""
    if raw is None:
        return None
    try:
        return loads_object(raw)
    except RecordError:
        return None


async def index_chunks(
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
        ids = [decode(member) for member, _ in page]
        raws: list[Any] = await redis.mget([keys.delivery(i) for i in ids])
        yield [(i, int(score), raw) for i, (_, score), raw in zip(ids, page, raws, strict=True)]
        if len(page) < CHUNK:
            return
