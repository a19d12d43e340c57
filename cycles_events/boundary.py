"""The webhook ownership boundary of contract section 3, step 6 (pure)."""

from __future__ import annotations

from typing import Any

from cycles_events.models import SYSTEM_TENANT, JsonObject

MESSAGE = (
    "Delivery blocked by webhook ownership boundary (#209): "
    "concrete-tenant subscription cannot receive admin-only event"
)
TENANT_TYPE_PREFIXES = ("budget.", "reservation.", "tenant.")
TENANT_CATEGORIES = frozenset({"budget", "reservation", "tenant"})


def system_owned(subscription: JsonObject) -> bool:
    """A subscription whose tenant_id is absent, null or exactly `__system__`."""
    tenant = subscription.get("tenant_id")
    return tenant is None or tenant == SYSTEM_TENANT


def tenant_may_receive(event: JsonObject) -> bool:
    """Whether a concrete tenant's subscription may receive this event."""
    event_type: Any = event.get("event_type")
    category: Any = event.get("category")
    if event_type is None and category is None:
        return False
    if event_type is not None and not (
        isinstance(event_type, str) and event_type.startswith(TENANT_TYPE_PREFIXES)
    ):
        return False
    return category is None or (isinstance(category, str) and category in TENANT_CATEGORIES)


def blocked(subscription: JsonObject, event: JsonObject) -> bool:
    """Whether the boundary stops this event from reaching this subscription."""
    return not system_owned(subscription) and not tenant_may_receive(event)
