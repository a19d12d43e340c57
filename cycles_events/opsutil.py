"""Pure helpers of the operator commands: durations, times, rates, failure reasons, output."""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from cycles_events.models import format_instant, parse_instant_ms

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_ISO_DURATION = re.compile(
    r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", re.IGNORECASE
)
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?")
_RATE_UNIT_S = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
}

# Failure reasons derived from a delivery's error_message, in the order they are tried. The
# names are the `reason` tags of cycles_webhook_delivery_failed_total.
REASON_RULES: tuple[tuple[str, str], ...] = (
    ("HTTP 4", "http_4xx"),
    ("HTTP 5", "http_5xx"),
    ("URL blocked", "ssrf_blocked"),
    ("Delivery expired", "stale"),
    ("Event not found", "event_not_found"),
    ("Event record is not valid JSON", "invalid_record"),
    ("Subscription record is not valid JSON", "invalid_record"),
    ("Subscription not found", "subscription_not_found"),
    ("Subscription not active", "subscription_inactive"),
    ("Signing secret unusable", "secret_error"),
)
REASONS: tuple[str, ...] = (
    *dict.fromkeys(r for _, r in REASON_RULES),
    "transport_error",
    "none",
)
REASON_HELP = (
    "failure reason derived from error_message: 'HTTP 4xx' -> http_4xx, 'HTTP 5xx' -> "
    "http_5xx, 'URL blocked...' -> ssrf_blocked, 'Delivery expired...' -> stale, "
    "'Event not found...' -> event_not_found, '... is not valid JSON' -> invalid_record, "
    "'Subscription not found' -> subscription_not_found, 'Subscription not active...' -> "
    "subscription_inactive, 'Signing secret unusable...' -> secret_error, no error_message -> "
    "none, anything else (timeouts, refused connections, TLS, 3xx) -> transport_error"
)
MASK = "***"


def parse_duration_ms(value: str) -> int:
    """Parse '90s', '30m', '2h', '1h30m', '7d', '500ms' or ISO 'PT2H'/'P1D' into milliseconds."""
    raw = value.strip().lower()
    if not raw:
        raise ValueError("empty duration")
    if raw.startswith("p"):
        m = _ISO_DURATION.fullmatch(raw)
        if not m or raw in ("p", "pt") or raw.endswith("t"):
            raise ValueError(f"not a duration: {value!r}")
        days, hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
        return int(((days * 24 + hours) * 60 + minutes) * 60_000 + seconds * 1000)
    pos = 0
    total = 0.0
    for part in _DURATION_PART.finditer(raw):
        if part.start() != pos:
            break
        total += float(part.group(1)) * _UNIT_MS[part.group(2)]
        pos = part.end()
    if pos != len(raw) or pos == 0:
        raise ValueError(f"not a duration (use e.g. 30m, 2h, 1h30m, 7d): {value!r}")
    return int(total)


def parse_time_ms(value: str, now_ms: int) -> int:
    """A point in time: 'now', a duration ago ('2h'), an ISO-8601 instant or epoch milliseconds."""
    raw = value.strip()
    if raw.lower() == "now":
        return now_ms
    if raw.isdigit() and len(raw) >= 12:
        return int(raw)
    if re.match(r"\d{4}-\d{2}-\d{2}", raw):
        if len(raw) == 10:
            raw += "T00:00:00Z"
        ms = parse_instant_ms(raw)
        if ms is None:
            raise ValueError(f"not an ISO-8601 time: {value!r}")
        return ms
    try:
        return now_ms - parse_duration_ms(raw)
    except ValueError:
        raise ValueError(
            f"not a time (use a duration ago like 2h, an ISO-8601 instant or 'now'): {value!r}"
        ) from None


def parse_rate(value: str) -> float:
    """Parse '50/s', '50', '600/m' or '1000/h' into operations per second (> 0)."""
    m = _RATE.fullmatch(value.strip().lower())
    if not m:
        raise ValueError(f"not a rate (use e.g. 50/s or 600/m): {value!r}")
    per_s = float(m.group(1)) / _RATE_UNIT_S[m.group(2) or "s"]
    if not math.isfinite(per_s) or per_s <= 0:
        raise ValueError(f"rate must be positive: {value!r}")
    return per_s


def failure_reason(error_message: Any) -> str:
    """The failure reason of a delivery, derived from its error_message (see REASON_HELP)."""
    if not isinstance(error_message, str) or not error_message.strip():
        return "none"
    msg = error_message.strip()
    for prefix, reason in REASON_RULES:
        if msg.startswith(prefix):
            if prefix.startswith("HTTP ") and not re.match(r"HTTP \d{3}\b", msg):
                continue
            return reason
    return "transport_error"


def delivery_reason(delivery: Mapping[str, Any]) -> str | None:
    """The failure reason of a FAILED or RETRYING delivery; None for the other statuses."""
    if delivery.get("status") in ("FAILED", "RETRYING"):
        return failure_reason(delivery.get("error_message"))
    return None


def mask_headers(headers: Any) -> dict[str, str]:
    """Custom headers with every value masked (names are kept)."""
    if not isinstance(headers, Mapping):
        return {}
    return {str(name): MASK for name in headers}


def format_age(seconds: float | None) -> str:
    """A compact age such as 45s, 3m04s, 2h05m or 3d04h."""
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def format_ms(ms: int | None) -> str:
    """An epoch-ms time as an ISO instant, or '-'."""
    return "-" if ms is None else format_instant(ms)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


ELLIPSIS = "\u2026"
MIN_CUT_WIDTH = 8


def ellipsize(value: str, width: int) -> str:
    """`value` on one line, cut to `width` characters with an ellipsis when longer."""
    flat = " ".join(value.split())
    if len(flat) <= width:
        return flat
    return flat[: max(0, width - 1)] + ELLIPSIS


def terminal_width(stream: TextIO) -> int | None:
    """The width of the terminal `stream` writes to, or None when it is not a terminal."""
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        return None
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        width = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is an OSError
        width = 0
    # a terminal that reports no size (a fresh pty, some CI runners) is taken as 80 wide
    return width or shutil.get_terminal_size().columns or 80


def _fit(widths: list[int], flex: Sequence[int], width: int) -> list[int]:
    """Column widths narrowed, widest flexible column first, until the row fits `width`."""
    fitted = list(widths)
    excess = sum(fitted) + 2 * (len(fitted) - 1) - width
    while excess > 0:
        cuttable = [i for i in flex if fitted[i] > MIN_CUT_WIDTH]
        if not cuttable:
            break
        widest = max(cuttable, key=lambda i: fitted[i])
        fitted[widest] -= 1
        excess -= 1
    return fitted


def table(
    rows: Sequence[Sequence[Any]],
    header: Sequence[str],
    *,
    width: int | None = None,
    flex: Sequence[str] = (),
) -> str:
    """Left-aligned text columns; with `width`, the `flex` columns are cut to fit it."""
    cells = [[str(c) for c in header]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    if width is not None:
        fitted = _fit(widths, [list(header).index(n) for n in flex if n in header], width)
        if fitted != widths:
            cells = [[ellipsize(c, w) for c, w in zip(r, fitted, strict=True)] for r in cells]
            widths = fitted
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def format_rate(per_s: float) -> str:
    """A rate as 50/s, 2.5/s or 0.5/s."""
    return f"{per_s:.0f}/s" if per_s >= 10 else f"{per_s:.1f}".removesuffix(".0") + "/s"


@dataclass(frozen=True, slots=True)
class Pace:
    """A write schedule: `rate` per second, reached linearly from `start` over `ramp_s` seconds."""

    rate: float
    ramp_s: float = 0.0
    start: float | None = None

    @classmethod
    def ramped(cls, rate: float, ramp_s: float) -> Pace:
        """`rate` after a ramp from max(1/s, rate/10), never above `rate`, over `ramp_s`."""
        return cls(rate, max(0.0, ramp_s), min(rate, max(1.0, rate / 10)))

    @property
    def _start(self) -> float:
        return self.rate if self.start is None or self.ramp_s <= 0 else self.start

    def rate_at(self, t: float) -> float:
        """The planned rate `t` seconds after the start."""
        if t >= self.ramp_s:
            return self.rate
        return self._start + (self.rate - self._start) * max(0.0, t) / self.ramp_s

    def ramping(self, t: float) -> bool:
        """Whether the rate is still rising `t` seconds after the start."""
        return t < self.ramp_s and self._start < self.rate

    def time_for(self, n: float) -> float:
        """Seconds after the start by which `n` writes are due (the inverse of the ramp)."""
        r0, ramp = self._start, self.ramp_s
        if r0 >= self.rate:
            return max(0.0, n) / self.rate
        in_ramp = (r0 + self.rate) / 2 * ramp
        if n >= in_ramp:
            return ramp + (n - in_ramp) / self.rate
        slope = (self.rate - r0) / ramp
        return (math.sqrt(r0 * r0 + 2 * slope * max(0.0, n)) - r0) / slope

    def describe(self) -> str:
        """The schedule in words: 50/s, or 50/s ramping from 5/s over 2m00s."""
        if self._start >= self.rate:
            return format_rate(self.rate)
        return (
            f"{format_rate(self.rate)}, ramping from {format_rate(self._start)} over "
            f"{format_age(self.ramp_s)}"
        )


class Progress:
    """A one-line progress bar with rate and ETA on a terminal; silent when it is not a TTY."""

    WIDTH = 30

    def __init__(
        self,
        total: int,
        stream: TextIO,
        label: str = "",
        *,
        enabled: bool | None = None,
        pace: Pace | None = None,
    ) -> None:
        self.total = max(0, total)
        self.pace = pace
        self.stream = stream
        self.label = label
        if enabled is None:
            enabled = terminal_width(stream) is not None
        self.enabled = enabled
        self.done = 0
        self.started = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def render(self, done: int, elapsed: float, columns: int | None = None) -> str:
        """The bar's text for `done` of total after `elapsed` seconds, within `columns`."""
        frac = 1.0 if self.total == 0 else min(1.0, done / self.total)
        if self.pace is not None:
            numbers = f"{done}/{self.total} {frac * 100:3.0f}% {self._paced(done, elapsed)}"
        else:
            rate = done / elapsed if elapsed > 0 else 0.0
            if done >= self.total:
                timing = f"in {format_age(elapsed)}"
            elif rate > 0:
                timing = f"eta {format_age((self.total - done) / rate)}"
            else:
                timing = "eta -"
            numbers = f"{done}/{self.total} {frac * 100:3.0f}% {rate:.0f}/s {timing}"
        bar_width = self.WIDTH
        if columns is not None:  # the bar gives way first: the numbers are what is read
            room = columns - 1 - len(numbers) - (len(self.label) + 1 if self.label else 0)
            bar_width = min(self.WIDTH, room - 3)
        bar = ""
        if bar_width >= 5:
            filled = int(frac * bar_width)
            bar = f"[{'#' * filled}{'.' * (bar_width - filled)}]"
        return " ".join(part for part in (self.label, bar, numbers) if part)

    def _paced(self, done: int, elapsed: float) -> str:
        """The current rate of the schedule and an ETA that follows the ramp."""
        assert self.pace is not None
        if done >= self.total:
            return f"{format_rate(done / elapsed if elapsed > 0 else 0.0)} in {format_age(elapsed)}"
        end = self.pace.time_for(self.total)
        # behind schedule, the rest takes at least what the schedule gives it from `done` on
        eta = max(end - elapsed, end - self.pace.time_for(done), 0.0)
        ramp = f" ramping to {format_rate(self.pace.rate)}" if self.pace.ramping(elapsed) else ""
        return f"{format_rate(self.pace.rate_at(elapsed))}{ramp} eta {format_age(math.ceil(eta))}"

    def update(self, done: int, *, force: bool = False) -> None:
        """Redraw (at most 10 times a second unless forced)."""
        self.done = done
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        columns = terminal_width(self.stream)
        self.stream.write("\r" + self.render(done, now - self.started, columns) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self.update(self.done, force=True)
            if self._drawn:
                self.stream.write("\n")
                self.stream.flush()
