"""Atomic partial merges into webhook:{id}: batched compare-and-set that never loses a write."""

from __future__ import annotations

from dataclasses import dataclass

from cycles_events.batching import GroupCommit
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


NOT_APPLIED = Applied(MergeResult(), None)


class SubscriptionUpdater:
    """Applies delivery outcomes to subscriptions without ever losing a concurrent admin write.

    Each write is a compare-and-set of the whole record in Lua: when the admin changed the
    record since we read it, the current value comes back, the change is merged into it and
    written again. Changes queued while a round trip is in flight go out together in the next.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        # the record as last read or written, and its parsed form when we have it
        self._known: dict[str, tuple[str, JsonObject | None]] = {}
        self._commit: GroupCommit[tuple[str, SubscriptionChange], Applied] = GroupCommit(
            "subscriptions", self.write
        )

    def remember(self, subscription_id: str, raw: str, doc: JsonObject | None = None) -> None:
        """Note a freshly read record (and its parsed form), so the next write can skip a read."""
        if len(self._known) >= MAX_CACHED:
            self._known.clear()
        self._known[subscription_id] = (raw, doc)

    async def apply(self, subscription_id: str, change: SubscriptionChange) -> Applied:
        """Merge one change; returns once it is written."""
        return await self._commit.submit((subscription_id, change))

    async def write(self, batch: list[tuple[str, SubscriptionChange]]) -> list[Applied]:
        """Merge a batch of changes now (CAS rounds until each lands or its record is gone)."""
        results: list[Applied | None] = [None] * len(batch)
        by_sub: dict[str, list[int]] = {}
        for i, (sub_id, _) in enumerate(batch):
            by_sub.setdefault(sub_id, []).append(i)
        unknown = [s for s in by_sub if s not in self._known]
        for sub_id in unknown:
            raw = await self._store.get_subscription(sub_id)
            if raw is None:
                for i in by_sub.pop(sub_id):
                    results[i] = NOT_APPLIED
            else:
                self._known[sub_id] = (raw.decode("utf-8", "replace"), None)
        for _ in range(MAX_CAS_ROUNDS):
            if not by_sub:
                break
            items: list[tuple[str, str, str]] = []
            merged: dict[str, tuple[JsonObject, list[MergeResult]]] = {}
            for sub_id, idxs in list(by_sub.items()):
                expected, parsed = self._known[sub_id]
                try:
                    # merges set top-level fields only, so a shallow copy keeps `parsed` intact
                    doc = dict(parsed) if parsed is not None else loads_object(expected)
                except RecordError:
                    for i in by_sub.pop(sub_id):
                        results[i] = NOT_APPLIED
                    continue
                outcomes = [merge_subscription(doc, batch[i][1]) for i in idxs]
                merged[sub_id] = (doc, outcomes)
                items.append((sub_id, expected, dumps(doc)))
            answers = await self._store.cas_subscriptions(items)
            for (sub_id, _, new), (status, current) in zip(items, answers, strict=True):
                idxs = by_sub[sub_id]
                if status == "ok":
                    doc, outcomes = merged[sub_id]
                    self._known[sub_id] = (new, doc)
                    for i, outcome in zip(idxs, outcomes, strict=True):
                        results[i] = Applied(outcome, doc)
                    del by_sub[sub_id]
                elif status == "missing" or current is None:
                    self._known.pop(sub_id, None)
                    for i in idxs:
                        results[i] = NOT_APPLIED
                    del by_sub[sub_id]
                else:
                    self._known[sub_id] = (current.decode("utf-8", "replace"), None)
        if by_sub:
            raise RuntimeError(f"subscriptions kept changing during the update: {list(by_sub)}")
        return [r if r is not None else NOT_APPLIED for r in results]
