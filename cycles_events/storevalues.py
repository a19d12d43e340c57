"""The values that cross the store's boundary: what the scripts take and what they answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cycles_events.metaevents import Task
from cycles_events.models import JsonObject


def to_bytes(value: Any) -> bytes | None:
    """A reply value as bytes, or None for nil and Lua's false."""
    if value is None or value is False:  # Lua's false arrives as None or False
        return None
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def bytes_list(values: Any) -> list[bytes | None]:
    """Each value of a reply as bytes or None."""
    return [to_bytes(v) for v in values]


def text_of(value: Any) -> str:
    """A reply value as text."""
    # surrogateescape: an id that is not UTF-8 still encodes back to the very same bytes
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Related:
    """The records a batch of deliveries needs: events, subscriptions and secrets by id."""

    events: dict[str, bytes | None]
    subscriptions: dict[str, bytes | None]
    secrets: dict[str, bytes | None]
    previous_secrets: dict[str, bytes | None] = field(default_factory=dict)
    parsed: dict[bytes, JsonObject | None] = field(default_factory=dict)


class Claimed(NamedTuple):
    """Ids just claimed, their delivery records (each None when missing; None: not read),
    duplicates dropped, and the records those name (a small claim reads both)."""

    ids: list[str]
    records: list[bytes | None] | None
    duplicates: int
    now_ms: int
    related: Related | None = None


def related_of(events: list[str], subs: list[str], values: list[bytes | None]) -> Related:
    """The events, subscriptions, secrets and previous secrets of one MGET, in that order."""
    n, m = len(events), len(subs)
    return Related(
        events=dict(zip(events, values[:n], strict=True)),
        subscriptions=dict(zip(subs, values[n : n + m], strict=True)),
        secrets=dict(zip(subs, values[n + m : n + 2 * m], strict=True)),
        previous_secrets=dict(zip(subs, values[n + 2 * m :], strict=True)),
    )


def related_reply(events: Any, subs: Any, values: Any) -> Related:
    """The related records CLAIM reads."""
    return related_of([text_of(e) for e in events], [text_of(s) for s in subs], bytes_list(values))


class Write(NamedTuple):
    """One delivery's last step for the OUTCOME script (every field optional but the claim)."""

    delivery_id: str
    token: str
    record: str = ""
    retry_at_ms: int | None = None
    push: str = ""  # 'R': next out of pending, 'L': last
    quarantine: str = ""
    subscription_id: str = ""
    expected: str = ""  # '^': as the previous write of the same subscription leaves it
    new: str = ""  # '=': the same as the previous write of the same subscription
    # a success's change by parts (lifecycle.success_parts): fits any document of those parts
    parts: tuple[str, ...] = ()
    tasks: tuple[Task, ...] = ()


def outcome_args(w: Write) -> list[str | int]:
    """One write's fields for OUTCOME, in the shortest of its forms that holds them."""
    if w.retry_at_ms is None and not (w.push or w.quarantine or w.tasks) and w.subscription_id:
        if w.parts:
            return [w.token, w.record, "p", w.subscription_id, *w.parts]
        if w.expected == "^" and w.new == "=":
            return [w.token, w.record, "c", w.subscription_id]
        return [w.token, w.record, "s", w.subscription_id, w.expected, w.new]
    args: list[str | int] = [
        w.token,
        w.record,
        "g",
        w.retry_at_ms if w.retry_at_ms is not None else "",
        w.push,
        w.quarantine,
        w.subscription_id,
        w.expected,
        w.new,
        len(w.tasks),
    ]
    for t in w.tasks:
        args += [t.task_id, t.json, t.created_ms]
    return args


class Reply(NamedTuple):
    """What OUTCOME did with one write: 'ok', 'lost', 'conflict' (with the current record)
    or 'error' (with why)."""

    status: str
    current: bytes | None = None
    error: str | None = None


class Recovered(NamedTuple):
    """One step of the recovery walk."""

    ids: list[str]
    dated: int
    next_index: int
    length: int


@dataclass(frozen=True, slots=True)
class QueueDepths:
    """Sizes of the dispatch queues."""

    pending: int
    retry: int
    retry_due: int
    processing: int
    failed: int
    oldest_pending_age_s: float | None
    outbox: int = 0


def reply(raw: Any) -> Reply:
    """One item of OUTCOME's answer."""
    if isinstance(raw, bytes | str):
        return Reply(text_of(raw))
    status = text_of(raw[0])
    if status == "conflict":
        return Reply(status, current=to_bytes(raw[1]) if len(raw) > 1 else None)
    return Reply(status, error=text_of(raw[1]) if len(raw) > 1 else None)


def quarantine_entry(delivery_id: str, reason: str, payload: bytes, now_ms: int) -> JsonObject:
    """A dispatch:failed entry: {delivery_id, reason, quarantined_at_ms, payload}."""
    return {
        "delivery_id": delivery_id,
        "reason": reason,
        "quarantined_at_ms": now_ms,
        "payload": payload.decode("utf-8", "replace"),
    }
