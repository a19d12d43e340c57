"""The adaptive concurrency limiter: unit rules, and a simulated receiver that breaks above N."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from cycles_events.adaptive import (
    AdaptiveLimits,
    Signal,
    Snapshot,
    Tuning,
    enabled_for,
    signal_of,
)

MAX = 8
FAST = 0.02


@dataclass
class Phase:
    """What the simulation measured over one phase of the receiver's health."""

    delivered: int = 0
    failed: int = 0
    limit_time: float = 0.0
    time: float = 0.0
    last_limit: int = 0

    @property
    def mean_limit(self) -> float:
        return self.limit_time / self.time


@dataclass
class Receiver:
    """Healthy until `sick_at`; then each request beyond `knee` being processed slows them all,
    and a request arriving while `breaks_at` are being processed gets a quick 503; healthy again
    from `well_at`."""

    breaks_at: int
    knee: int
    sick_at: float = 5.0
    well_at: float = 35.0
    processing: int = 0

    def answer(self, now: float) -> tuple[float, Signal]:
        if not self.sick_at <= now < self.well_at:
            self.processing += 1
            return FAST, Signal.SUCCESS
        if self.processing >= self.breaks_at:
            return 0.005, Signal.OVERLOAD
        self.processing += 1
        return FAST * max(1.0, self.processing / self.knee), Signal.SUCCESS


@dataclass
class Run:
    """Phases 0 (healthy), 1 (sick) and 2 (recovered) of one simulated run."""

    phases: list[Phase] = field(default_factory=lambda: [Phase(), Phase(), Phase()])
    recovered_at: float | None = None


def simulate(receiver: Receiver, limiter: AdaptiveLimits | None, *, until: float = 45.0) -> Run:
    """A saturated backlog for one subscription: start requests while under the limit."""
    sub = "whsub_sim"
    now, seq, in_flight = 0.0, 0, 0
    pending: list[tuple[float, int, float, Signal, float]] = []
    run = Run()

    def limit() -> int:
        return MAX if limiter is None else limiter.limit(sub)

    def fill() -> None:
        nonlocal in_flight, seq
        while in_flight < limit():
            in_flight += 1
            latency, signal = receiver.answer(now)
            seq += 1
            heapq.heappush(pending, (now + latency, seq, latency, signal, now))

    def phase_of(t: float) -> Phase:
        index = 0 if t < receiver.sick_at else 1 if t < receiver.well_at else 2
        return run.phases[index]

    fill()
    while pending and pending[0][0] <= until:
        done, _, latency, signal, started = heapq.heappop(pending)
        phase = phase_of(done)
        phase.limit_time += limit() * (done - now)
        phase.time += done - now
        now = done
        in_flight -= 1
        if signal is Signal.SUCCESS:
            receiver.processing -= 1
            phase_of(started).delivered += 1
        else:
            phase_of(started).failed += 1
        if limiter is not None:
            limiter.on_result(sub, latency, signal)
        phase.last_limit = limit()
        if run.recovered_at is None and now >= receiver.well_at and limit() == MAX:
            run.recovered_at = now
        fill()
    return run


@pytest.mark.parametrize(("breaks_at", "knee"), [(4, 4), (4, 2), (3, 3), (6, 2), (2, 1)])
def test_converges_near_n_fails_less_than_fixed_and_recovers(breaks_at: int, knee: int) -> None:
    adaptive = simulate(Receiver(breaks_at, knee), AdaptiveLimits(MAX))
    fixed = simulate(Receiver(breaks_at, knee), None)
    healthy, sick, well = adaptive.phases
    _, fixed_sick, fixed_well = fixed.phases
    assert healthy.failed == 0 and healthy.last_limit == MAX
    # near N: mostly between N/2 and N, never far above it
    assert breaks_at / 2 <= sick.mean_limit <= breaks_at + 1
    assert sick.last_limit <= breaks_at + 1
    # a fixed bound at the maximum keeps hammering: 12,000 to 36,000 failed attempts here
    assert fixed_sick.failed > 10_000
    assert sick.failed * 30 < fixed_sick.failed
    assert sick.delivered >= 0.85 * fixed_sick.delivered
    # back at the maximum within a second of the receiver's recovery, and no failure after it
    assert adaptive.recovered_at is not None and adaptive.recovered_at < 36.0
    assert well.failed == 0 and well.delivered >= 0.97 * fixed_well.delivered


@pytest.mark.parametrize(("factor", "low", "high"), [(0.7, 0.92, 1.0), (0.5, 0.80, 0.86)])
def test_overload_factor_trades_rate_for_failures(factor: float, low: float, high: float) -> None:
    # the module docstring's figures: a receiver that scales linearly up to its breaking point
    adaptive = simulate(Receiver(4, 4), AdaptiveLimits(MAX, Tuning(overload_factor=factor)))
    fixed = simulate(Receiver(4, 4), None)
    assert low <= adaptive.phases[1].delivered / fixed.phases[1].delivered <= high


def test_rising_latency_alone_lowers_the_limit() -> None:
    # never an error: the receiver just gets slower the more it is given
    limiter = AdaptiveLimits(MAX)
    for _ in range(50):
        limiter.on_result("s", FAST, Signal.SUCCESS)
    assert limiter.limit("s") == MAX
    seen = []
    for _ in range(150):
        current = limiter.limit("s")
        seen.append(limiter.on_result("s", FAST * current, Signal.SUCCESS))
    # at 2 in flight the latency is at the tolerance, twice the baseline: it hovers at 2 to 4
    assert max(seen[-50:]) <= 4 and sum(seen[-50:]) / 50 <= 3


def test_starts_at_the_maximum_and_reads_create_nothing() -> None:
    limiter = AdaptiveLimits(MAX)
    assert limiter.limit("a") == MAX and len(limiter) == 0
    assert limiter.snapshot("a") is None
    assert AdaptiveLimits(MAX, initial=2).limit("a") == 2


def test_additive_increase_is_one_per_window() -> None:
    limiter = AdaptiveLimits(MAX, initial=1)
    assert limiter.on_result("a", FAST, Signal.SUCCESS) == 2  # 1 + 1/1
    assert limiter.on_result("a", FAST, Signal.SUCCESS) == 2  # 2.5
    assert limiter.on_result("a", FAST, Signal.SUCCESS) == 2  # 2.9
    assert limiter.on_result("a", FAST, Signal.SUCCESS) == 3  # 3.24...
    for _ in range(100):
        limiter.on_result("a", FAST, Signal.SUCCESS)
    assert limiter.limit("a") == MAX  # capped


@pytest.mark.parametrize(
    ("signal", "expected"),
    [(Signal.OVERLOAD, 5), (Signal.FAILURE, 6), (Signal.NEUTRAL, 8)],  # 8 x 0.7, 8 x 0.8
)
def test_decreases(signal: Signal, expected: int) -> None:
    limiter = AdaptiveLimits(MAX)
    assert limiter.on_result("a", 0.001, signal) == expected


def test_one_decrease_per_window() -> None:
    limiter = AdaptiveLimits(MAX)
    # all 8 in flight come back 503: one decrease, not eight
    got = [limiter.on_result("a", 0.005, Signal.OVERLOAD) for _ in range(8)]
    assert got == [5] * 8
    # the hold spans the results that were in flight under the old limit, then reacts again
    assert limiter.on_result("a", 0.005, Signal.OVERLOAD) == 3  # 5.6 x 0.7 = 3.92
    while limiter.limit("a") > 1:
        limiter.on_result("a", 0.005, Signal.OVERLOAD)
    for _ in range(20):
        assert limiter.on_result("a", 0.005, Signal.OVERLOAD) == 1  # never below 1


def test_no_increase_while_held() -> None:
    limiter = AdaptiveLimits(MAX)
    limiter.on_result("a", 0.005, Signal.OVERLOAD)  # 5.6, hold 7
    got = [limiter.on_result("a", FAST, Signal.SUCCESS) for _ in range(7)]
    assert got == [5] * 7
    assert limiter.on_result("a", FAST, Signal.SUCCESS) == 5  # 5.6 + 1/5.6 = 5.78


def test_small_jitter_and_one_fast_answer_are_not_congestion() -> None:
    limiter = AdaptiveLimits(MAX)
    for i in range(200):
        limiter.on_result("a", 0.001 + 0.003 * (i % 2), Signal.SUCCESS)  # 1-4 ms: within slack
    assert limiter.limit("a") == MAX
    other = AdaptiveLimits(MAX)
    for _ in range(20):
        other.on_result("b", 0.05, Signal.SUCCESS)
    other.on_result("b", 0.001, Signal.SUCCESS)  # a cache hit: the baseline only halves its gap
    for _ in range(50):
        other.on_result("b", 0.05, Signal.SUCCESS)
    assert other.limit("b") == MAX


def test_failures_never_feed_the_latency_baseline() -> None:
    limiter = AdaptiveLimits(MAX, Tuning(failure_factor=1.0, overload_factor=1.0))
    for _ in range(50):
        limiter.on_result("a", 0.0001, Signal.FAILURE)  # quick errors
        limiter.on_result("a", 0.0001, Signal.OVERLOAD)
    for _ in range(50):
        limiter.on_result("a", 0.2, Signal.SUCCESS)
    assert limiter.limit("a") == MAX
    snap = limiter.snapshot("a")
    assert snap is not None and snap.baseline_ms == pytest.approx(200.0)


@pytest.mark.parametrize("latency", [math.nan, math.inf, -1.0])
def test_unusable_latencies_are_ignored(latency: float) -> None:
    limiter = AdaptiveLimits(MAX)
    limiter.on_result("a", FAST, Signal.SUCCESS)
    limiter.on_result("a", latency, Signal.SUCCESS)
    assert limiter.snapshot("a") == Snapshot(MAX, MAX, 20.0, 20.0)


def test_memory_is_bounded_by_an_lru() -> None:
    limiter = AdaptiveLimits(MAX, Tuning(capacity=3))
    for sub in ("a", "b", "c"):
        limiter.on_result(sub, 0.005, Signal.OVERLOAD)
    limiter.on_result("a", FAST, Signal.SUCCESS)  # a is now the most recent
    limiter.on_result("d", 0.005, Signal.OVERLOAD)  # evicts b, the least recent
    assert len(limiter) == 3
    assert limiter.snapshot("b") is None and limiter.limit("b") == MAX
    assert [limiter.limit(s) for s in ("a", "c", "d")] == [5, 5, 5]
    limiter.forget("a")
    assert limiter.snapshot("a") is None and len(limiter) == 2


def _limits(limiter: AdaptiveLimits, values: dict[str, int]) -> None:
    """Drive each subscription down to (about) the given limit with overloads."""
    for sub, target in values.items():
        while limiter.limit(sub) > target:
            limiter.on_result(sub, 0.005, Signal.OVERLOAD)
            snap = limiter.snapshot(sub)
            assert snap is not None
            for _ in range(MAX):  # let the hold pass
                limiter.on_result(sub, 0.005, Signal.NEUTRAL)


def test_summary_is_a_histogram_and_a_lowest_few() -> None:
    limiter = AdaptiveLimits(MAX)
    _limits(limiter, {"a": 1, "b": 2, "c": 3, "d": 5, "e": 1})
    limiter.on_result("f", FAST, Signal.SUCCESS)  # tracked, at the maximum
    got = limiter.summary(lowest=3)
    values = {s: limiter.limit(s) for s in "abcdef"}
    assert values == {"a": 1, "b": 2, "c": 3, "d": 5, "e": 1, "f": 8}
    assert got.tracked == 6 and got.below_max == 5 and got.total == 20
    assert got.buckets == ((1, 2), (2, 3), (4, 4), (8, 6))
    assert got.lowest == (("a", 1), ("e", 1), ("b", 2))
    assert AdaptiveLimits(MAX).summary().buckets == ((1, 0), (2, 0), (4, 0), (8, 0))


@pytest.mark.parametrize(
    ("maximum", "bounds"), [(1, (1,)), (2, (1, 2)), (10, (1, 2, 4, 8, 10)), (16, (1, 2, 4, 8, 16))]
)
def test_bucket_bounds(maximum: int, bounds: tuple[int, ...]) -> None:
    assert tuple(b for b, _ in AdaptiveLimits(maximum).summary().buckets) == bounds


def test_snapshot() -> None:
    limiter = AdaptiveLimits(MAX)
    limiter.on_result("a", 0.03, Signal.SUCCESS)
    limiter.on_result("a", 0.01, Signal.SUCCESS)
    snap = limiter.snapshot("a")
    assert snap is not None
    assert snap.limit == MAX and snap.maximum == MAX
    assert snap.baseline_ms == pytest.approx(20.0)  # halfway down to the faster answer
    assert snap.recent_ms == pytest.approx(24.0)


@pytest.mark.parametrize(
    ("status", "error", "signal"),
    [
        (200, None, Signal.SUCCESS),
        (204, None, Signal.SUCCESS),
        (429, None, Signal.OVERLOAD),
        (503, None, Signal.OVERLOAD),
        (504, None, Signal.OVERLOAD),
        (None, "Timeout: no response within 30s", Signal.OVERLOAD),
        (None, "Timeout: no connection within 5s", Signal.OVERLOAD),
        (500, None, Signal.FAILURE),
        (502, None, Signal.FAILURE),
        (None, "Connection failed: Connection refused", Signal.FAILURE),
        (None, "Connection closed by server", Signal.FAILURE),
        (None, None, Signal.FAILURE),
        (404, None, Signal.NEUTRAL),
        (410, None, Signal.NEUTRAL),
        (301, "Redirect not followed (HTTP 301)", Signal.NEUTRAL),
        (101, "Unexpected informational response (HTTP 101)", Signal.NEUTRAL),
    ],
)
def test_signal_of(status: int | None, error: str | None, signal: Signal) -> None:
    assert signal_of(status, error) is signal


@pytest.mark.parametrize(
    ("metadata", "setting", "expected"),
    [
        (None, False, False),
        (None, True, True),
        ({"adaptive_concurrency": True}, False, True),
        ({"adaptive_concurrency": "false"}, True, False),
        ({"adaptive_concurrency": 0.5}, False, False),
    ],
)
def test_enabled_for(metadata: Any, setting: bool, expected: bool) -> None:
    sub: dict[str, Any] = {} if metadata is None else {"metadata": metadata}
    assert enabled_for(sub, setting) is expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"overload_factor": 0.0},
        {"failure_factor": 1.5},
        {"latency_factor": -1.0},
        {"ewma_weight": 0.0},
        {"baseline_up": 2.0},
        {"increase": -1.0},
        {"latency_tolerance": 0.5},
        {"latency_slack_s": -0.1},
        {"capacity": 0},
    ],
)
def test_invalid_tuning_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Tuning(**kwargs)


@pytest.mark.parametrize(("maximum", "initial"), [(0, None), (8, 0), (8, 9)])
def test_invalid_bounds_are_refused(maximum: int, initial: int | None) -> None:
    with pytest.raises(ValueError):
        AdaptiveLimits(maximum, initial=initial)
