"""What flows through the pipeline: prepared jobs, and the outcome each claimed delivery ends in."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from cycles_events.models import Delivery, JsonObject


class Step(enum.Enum):
    """The last step of a claimed delivery: what its one fenced write does."""

    SUCCESS = "success"  # 2xx: SUCCESS, subscription counters reset
    RETRY = "retry"  # failed attempt: RETRYING on dispatch:retry
    FAILED = "failed"  # last attempt failed: FAILED, failure counted, meta-events staged
    UPSTREAM = "upstream"  # FAILED unsent (event, subscription, URL policy); not counted
    STALE = "stale"  # FAILED unsent: older than MAX_DELIVERY_AGE_MS
    BOUNDARY = "boundary"  # FAILED unsent: the ownership boundary
    QUARANTINE = "quarantine"  # corrupt record: to dispatch:failed
    DROP = "drop"  # no record: the id is dropped
    SKIP = "skip"  # not PENDING/RETRYING: a duplicate id, harmless
    DEFER = "defer"  # RETRYING, not due yet: back on dispatch:retry at its time
    HOLD = "hold"  # no usable secret, or an indeterminate URL policy: kept for later, unsent
    PARK = "park"  # its subscription is saturated and stuck: back in a moment
    RELEASE = "release"  # never started (a drain): back to the front of pending
    ERROR = "error"  # an unexpected error: tried again later


# Outcomes that end a delivery FAILED and count (or not) against its subscription.
TERMINAL = frozenset({Step.FAILED, Step.UPSTREAM, Step.STALE, Step.BOUNDARY})


class Context(NamedTuple):
    """What the write, its meta-events, metrics and logs need to know of a delivery."""

    delivery: Delivery
    tenant: str | None
    event_type: str
    event: JsonObject | None = None
    subscription: JsonObject | None = None
    reason: str | None = None
    message: str | None = None
    attempts: int = 0
    status: int | None = None
    disable_reason: str | None = None  # disable the subscription at once (410 Gone, opted in)


class Outcome(NamedTuple):
    """One claimed delivery's last step, written by one fenced script."""

    step: Step
    delivery_id: str
    token: str
    record: JsonObject | None = None
    retry_at_ms: int | None = None
    push: str = ""
    quarantine: JsonObject | None = None
    context: Context | None = None


@dataclass(slots=True)
class Job:
    """A delivery ready to send: loaded, screened, signed-for and through the URL policy."""

    delivery: Delivery
    token: str
    body: bytes
    event: JsonObject
    subscription: JsonObject
    secret: str
    url: str
    tenant: str | None
    standard_secrets: tuple[str, ...] = ()  # the secrets of Standard Webhooks, when opted in
    adaptive: bool = False  # its subscription's bound adapts to how the receiver copes
    since: float = 0.0  # when it started waiting at the gate (monotonic)

    @property
    def subscription_id(self) -> str:
        """Its subscription."""
        return self.delivery.subscription_id

    def context(
        self,
        *,
        reason: str | None = None,
        message: str | None = None,
        attempts: int = 0,
        status: int | None = None,
        disable_reason: str | None = None,
    ) -> Context:
        """The context of its outcome."""
        d = self.delivery
        event_type = d.event_type or str(self.event.get("event_type") or "")
        return Context(
            d,
            self.tenant,
            event_type,
            self.event,
            self.subscription,
            reason,
            message,
            attempts,
            status,
            disable_reason,
        )
