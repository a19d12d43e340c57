"""Overload-aware retry decisions (pure): jitter, Retry-After, an overload floor, 410 Gone.

With every option off (`OFF`, the default) a failed attempt is retried after exactly
`RetryPolicy.delay_ms(attempts)`, the contract's formula, and a receiver's `Retry-After` is not
looked at: contract section 9 makes honouring it opt-in. Each option, when on:

- `jitter` j (a fraction, 0 to 0.5): the formula's delay is multiplied by a factor drawn
  uniformly from [1 - j, 1 + j), never above the subscription's `max_delay_ms`, so that
  deliveries failed together do not all come back together. A delay set by `Retry-After` or the
  floor is only ever moved later, by up to j of it, since the receiver asked for "not before".
- `honor_retry_after`: a `Retry-After` (seconds or an HTTP date) on any failed answer raises the
  delay to what it asks, clamped to [`retry_after_min_ms`, `retry_after_max_ms`] = [1 s, 1 h] by
  default: 1 s because the header counts in seconds and "0" must not mean a tight loop, 1 h
  because it is the largest `max_delay_ms` the contract allows, so a receiver cannot park a
  delivery longer than its own policy could. It may exceed the subscription's `max_delay_ms`: a
  receiver that says when it can take the request again is believed, up to the window.
- `overload_floor_ms` (0 = off; 60000 is Svix's value and our suggestion): after 429, 503, 504
  or a timeout (connect or response), wait at least this long (at most `retry_after_max_ms`):
  a receiver that is shedding load gets a minute, not the formula's first seconds.
- `disable_on_gone`: a `410 Gone` ends the delivery FAILED and disables the subscription at once
  (the Standard Webhooks spec's meaning of 410), with the same `webhook.disabled` event and
  `disable_reason` `GONE_REASON`; without it a 410 is retried like any other 4xx.

Settings (the deployment's default) and subscription metadata keys (which win, see
`cycles_events.optin`): `DISPATCH_RETRY_JITTER` / `retry_jitter` (0),
`DISPATCH_RETRY_HONOR_RETRY_AFTER` / `retry_honor_retry_after` (false),
`DISPATCH_RETRY_OVERLOAD_FLOOR_MS` / `retry_overload_floor_ms` (0), `DISPATCH_DISABLE_ON_410` /
`disable_on_410` (false); the window is the operator's only: `DISPATCH_RETRY_AFTER_MIN_MS` (1000)
and `DISPATCH_RETRY_AFTER_MAX_MS` (3600000).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from cycles_events.optin import flag, metadata_of, number
from cycles_events.retry import RetryPolicy, parse_retry_after_ms

GONE_REASON = "endpoint_gone_http_410"
MAX_JITTER = 0.5
DEFAULT_RETRY_AFTER_MIN_MS = 1000
DEFAULT_RETRY_AFTER_MAX_MS = 3_600_000
SUGGESTED_OVERLOAD_FLOOR_MS = 60_000

META_JITTER = "retry_jitter"
META_HONOR_RETRY_AFTER = "retry_honor_retry_after"
META_OVERLOAD_FLOOR_MS = "retry_overload_floor_ms"
META_DISABLE_ON_410 = "disable_on_410"

OVERLOAD_STATUSES = frozenset({429, 503, 504})


class Transport(enum.Enum):
    """What kind of transport error an attempt ended with."""

    CONNECT_TIMEOUT = "connect_timeout"
    TIMEOUT = "timeout"
    RESET = "reset"
    REFUSED = "refused"
    DNS = "dns"
    TLS = "tls"
    PROTOCOL = "protocol"
    OTHER = "other"


def transport_kind(error: str | None) -> Transport | None:
    """The kind of a transport error, read from the message `sender.describe_error` writes."""
    if not error:
        return None
    if error.startswith("Timeout: no connection"):
        return Transport.CONNECT_TIMEOUT
    if error.startswith("Timeout"):
        return Transport.TIMEOUT
    if error.startswith("TLS "):
        return Transport.TLS
    if error.startswith("DNS "):
        return Transport.DNS
    if error.startswith("Invalid HTTP response"):
        return Transport.PROTOCOL
    lowered = error.lower()
    if "closed by server" in lowered or "reset" in lowered or "broken pipe" in lowered:
        return Transport.RESET
    if "refused" in lowered:
        return Transport.REFUSED
    return Transport.OTHER


def is_overload(status: int | None, error: str | None) -> bool:
    """429, 503, 504, or a timeout: the receiver is saying it has too much to do."""
    if status is not None:
        return status in OVERLOAD_STATUSES
    return transport_kind(error) in (Transport.TIMEOUT, Transport.CONNECT_TIMEOUT)


@dataclass(frozen=True, slots=True)
class Options:
    """The back-off options in force for one subscription; the defaults are all off."""

    jitter: float = 0.0
    honor_retry_after: bool = False
    retry_after_min_ms: int = DEFAULT_RETRY_AFTER_MIN_MS
    retry_after_max_ms: int = DEFAULT_RETRY_AFTER_MAX_MS
    overload_floor_ms: int = 0
    disable_on_gone: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.jitter <= MAX_JITTER:
            raise ValueError(f"jitter must be within [0, {MAX_JITTER}]")
        if not 0 <= self.retry_after_min_ms <= self.retry_after_max_ms:
            raise ValueError("need 0 <= retry_after_min_ms <= retry_after_max_ms")
        if self.overload_floor_ms < 0:
            raise ValueError("overload_floor_ms must not be negative")

    def for_subscription(self, subscription: Mapping[str, Any]) -> Options:
        """These options with the subscription's metadata keys applied over them."""
        meta = metadata_of(subscription)
        if not meta:
            return self
        return replace(
            self,
            jitter=number(meta, META_JITTER, self.jitter, 0.0, MAX_JITTER),
            honor_retry_after=flag(meta, META_HONOR_RETRY_AFTER, self.honor_retry_after),
            overload_floor_ms=int(
                number(
                    meta,
                    META_OVERLOAD_FLOOR_MS,
                    self.overload_floor_ms,
                    0,
                    self.retry_after_max_ms,
                )
            ),
            disable_on_gone=flag(meta, META_DISABLE_ON_410, self.disable_on_gone),
        )


OFF = Options()


class Action(enum.Enum):
    """What to do with a delivery after a failed attempt."""

    RETRY = "retry"
    GIVE_UP = "give_up"  # attempts > max_retries: FAILED, counted against the subscription
    DISABLE = "disable"  # 410 Gone with disable_on_gone: FAILED and the subscription DISABLED


class Cause(enum.Enum):
    """What set a retry's delay."""

    BACKOFF = "backoff"
    RETRY_AFTER = "retry_after"
    OVERLOAD_FLOOR = "overload_floor"


class Decision(NamedTuple):
    """The decision for a failed attempt: the action, a retry's delay and what set it."""

    action: Action
    delay_ms: int | None = None
    cause: Cause | None = None
    disable_reason: str | None = None


def decide(
    policy: RetryPolicy,
    attempts: int,
    *,
    status: int | None,
    error: str | None = None,
    retry_after: str | None = None,
    now_ms: int,
    options: Options = OFF,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """A failed attempt's fate; `attempts` counts this attempt, as the delivery record will."""
    if status is not None and 200 <= status <= 299:
        raise ValueError("a 2xx is a success, not a failed attempt")
    if status == 410 and options.disable_on_gone:
        return Decision(Action.DISABLE, disable_reason=GONE_REASON)
    if attempts > policy.max_retries:
        return Decision(Action.GIVE_UP)
    retry_after_ms = (
        parse_retry_after_ms(retry_after, now_ms) if options.honor_retry_after else None
    )
    delay, cause = retry_delay_ms(
        policy,
        attempts,
        overload=is_overload(status, error),
        retry_after_ms=retry_after_ms,
        options=options,
        rand=rand,
    )
    return Decision(Action.RETRY, delay, cause)


def retry_delay_ms(
    policy: RetryPolicy,
    attempts: int,
    *,
    overload: bool = False,
    retry_after_ms: int | None = None,
    options: Options = OFF,
    rand: Callable[[], float] = random.random,
) -> tuple[int, Cause]:
    """The delay before the next attempt and its cause (`retry_after_ms` is used as given)."""
    delay = policy.delay_ms(attempts)
    jitter = options.jitter
    # one draw, and only when jitter is on, so that a seeded source stays in step
    draw = rand() if jitter > 0 else 0.0
    if jitter > 0:
        delay = min(round(delay * (1.0 + jitter * (2.0 * draw - 1.0))), policy.max_delay_ms)
    low, high = options.retry_after_min_ms, options.retry_after_max_ms
    lower, cause = 0, Cause.BACKOFF
    if retry_after_ms is not None:
        lower, cause = min(max(retry_after_ms, low), high), Cause.RETRY_AFTER
    if overload and options.overload_floor_ms > 0:
        floor = min(options.overload_floor_ms, high)
        if floor > lower:
            lower, cause = floor, Cause.OVERLOAD_FLOOR
    if lower <= delay:
        return delay, Cause.BACKOFF
    if jitter > 0:  # later only: the receiver asked for "not before"
        lower = min(round(lower * (1.0 + jitter * draw)), high)
    return lower, cause
