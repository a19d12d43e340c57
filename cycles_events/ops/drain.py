"""A re-enabled subscription's backlog: the deliveries that ended FAILED while it was inactive."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from cycles_events.models import JsonObject, parse_instant_ms
from cycles_events.ops.selection import ReplayFilter, Selection, select_by_subscription

BACKLOG_REASON = "subscription_inactive"
STATUS_FIELDS = ("updated_at", "last_failure_at")
DEFAULT_SOURCE = "MAX_DELIVERY_AGE_MS"


@dataclass(frozen=True, slots=True)
class Backlog:
    """Which failed deliveries a drain replays: reasons, and failed since when (and why then)."""

    reasons: frozenset[str]
    ended_since_ms: int
    since_source: str  # updated_at, last_failure_at, MAX_DELIVERY_AGE_MS or --since
    max_age_ms: int

    def filter(self) -> ReplayFilter:
        """The replay filter: FAILED, these reasons, ended since; created within the age before."""
        return ReplayFilter(
            statuses=frozenset({"FAILED"}),
            since_ms=self.ended_since_ms - self.max_age_ms,
            reasons=self.reasons,
            ended_since_ms=self.ended_since_ms,
        )


def backlog_since(before: JsonObject, now_ms: int, max_age_ms: int) -> tuple[int, str]:
    """When the inactive period began, from the record before enabling: (epoch ms, field)."""
    floor = now_ms - max_age_ms
    # ACTIVE already (someone else enabled it): updated_at is the re-enabling, not the pause
    if before.get("status") == "ACTIVE":
        return floor, DEFAULT_SOURCE
    # the earliest of the two: nothing ends FAILED subscription_inactive before the status
    # changed, so a bound too early only adds an earlier inactive period's failures that were
    # never replayed, while one too late (an admin edit after the pause, failures in flight
    # when it was disabled) would leave some of this one out
    found = [
        (ms, name)
        for name in STATUS_FIELDS
        if (ms := parse_instant_ms(before.get(name))) is not None
    ]
    if not found:
        return floor, DEFAULT_SOURCE
    at, name = min(found)
    if at <= floor:
        return floor, DEFAULT_SOURCE
    return min(at, now_ms), name


def backlog(
    before: JsonObject,
    *,
    now_ms: int,
    max_age_ms: int,
    extra_reasons: Iterable[str] = (),
    since_ms: int | None = None,
) -> Backlog:
    """The backlog of a subscription whose record, before enabling, was `before`."""
    if since_ms is not None:
        at, source = since_ms, "--since"
    else:
        at, source = backlog_since(before, now_ms, max_age_ms)
    reasons = frozenset({BACKLOG_REASON, *extra_reasons})
    return Backlog(reasons, at, source, max_age_ms)


async def select_backlog(
    redis: Redis, subscription_id: str, wanted: Backlog, *, dry_run: bool = False
) -> Selection:
    """The backlog's deliveries, oldest first, not yet replayed (the replay selection)."""
    return await select_by_subscription(redis, subscription_id, wanted.filter(), dry_run=dry_run)
