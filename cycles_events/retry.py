"""Retry policy and the one classification of an attempt's outcome."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

from cycles_events.models import JsonObject


class Kind(enum.Enum):
    """What an outcome means for the delivery."""

    SUCCESS = "success"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


class Outcome(NamedTuple):
    """A classified outcome: its kind, the metric reason and the record's error message."""

    kind: Kind
    reason: str
    message: str | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A subscription's retry_policy with the contract's defaults and ranges."""

    max_retries: int = 5
    initial_delay_ms: int = 1000
    backoff_multiplier: float = 2.0
    max_delay_ms: int = 60000

    @classmethod
    def from_subscription(cls, sub: JsonObject) -> RetryPolicy:
        """Read retry_policy, clamping each value into its documented range."""
        raw = sub.get("retry_policy")
        raw = raw if isinstance(raw, dict) else {}
        return cls(
            max_retries=int(_clamp(raw.get("max_retries"), 5, 0, 10)),
            initial_delay_ms=int(_clamp(raw.get("initial_delay_ms"), 1000, 100, 60000)),
            backoff_multiplier=float(_clamp(raw.get("backoff_multiplier"), 2.0, 1.0, 10.0)),
            max_delay_ms=int(_clamp(raw.get("max_delay_ms"), 60000, 1000, 3_600_000)),
        )

    def delay_ms(self, attempts: int) -> int:
        """min(initial * multiplier^(attempts-1), max): the contract's formula."""
        exponent = max(0, attempts - 1)
        delay = float(self.max_delay_ms)
        if exponent < 64:
            delay = min(self.initial_delay_ms * self.backoff_multiplier**exponent, delay)
        return int(delay)


def _clamp(value: Any, default: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return default
    return min(max(float(value), low), high)


def status_family(status: int | None) -> str:
    """2xx/3xx/4xx/5xx, or UNKNOWN."""
    if status is None or not 100 <= status <= 599:
        return "UNKNOWN"
    return f"{status // 100}xx"


_SUCCESS = Outcome(Kind.SUCCESS, "success")


def classify(status: int | None, error: str | None) -> Outcome:
    """Classify one HTTP attempt: any 2xx succeeds; every other answer or error is retryable."""
    if status is not None and 200 <= status <= 299:
        return _SUCCESS
    if status is not None and 400 <= status <= 499:
        return Outcome(Kind.RETRYABLE, "http_4xx", f"HTTP {status}")
    if status is not None and 500 <= status <= 599:
        return Outcome(Kind.RETRYABLE, "http_5xx", f"HTTP {status}")
    if status is not None:
        return Outcome(Kind.RETRYABLE, "transport_error", error or f"Unexpected HTTP {status}")
    return Outcome(Kind.RETRYABLE, "transport_error", error or "transport error")


def parse_retry_after_ms(value: str | None, now_ms: int) -> int | None:
    """A Retry-After header (seconds or HTTP date) as a delay in ms, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value) * 1000
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0, int(when.timestamp() * 1000) - now_ms)
