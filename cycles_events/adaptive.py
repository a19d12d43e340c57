"""Adaptive per-subscription concurrency (pure): an AIMD limit within [1, the per-subscription max].

Why AIMD. A receiver says it is overwhelmed explicitly (429, 503, 504, a timeout) or implicitly
(it answers, but more slowly as we add requests: they queue on its side). AIMD (additive
increase, multiplicative decrease, as TCP does) reacts to both with the one rule known to
converge when many senders share a receiver, and it needs no model of the receiver. While it
answers fast the limit grows by `increase` per window of successes (+`increase`/limit each).
An overload answer multiplies it by `overload_factor`: 0.7, CUBIC's factor; in the simulation of
the tests it keeps 92 to 100% of the rate a fixed bound delivers to a receiver that breaks above
N (TCP's 0.5 keeps 80 to 85%), for 1 to 3% of the fixed bound's failed attempts. Another 5xx or
a transport error multiplies it by `failure_factor` (0.8: those are as often bugs as load),
rising latency by `latency_factor` (0.8). A gradient limiter (Vegas, Netflix's Gradient2) aims
closer to the knee but needs a steady latency that a webhook receiver, whose work per event
varies, rarely has; here latency is one more "too much" signal.

Rising latency: the EWMA of successful requests' latency (weight `ewma_weight`, 0.3) against a
baseline that follows the low envelope of the same samples: it falls quickly (`baseline_down`,
0.5: one freak-fast answer, a cache hit, only halves the gap) and rises slowly (`baseline_up`,
0.002 per sample, a half-life of about 350 answers), so that a receiver that got slower for
good becomes the new normal instead of being held at 1. Requests are queueing when the EWMA is
above `latency_tolerance` (2) times the baseline and more than `latency_slack_s` (5 ms) above it,
so millisecond noise never counts. Failed attempts feed neither: a quick 503 says nothing about
how long real work takes.

One reaction per window: after a decrease, the next `ceil(previous limit) - 1` results (the other
requests that may have been in flight under the old limit) change nothing, or one burst of 503s
would cut the limit once per request and drive it to 1.

A subscription starts at `initial` (the maximum by default: a healthy receiver is never slower
than with the fixed bound; a fragile one costs one window of overload answers, retried on the
retry policy). Memory is bounded: the `capacity` (10,000) most recently active subscriptions are
kept (LRU); a forgotten one starts again at `initial`. `summary()` feeds a gauge histogram of
current limits and a top-N of the lowest, with no label per subscription or tenant.

Opt-in: setting `DISPATCH_ADAPTIVE_CONCURRENCY_ENABLED` (false) or the subscription metadata key
`adaptive_concurrency` (true/false, which wins); off, a subscription's bound is the fixed
`DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION` as before.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from cycles_events.backoff import is_overload
from cycles_events.optin import flag, metadata_of

SETTING = "DISPATCH_ADAPTIVE_CONCURRENCY_ENABLED"
METADATA_KEY = "adaptive_concurrency"


class Signal(enum.Enum):
    """What one result says about the receiver's load."""

    SUCCESS = "success"  # a 2xx: its latency is a sample
    OVERLOAD = "overload"  # 429, 503, 504, a timeout
    FAILURE = "failure"  # another 5xx, or a transport error
    NEUTRAL = "neutral"  # a prompt 1xx/3xx/4xx answer: nothing about load


def signal_of(status: int | None, error: str | None) -> Signal:
    """The load signal of an attempt's HTTP status or transport error."""
    if status is not None and 200 <= status <= 299:
        return Signal.SUCCESS
    if is_overload(status, error):
        return Signal.OVERLOAD
    if status is None or 500 <= status <= 599:
        return Signal.FAILURE
    return Signal.NEUTRAL


def enabled_for(subscription: Mapping[str, Any], setting: bool) -> bool:
    """Whether this subscription's bound adapts: its metadata key, else the setting."""
    return flag(metadata_of(subscription), METADATA_KEY, setting)


@dataclass(frozen=True, slots=True)
class Tuning:
    """The limiter's constants (defaults explained in the module docstring)."""

    increase: float = 1.0
    overload_factor: float = 0.7
    failure_factor: float = 0.8
    latency_factor: float = 0.8
    latency_tolerance: float = 2.0
    latency_slack_s: float = 0.005
    ewma_weight: float = 0.3
    baseline_down: float = 0.5
    baseline_up: float = 0.002
    capacity: int = 10_000

    def __post_init__(self) -> None:
        factors = (self.overload_factor, self.failure_factor, self.latency_factor)
        if not all(0.0 < f <= 1.0 for f in factors):
            raise ValueError("decrease factors must be within (0, 1]")
        weights = (self.ewma_weight, self.baseline_down, self.baseline_up)
        if not all(0.0 < w <= 1.0 for w in weights):
            raise ValueError("EWMA weights must be within (0, 1]")
        if self.increase < 0 or self.latency_tolerance < 1.0 or self.latency_slack_s < 0:
            raise ValueError("need increase >= 0, latency_tolerance >= 1, latency_slack_s >= 0")
        if self.capacity < 1:
            raise ValueError("capacity must be at least 1")


class _State:
    __slots__ = ("baseline", "hold", "limit", "recent")

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.baseline: float | None = None
        self.recent: float | None = None
        self.hold = 0


class Snapshot(NamedTuple):
    """One subscription's limiter state, for `subscriptions show` and logs."""

    limit: int
    maximum: int
    baseline_ms: float | None
    recent_ms: float | None


class Summary(NamedTuple):
    """Limits of the tracked subscriptions: a gauge histogram and the lowest few."""

    tracked: int
    below_max: int
    total: int  # the sum of the current limits (the histogram's sum)
    buckets: tuple[tuple[int, int], ...]  # (upper bound, subscriptions at or below it)
    lowest: tuple[tuple[str, int], ...]  # (subscription id, limit), lowest first


class AdaptiveLimits:
    """Per-subscription AIMD limits, fed by the outcome of each finished request."""

    def __init__(self, maximum: int, tuning: Tuning | None = None, initial: int | None = None):
        if maximum < 1:
            raise ValueError("maximum must be at least 1")
        self._max = maximum
        self._tuning = tuning or Tuning()
        start = maximum if initial is None else initial
        if not 1 <= start <= maximum:
            raise ValueError("initial must be within [1, maximum]")
        self._initial = start
        self._states: OrderedDict[str, _State] = OrderedDict()
        self._bounds = _bounds(maximum)

    @property
    def maximum(self) -> int:
        """The per-subscription maximum, the top of every limit."""
        return self._max

    def __len__(self) -> int:
        return len(self._states)

    def limit(self, subscription_id: str) -> int:
        """The number of requests this subscription may have in flight now."""
        state = self._states.get(subscription_id)
        return self._initial if state is None else _whole(state.limit)

    def on_result(self, subscription_id: str, latency_s: float, signal: Signal) -> int:
        """Account one finished request; returns the subscription's new limit."""
        state = self._touch(subscription_id)
        t = self._tuning
        held = state.hold > 0
        if held:
            state.hold -= 1
        if signal is Signal.SUCCESS:
            if _sample(state, latency_s, t):
                self._decrease(state, t.latency_factor, held)
            elif not held:
                state.limit = min(float(self._max), state.limit + t.increase / state.limit)
        elif signal is Signal.OVERLOAD:
            self._decrease(state, t.overload_factor, held)
        elif signal is Signal.FAILURE:
            self._decrease(state, t.failure_factor, held)
        return _whole(state.limit)

    def snapshot(self, subscription_id: str) -> Snapshot | None:
        """The subscription's state, or None when it is not tracked."""
        state = self._states.get(subscription_id)
        if state is None:
            return None
        return Snapshot(
            _whole(state.limit),
            self._max,
            None if state.baseline is None else state.baseline * 1000,
            None if state.recent is None else state.recent * 1000,
        )

    def forget(self, subscription_id: str) -> None:
        """Drop a subscription's state (deleted, or re-enabled by an operator)."""
        self._states.pop(subscription_id, None)

    def summary(self, lowest: int = 5) -> Summary:
        """Counts per limit bucket and the `lowest` lowest limits, for gauges and logs."""
        limits = [(_whole(s.limit), sub) for sub, s in self._states.items()]
        counts = [0] * len(self._bounds)
        for value, _ in limits:
            counts[next(i for i, b in enumerate(self._bounds) if value <= b)] += 1
        cumulative: list[tuple[int, int]] = []
        running = 0
        for bound, count in zip(self._bounds, counts, strict=True):
            running += count
            cumulative.append((bound, running))
        below = [(v, s) for v, s in limits if v < self._max]
        return Summary(
            tracked=len(limits),
            below_max=len(below),
            total=sum(v for v, _ in limits),
            buckets=tuple(cumulative),
            lowest=tuple((s, v) for v, s in heapq.nsmallest(lowest, below)),
        )

    def _touch(self, subscription_id: str) -> _State:
        state = self._states.get(subscription_id)
        if state is None:
            state = _State(float(self._initial))
            self._states[subscription_id] = state
            if len(self._states) > self._tuning.capacity:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(subscription_id)
        return state

    def _decrease(self, state: _State, factor: float, held: bool) -> None:
        if held:
            return
        before = state.limit
        state.limit = max(1.0, before * factor)
        state.hold = math.ceil(before) - 1


def _sample(state: _State, latency_s: float, t: Tuning) -> bool:
    """Fold a success's latency into both averages; True when requests are queueing."""
    if not math.isfinite(latency_s) or latency_s < 0:
        return False
    if state.baseline is None or state.recent is None:
        state.baseline = state.recent = latency_s
        return False
    state.recent += t.ewma_weight * (latency_s - state.recent)
    gap = latency_s - state.baseline
    state.baseline += (t.baseline_down if gap < 0 else t.baseline_up) * gap
    return (
        state.recent > t.latency_tolerance * state.baseline
        and state.recent - state.baseline > t.latency_slack_s
    )


def _whole(limit: float) -> int:
    return max(1, math.floor(limit + 1e-9))


def _bounds(maximum: int) -> tuple[int, ...]:
    """Bucket upper bounds: 1, 2, 4, ... below the maximum, then the maximum."""
    bounds: list[int] = []
    bound = 1
    while bound < maximum:
        bounds.append(bound)
        bound *= 2
    bounds.append(maximum)
    return tuple(bounds)
