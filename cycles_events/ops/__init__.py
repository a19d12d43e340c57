"""Operator operations on the shared Redis: inspection, replay, quarantine, re-enabling."""

from __future__ import annotations

from cycles_events.ops.common import CHUNK, REPLAY_FIELD, OpsError, now_ms
from cycles_events.ops.deliveries import (
    DELIVERY_STATUSES,
    Listing,
    event_summary,
    list_deliveries,
    show_delivery,
    subscription_summary,
)
from cycles_events.ops.drain import (
    BACKLOG_REASON,
    Backlog,
    backlog,
    backlog_since,
    select_backlog,
)
from cycles_events.ops.overview import (
    QUEUE_SCAN_MAX,
    SUBSCRIPTION_STATUSES,
    SubscriptionList,
    list_subscriptions,
    show_subscription,
)
from cycles_events.ops.quarantine import quarantine_list, quarantine_take
from cycles_events.ops.queues import Stats, stats
from cycles_events.ops.replaying import ReplayResult, new_delivery_id, replay, replay_record
from cycles_events.ops.selection import (
    ReplayFilter,
    Selection,
    Source,
    limit_selection,
    select_by_ids,
    select_by_subscription,
)
from cycles_events.ops.subscriptions import (
    MAX_CAS_ROUNDS,
    Enabled,
    enable_subscription,
    preview_enable,
    resumed_event,
)

__all__ = [
    "BACKLOG_REASON",
    "CHUNK",
    "DELIVERY_STATUSES",
    "MAX_CAS_ROUNDS",
    "QUEUE_SCAN_MAX",
    "REPLAY_FIELD",
    "SUBSCRIPTION_STATUSES",
    "Backlog",
    "Enabled",
    "Listing",
    "OpsError",
    "ReplayFilter",
    "ReplayResult",
    "Selection",
    "Source",
    "Stats",
    "SubscriptionList",
    "backlog",
    "backlog_since",
    "enable_subscription",
    "event_summary",
    "limit_selection",
    "list_deliveries",
    "list_subscriptions",
    "new_delivery_id",
    "now_ms",
    "preview_enable",
    "quarantine_list",
    "quarantine_take",
    "replay",
    "replay_record",
    "resumed_event",
    "select_backlog",
    "select_by_ids",
    "select_by_subscription",
    "show_delivery",
    "show_subscription",
    "stats",
    "subscription_summary",
]
