"""What a written outcome is counted and logged as (only once it is written, so only once)."""

from __future__ import annotations

import time

from cycles_events import logs
from cycles_events.dispatch.outcomes import Context, Outcome, Step
from cycles_events.lifecycle import MergeResult
from cycles_events.metrics import Metrics
from cycles_events.retry import status_family

HELD_LOG_EVERY_S = 60.0


def ids(outcome: Outcome) -> dict[str, str | None]:
    """The ids a log line of this outcome carries."""
    ctx = outcome.context
    if ctx is None:
        return {"delivery_id": outcome.delivery_id}
    return {
        "delivery_id": outcome.delivery_id,
        "subscription_id": ctx.delivery.subscription_id,
        "tenant_id": ctx.tenant,
        "event_id": ctx.delivery.event_id,
    }


class Report:
    """Metrics and logs of written outcomes."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._held_logged: dict[tuple[str, str], float] = {}  # (subscription, reason) -> when

    def written(self, outcome: Outcome, merged: MergeResult | None) -> None:
        """An outcome is written: count it and log it."""
        m = self._metrics
        step, ctx = outcome.step, outcome.context
        if step is Step.SUCCESS and ctx is not None:
            m.succeeded(ctx.tenant, ctx.event_type, status_family(ctx.status))
            if logs.debugging():
                logs.debug("delivery_succeeded", status=ctx.status, **ids(outcome))
        elif step is Step.RETRY and ctx is not None:
            m.retry(ctx.tenant, ctx.event_type)
            logs.info(
                "delivery_retrying",
                reason=ctx.reason,
                error=ctx.message,
                attempts=ctx.attempts,
                next_retry_ms=outcome.retry_at_ms,
                **ids(outcome),
            )
        elif step in (Step.FAILED, Step.UPSTREAM) and ctx is not None:
            m.failure(ctx.tenant, ctx.event_type, ctx.reason or "unknown")
            logs.info(
                "delivery_failed",
                reason=ctx.reason,
                error=ctx.message,
                attempts=ctx.attempts or None,
                last_status=ctx.status,
                **ids(outcome),
            )
            if merged is not None and merged.disabled:
                m.disabled(ctx.tenant, merged.reason)
                logs.warning(
                    "subscription_auto_disabled",
                    previous_status=merged.previous_status,
                    disable_reason=merged.reason,
                    **ids(outcome),
                )
        elif step is Step.STALE and ctx is not None:
            m.stale_delivery(ctx.tenant)
            logs.info("delivery_stale", error=ctx.message, **ids(outcome))
        elif step is Step.BOUNDARY and ctx is not None:
            category = ctx.event.get("category") if ctx.event else None
            m.boundary_skipped(
                ctx.tenant, ctx.event_type, category if isinstance(category, str) else None
            )
            logs.info("delivery_boundary_blocked", event_type=ctx.event_type, **ids(outcome))
        elif step is Step.QUARANTINE:
            m.quarantined.inc()
            m.dead_lettered("corrupt_record")
            logs.warning("delivery_quarantined", reason="corrupt_record", **ids(outcome))
        elif step is Step.DROP:
            m.dropped.labels("missing_record").inc()
            logs.info("delivery_missing", **ids(outcome))
        elif step is Step.SKIP:
            m.dropped.labels("not_pending").inc()
        elif step is Step.HOLD and ctx is not None:
            self._held(outcome, ctx)
        elif step is Step.PARK:
            m.parked.inc()

    def _held(self, outcome: Outcome, ctx: Context) -> None:
        reason = ctx.reason or "held"
        if reason == "missing_signing_secret":
            self._metrics.failure(ctx.tenant, ctx.event_type, reason)
        else:
            self._metrics.security_config_indeterminate.inc()
        key = (ctx.delivery.subscription_id, reason)
        now = time.monotonic()
        if now - self._held_logged.get(key, -HELD_LOG_EVERY_S) >= HELD_LOG_EVERY_S:
            if len(self._held_logged) > 10_000:
                self._held_logged.clear()
            self._held_logged[key] = now
            logs.warning(
                "delivery_held",
                reason=reason,
                error=ctx.message,
                retry_at_ms=outcome.retry_at_ms,
                note="logged once a minute per subscription",
                **ids(outcome),
            )

    def lost(self, outcome: Outcome) -> None:
        """An outcome was not written: its claim had been recovered by another instance."""
        logs.warning("claim_lost", step=outcome.step.value, **ids(outcome))
