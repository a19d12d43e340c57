"""Atomic partial merges into webhook:{id}: serialized per subscription, coalesced, CAS-written."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cycles_events.lifecycle import MergeResult, SubscriptionChange, merge_subscription
from cycles_events.models import JsonObject, RecordError, dumps, loads_object
from cycles_events.store import Store

MAX_CAS_ROUNDS = 20
MAX_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class Applied:
    """A change's result and the subscription as written (None when it no longer exists)."""

    result: MergeResult
    subscription: JsonObject | None


class SubscriptionUpdater:
    """Applies delivery outcomes to subscriptions without ever losing a concurrent admin write.

    Each write is a compare-and-set of the whole record (Lua), so a field the admin changed in
    between is re-read and kept; changes for one subscription queue up and go out together.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queues: dict[str, list[tuple[SubscriptionChange, asyncio.Future[Applied]]]] = {}
        self._known: dict[str, str] = {}
        self._workers: set[asyncio.Task[None]] = set()

    def remember(self, subscription_id: str, raw: str) -> None:
        """Note a freshly read record, so the next write can skip a read."""
        if len(self._known) >= MAX_CACHED:
            self._known.clear()
        self._known[subscription_id] = raw

    async def apply(self, subscription_id: str, change: SubscriptionChange) -> Applied:
        """Merge one change; waits until it is written."""
        fut: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(subscription_id)
        if queue is None:
            self._queues[subscription_id] = [(change, fut)]
            task = asyncio.create_task(
                self._drain(subscription_id), name=f"subscription-update:{subscription_id}"
            )
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
        else:
            queue.append((change, fut))
        return await fut

    async def _drain(self, subscription_id: str) -> None:
        try:
            while batch := self._queues.get(subscription_id):
                self._queues[subscription_id] = []
                try:
                    applied = await self._write(subscription_id, [c for c, _ in batch])
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(
                                exc if isinstance(exc, Exception) else RuntimeError("cancelled")
                            )
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, fut), result in zip(batch, applied, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._queues.pop(subscription_id, None)

    async def _write(
        self, subscription_id: str, changes: list[SubscriptionChange]
    ) -> list[Applied]:
        expected = self._known.get(subscription_id)
        if expected is None:
            raw = await self._store.get_subscription(subscription_id)
            if raw is None:
                return [Applied(MergeResult(), None) for _ in changes]
            expected = raw.decode("utf-8", "replace")
        for _ in range(MAX_CAS_ROUNDS):
            try:
                doc = loads_object(expected)
            except RecordError:
                return [Applied(MergeResult(), None) for _ in changes]
            results = [merge_subscription(doc, c) for c in changes]
            new = dumps(doc)
            status, current = await self._store.cas_subscription(subscription_id, expected, new)
            if status == "ok":
                self.remember(subscription_id, new)
                return [Applied(r, doc) for r in results]
            if status == "missing" or current is None:
                self._known.pop(subscription_id, None)
                return [Applied(MergeResult(), None) for _ in changes]
            expected = current.decode("utf-8", "replace")
        raise RuntimeError(f"subscription {subscription_id} kept changing during the update")
