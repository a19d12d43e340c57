"""The overload-aware retry policy: fixed vectors, and the contract's formula when all is off."""

from __future__ import annotations

import errno
import random
import ssl
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cycles_events.backoff import (
    GONE_REASON,
    OFF,
    Action,
    Cause,
    Decision,
    Options,
    Transport,
    decide,
    is_overload,
    retry_delay_ms,
    transport_kind,
)
from cycles_events.http1 import ClosedEarly, HttpError
from cycles_events.models import parse_instant_ms
from cycles_events.retry import RetryPolicy
from cycles_events.sender import ConnectTimeout, DnsError, describe_error

DEFAULT = RetryPolicy()
NOW = 1795335330000  # 2026-11-22T08:15:30Z
TIMEOUT = "Timeout: no response within 30s"


def _never() -> float:
    raise AssertionError("no random draw without jitter")


def _fixed(value: float) -> Any:
    return lambda: value


def _retry(attempts: int, status: int | None = 500, options: Options = OFF, **kw: Any) -> Decision:
    return decide(DEFAULT, attempts, status=status, now_ms=NOW, options=options, **kw)


def test_all_off_is_the_contract_formula() -> None:
    got = [_retry(n, rand=_never) for n in range(1, 7)]
    assert [d.delay_ms for d in got[:5]] == [1000, 2000, 4000, 8000, 16000]
    assert all(d.action is Action.RETRY and d.cause is Cause.BACKOFF for d in got[:5])
    assert got[5] == Decision(Action.GIVE_UP)


def test_all_off_ignores_retry_after_and_410() -> None:
    assert _retry(1, 429, retry_after="120", rand=_never).delay_ms == 1000
    assert _retry(1, 503, retry_after="120", rand=_never).delay_ms == 1000
    assert _retry(2, 410, rand=_never) == Decision(Action.RETRY, 2000, Cause.BACKOFF)
    assert _retry(6, 410, rand=_never) == Decision(Action.GIVE_UP)


@settings(max_examples=500, deadline=None)
@given(
    max_retries=st.integers(0, 10),
    initial=st.integers(100, 60000),
    multiplier=st.floats(1.0, 10.0),
    max_delay=st.integers(1000, 3_600_000),
    attempts=st.integers(1, 12),
    status=st.one_of(st.none(), st.integers(100, 199), st.integers(300, 599)),
    error=st.sampled_from([None, TIMEOUT, "Connection failed: Connection refused"]),
    retry_after=st.one_of(
        st.none(), st.integers(0, 10**6).map(str), st.just("Sun, 22 Nov 2026 09:00:00 GMT")
    ),
)
def test_with_everything_off_nothing_changes(
    max_retries: int,
    initial: int,
    multiplier: float,
    max_delay: int,
    attempts: int,
    status: int | None,
    error: str | None,
    retry_after: str | None,
) -> None:
    policy = RetryPolicy(max_retries, initial, multiplier, max_delay)
    got = decide(
        policy,
        attempts,
        status=status,
        error=error,
        retry_after=retry_after,
        now_ms=NOW,
        rand=_never,
    )
    if attempts > max_retries:
        assert got == Decision(Action.GIVE_UP)
    else:
        assert got == Decision(Action.RETRY, policy.delay_ms(attempts), Cause.BACKOFF)


def test_now_is_the_contract_instant() -> None:
    assert parse_instant_ms("2026-11-22T08:15:30Z") == NOW


def test_a_success_is_not_a_failed_attempt() -> None:
    with pytest.raises(ValueError):
        _retry(1, 204)


def test_410_disables_at_once_when_asked() -> None:
    gone = Options(disable_on_gone=True)
    expected = Decision(Action.DISABLE, disable_reason=GONE_REASON)
    assert _retry(1, 410, gone) == expected
    assert _retry(6, 410, gone) == expected  # past max_retries: still a disable, not a give-up
    assert _retry(1, 404, gone).action is Action.RETRY
    assert _retry(1, None, gone, error="Connection closed by server").action is Action.RETRY
    assert GONE_REASON == "endpoint_gone_http_410"


HONOR = Options(honor_retry_after=True)


@pytest.mark.parametrize(
    ("attempts", "header", "expected"),
    [
        (1, "120", Decision(Action.RETRY, 120_000, Cause.RETRY_AFTER)),
        (1, " 3 ", Decision(Action.RETRY, 3000, Cause.RETRY_AFTER)),
        (1, "0", Decision(Action.RETRY, 1000, Cause.BACKOFF)),  # the window's 1 s = the formula
        (2, "1", Decision(Action.RETRY, 2000, Cause.BACKOFF)),  # asks less than the formula
        (1, "86400", Decision(Action.RETRY, 3_600_000, Cause.RETRY_AFTER)),  # clamped to 1 h
        (1, "Sun, 22 Nov 2026 08:20:30 GMT", Decision(Action.RETRY, 300_000, Cause.RETRY_AFTER)),
        (1, "Sun, 22 Nov 2026 08:00:00 GMT", Decision(Action.RETRY, 1000, Cause.BACKOFF)),  # past
        (1, "soon", Decision(Action.RETRY, 1000, Cause.BACKOFF)),
        (1, "-5", Decision(Action.RETRY, 1000, Cause.BACKOFF)),
        (1, None, Decision(Action.RETRY, 1000, Cause.BACKOFF)),
        (6, "120", Decision(Action.GIVE_UP)),
    ],
)
def test_retry_after_when_honoured(attempts: int, header: str | None, expected: Decision) -> None:
    assert _retry(attempts, 429, HONOR, retry_after=header) == expected


def test_retry_after_may_exceed_max_delay_but_not_the_window() -> None:
    policy = RetryPolicy(max_delay_ms=1000)
    got = decide(policy, 1, status=503, retry_after="30", now_ms=NOW, options=HONOR)
    assert got.delay_ms == 30_000
    narrow = Options(honor_retry_after=True, retry_after_min_ms=5000, retry_after_max_ms=10_000)
    assert _retry(1, 503, narrow, retry_after="30").delay_ms == 10_000
    assert _retry(1, 503, narrow, retry_after="1").delay_ms == 5000  # the window's floor


FLOOR = Options(overload_floor_ms=60_000)


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (429, None, 60_000),
        (503, None, 60_000),
        (504, None, 60_000),
        (None, TIMEOUT, 60_000),
        (None, "Timeout: no connection within 5s", 60_000),
        (500, None, 1000),
        (502, None, 1000),
        (404, None, 1000),
        (None, "Connection failed: Connection refused", 1000),
        (None, "Connection closed by server", 1000),
        (None, None, 1000),
    ],
)
def test_overload_floor(status: int | None, error: str | None, expected: int) -> None:
    assert _retry(1, status, FLOOR, error=error).delay_ms == expected


def test_floor_against_formula_retry_after_and_window() -> None:
    policy = RetryPolicy(initial_delay_ms=60000, max_delay_ms=3_600_000)
    got = decide(policy, 3, status=429, now_ms=NOW, options=FLOOR)  # 240 s > the floor
    assert got == Decision(Action.RETRY, 240_000, Cause.BACKOFF)
    both = Options(honor_retry_after=True, overload_floor_ms=60_000)
    assert _retry(1, 429, both, retry_after="10") == Decision(
        Action.RETRY, 60_000, Cause.OVERLOAD_FLOOR
    )
    assert _retry(1, 429, both, retry_after="90") == Decision(
        Action.RETRY, 90_000, Cause.RETRY_AFTER
    )
    huge = Options(overload_floor_ms=10**9)
    assert _retry(1, 503, huge).delay_ms == 3_600_000


@pytest.mark.parametrize(
    ("draw", "expected"),
    [(0.0, 800), (0.25, 900), (0.5, 1000), (0.75, 1100), (0.999, 1200)],
)
def test_jitter_spreads_the_formula(draw: float, expected: int) -> None:
    got = _retry(1, 500, Options(jitter=0.2), rand=_fixed(draw))
    assert got == Decision(Action.RETRY, expected, Cause.BACKOFF)


def test_jitter_never_exceeds_max_delay() -> None:
    # attempt 8 is at the cap: an upward draw stays at max_delay_ms, a downward one goes lower
    policy, options = RetryPolicy(max_retries=10), Options(jitter=0.2)
    up = decide(policy, 8, status=500, now_ms=NOW, options=options, rand=_fixed(0.9))
    down = decide(policy, 8, status=500, now_ms=NOW, options=options, rand=_fixed(0.0))
    assert (up.delay_ms, down.delay_ms) == (60_000, 48_000)


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 60_000), (0.5, 66_000), (0.999, 71_988)])
def test_jitter_only_delays_a_floor_or_retry_after(draw: float, expected: int) -> None:
    options = Options(jitter=0.2, overload_floor_ms=60_000, honor_retry_after=True)
    assert _retry(1, 429, options, rand=_fixed(draw)).delay_ms == expected
    assert _retry(1, 500, options, retry_after="60", rand=_fixed(draw)).delay_ms == expected
    capped = Options(jitter=0.2, overload_floor_ms=3_600_000)
    assert _retry(1, 429, capped, rand=_fixed(draw)).delay_ms == 3_600_000


def test_seeded_jitter_is_reproducible() -> None:
    options = Options(jitter=0.2)
    runs = []
    for _ in range(2):
        rng = random.Random(7)
        runs.append([_retry(n, 500, options, rand=rng.random).delay_ms for n in range(1, 6)])
    assert runs[0] == runs[1] == [930, 1721, 4241, 6632, 16230]


@settings(max_examples=500, deadline=None)
@given(
    jitter=st.floats(0.0, 0.5),
    draw=st.floats(0.0, 1.0, exclude_max=True),
    attempts=st.integers(1, 10),
    initial=st.integers(100, 60000),
    max_delay=st.integers(1000, 3_600_000),
)
def test_jitter_bounds(
    jitter: float, draw: float, attempts: int, initial: int, max_delay: int
) -> None:
    policy = RetryPolicy(10, initial, 2.0, max_delay)
    base = policy.delay_ms(attempts)
    delay, _ = retry_delay_ms(policy, attempts, options=Options(jitter=jitter), rand=_fixed(draw))
    assert (1 - jitter) * base - 1 <= delay <= min((1 + jitter) * base + 1, max_delay)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"jitter": -0.1},
        {"jitter": 0.6},
        {"retry_after_min_ms": -1},
        {"retry_after_min_ms": 10, "retry_after_max_ms": 5},
        {"overload_floor_ms": -1},
    ],
)
def test_invalid_options_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Options(**kwargs)


def test_subscription_metadata_overrides_the_settings() -> None:
    base = Options(jitter=0.1, honor_retry_after=True)
    assert base.for_subscription({}) is base
    assert base.for_subscription({"metadata": {"other": 1}}) == base
    sub = {
        "metadata": {
            "retry_jitter": "0.2",
            "retry_honor_retry_after": False,
            "retry_overload_floor_ms": 60000,
            "disable_on_410": "true",
        }
    }
    assert base.for_subscription(sub) == Options(
        jitter=0.2, honor_retry_after=False, overload_floor_ms=60_000, disable_on_gone=True
    )
    clamped = {"metadata": {"retry_jitter": 3, "retry_overload_floor_ms": 10**12}}
    assert OFF.for_subscription(clamped) == Options(jitter=0.5, overload_floor_ms=3_600_000)
    ignored = {
        "metadata": {
            "retry_jitter": True,
            "retry_overload_floor_ms": "a minute",
            "disable_on_410": 1,
            "retry_honor_retry_after": None,
        }
    }
    assert base.for_subscription(ignored) == base
    assert OFF.for_subscription({"metadata": {"retry_overload_floor_ms": -5}}) == OFF


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectTimeout(), Transport.CONNECT_TIMEOUT),
        (TimeoutError(), Transport.TIMEOUT),
        (ssl.SSLCertVerificationError(), Transport.TLS),
        (ssl.SSLError(), Transport.TLS),
        (DnsError("nope"), Transport.DNS),
        (HttpError("bad status line"), Transport.PROTOCOL),
        (ClosedEarly(), Transport.RESET),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), Transport.RESET),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), Transport.REFUSED),
        (OSError(errno.EHOSTUNREACH, "No route to host"), Transport.OTHER),
        (RuntimeError(), Transport.OTHER),
    ],
)
def test_transport_kinds_of_the_senders_messages(exc: BaseException, kind: Transport) -> None:
    assert transport_kind(describe_error(exc, 30, 5)) is kind


def test_overload_statuses() -> None:
    assert transport_kind(None) is None and transport_kind("") is None
    assert [s for s in range(100, 600) if is_overload(s, None)] == [429, 503, 504]
    assert is_overload(None, TIMEOUT) and not is_overload(None, "DNS resolution failed")
    assert not is_overload(500, TIMEOUT)  # an HTTP answer is judged by its status
